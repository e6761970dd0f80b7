"""``kubetune run FILE.yaml``: run a FineTuneJob on this machine with the real trainer.

The same manifest that runs on a cluster runs here, the same way a pod runs
it: one torchrun per node group, started as a subprocess
(``python -m kubetune_trainer.torchrun``, torchrun that keeps the trainer's
exit codes), so this process never imports torch.

- ``distributed.nodes`` become local torchrun node groups joined by a static
  rendezvous on 127.0.0.1 (``--nnodes/--node-rank/--master-addr/--master-port``);
  each group gets its own scratch folder, as separate machines would.
- GPUs if ``gpusPerNode`` > 0 and the machine has enough of them (each group
  gets its own ``CUDA_VISIBLE_DEVICES``), else CPU processes
  (``processesPerNode``, default 1) sharing the cores (``OMP_NUM_THREADS``).
- ``spec.env`` as in a pod: literal values set, ``fieldRef`` from local
  stand-ins; a ``secretKeyRef``/``configMapKeyRef`` variable is the one this
  shell exports under that name (no cluster to read a Secret from; refused,
  naming the field, when it is missing and not optional). No value is printed.
- Output wherever ``output.uri`` points: a local folder, or any S3 endpoint
  (credentials from the usual ``AWS_*`` variables of this shell).
- A live progress line (step/total, loss, eval loss, tokens/s, ETA) read from
  the trainer's ``KUBETUNE_PROGRESS_FILE`` (JSON lines), plus a line per
  checkpoint and phase.
- Ctrl-C sends SIGTERM to the trainer processes: they commit a checkpoint and
  exit 75; running the same command again resumes from it. A second Ctrl-C
  kills them.
- A summary at the end: eval loss before and after, where the artifacts are,
  wall time.

The run folder (``.kubetune/runs/<name>/`` by default) keeps the resolved
manifest, the progress file and one log per node group.

Modules: ``manifest`` (file, ``--set`` overrides, validation), ``planning``
(pure: node groups, devices, commands, environments), ``environment``
(spec.env and spec.envFrom on one machine), ``launcher`` (the
torchrun subprocesses), ``display`` (progress line and summary), ``supervise``
(the loop and ``run`` as named steps).
"""
from kubetune_operator.localrun.display import Display, ProgressTail, RunState, progress_line
from kubetune_operator.localrun.launcher import Launcher
from kubetune_operator.localrun.manifest import RunError, load_manifest, parse_overrides, validate_manifest
from kubetune_operator.localrun.planning import LocalPlan, NodeGroup, node_env, plan_run, torchrun_command, visible_gpus
from kubetune_operator.localrun.supervise import main, outcome, run

__all__ = [
    "Display", "Launcher", "LocalPlan", "NodeGroup", "ProgressTail", "RunError", "RunState",
    "load_manifest", "main", "node_env", "outcome", "parse_overrides", "plan_run", "progress_line",
    "run", "torchrun_command", "validate_manifest", "visible_gpus",
]
