"""torchrun that keeps the trainer's exit codes.

torchrun reports any worker failure as exit code 1, which would hide the
trainer's PERMANENT (3) and PREEMPTED (75) codes from the operator. This is
torchrun with the same arguments; when workers fail, it exits with PERMANENT
if any worker exited 3, else PREEMPTED if any exited 75, else torchrun's 1:

    python -m kubetune_trainer.torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \\
        --master-addr HOST --master-port 29500 -m kubetune_trainer --config job.yaml
"""
from __future__ import annotations

import sys

from kubetune_api.contract import PERMANENT, PREEMPTED


def exit_code_for(worker_exit_codes: list[int]) -> int:
    if PERMANENT in worker_exit_codes:
        return PERMANENT
    if PREEMPTED in worker_exit_codes:
        return PREEMPTED
    return 1


def main(argv: list[str] | None = None) -> int:
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(argv)
    try:
        run(args)
    except SignalException as e:
        # The pod was asked to stop (kubelet SIGTERM to the container's main process).
        # torchrun forwarded it to the workers, which checkpoint, commit and exit 75
        # within --shutdown-timeout / TORCH_ELASTIC_SHUTDOWN_TIMEOUT (set it to the
        # pod's grace period; torch's default is 30 s); their codes are not returned here.
        print(f"kubetune: launcher stopped by signal {e.sigval}", file=sys.stderr, flush=True)
        return PREEMPTED if e.sigval == signal.SIGTERM else 1
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        print(f"kubetune: workers failed with exit codes {sorted(set(codes))}", file=sys.stderr, flush=True)
        return exit_code_for(codes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
