"""The trainer's recipe: one short ``main`` calling the stages of docs/trainer.md in order.

    fetch → prepare data → DeepSpeed config → model + method → train (with eval)
    → final eval → export → summary → publish

Run under torchrun, one process per GPU (or CPU process):

    python -m kubetune_trainer.torchrun --nproc-per-node 2 -m kubetune_trainer --config job.yaml

(``kubetune_trainer.torchrun`` is torchrun that keeps the workers' exit code 3/75;
plain ``torchrun`` works too but reports every failure as 1.)

Checkpoint plug-in points (the CheckpointManager of ``checkpoint.py``):
  (1) ``ckpt.prepare_resume()`` → a local checkpoint dir (or None) for ``trainer.train``;
  (2) ``ckpt.callbacks()`` → TrainerCallbacks;
  (3) ``ckpt.training_args()`` → save settings for TrainingArguments (output_dir, save_strategy, ...);
  (4) ``ckpt.publish_final(local_final_dir)`` → {'adapterUri', 'mergedUri', 'summaryUri'}.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from kubetune_api import contract
from kubetune_api.contract import PermanentError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import TrainOutput

    from kubetune_api.memory import Plan as MemoryPlan
    from kubetune_api.spec import FineTuneJob, FineTuneJobSpec

    from .checkpoint import CheckpointManager
    from .data import PreparedData
    from .dsconfig import BatchPlan
    from .model import ModelInfo
    from .progress import Reporters

log = logging.getLogger("kubetune")


# ------------------------------------------------------------------ this process
@dataclass
class WorkerContext:
    """This process's place in the gang (from torchrun's environment), its scratch folder, and whether it has CUDA."""

    rank: int
    local_rank: int
    world_size: int
    nodes: int
    scratch: str
    cuda: bool

    @classmethod
    def from_env(cls) -> WorkerContext:
        import torch

        from .checkpoint import Topology

        topo = Topology.from_env()  # one reading of torchrun's environment
        return cls(
            rank=topo.rank,
            local_rank=topo.local_rank,
            world_size=topo.world_size,
            nodes=topo.nodes,
            scratch=os.environ.get("KUBETUNE_SCRATCH", "/tmp/kubetune-scratch"),
            cuda=torch.cuda.is_available(),
        )


def single_process_rendezvous() -> None:
    """Without torchrun, a single process is its own rendezvous (DeepSpeed needs a process group)."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def join_process_group(args: TrainingArguments) -> None:
    """Create the process group (through the Trainer's accelerate state) and DeepSpeed's view of it."""
    import deepspeed

    args.device  # noqa: B018 -- TrainingArguments sets up torch.distributed on first access
    deepspeed.init_distributed()  # wraps the existing group; without it DeepSpeed sees world size 1


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    import transformers

    transformers.logging.set_verbosity_warning() if rank == 0 else transformers.logging.set_verbosity_error()


def load_config(path: str) -> FineTuneJob:
    import yaml
    from pydantic import ValidationError

    from kubetune_api.spec import load_job_file

    if not os.path.exists(path):
        raise PermanentError(f"config file {path} not found", "InvalidSpec")
    try:
        return load_job_file(path)
    except ValidationError as e:
        first, *rest = contract.validation_messages(e)
        more = f" (and {len(rest)} more)" if rest else ""
        raise PermanentError(f"{path}: {first}{more}", "InvalidSpec") from None
    except (ValueError, yaml.YAMLError) as e:
        raise PermanentError(f"{path}: {e}", "InvalidSpec") from None


# ------------------------------------------------------------------ stages
def fetch_inputs(spec: FineTuneJobSpec, rt: WorkerContext) -> tuple[str, str, str | None]:
    """Local paths of the model folder and the train/eval data (downloaded once per node by fetch)."""
    from . import fetch

    model_dir = str(fetch.resolve_model(spec, rt.scratch))
    train = str(fetch.resolve_dataset(spec.dataset.train, spec, rt.scratch))
    eval_ = str(fetch.resolve_dataset(spec.dataset.eval, spec, rt.scratch)) if spec.dataset.eval else None
    return model_dir, train, eval_


def fetch_adapter(spec: FineTuneJobSpec, rt: WorkerContext) -> str | None:
    """The adapter of spec.model.adapter as a local folder, checked against method.type (None: a new adapter)."""
    from . import fetch, model

    path = fetch.resolve_adapter(spec, rt.scratch)
    if path is None:
        return None
    model.check_adapter(spec, str(path))
    log.info("continuing the adapter %s (%s)", spec.model.adapter, path)
    return str(path)


def prepare_data(spec: FineTuneJobSpec, tokenizer: PreTrainedTokenizerBase, train_path: str, eval_path: str | None,
                 rt: WorkerContext, task: str = "causal-lm", model_dir: str | None = None) -> PreparedData:
    from . import data, model

    # spec parsing resolves packing (off for prompt/prefix tuning: the soft prompt leads each sequence)
    head = model.classification_head(model_dir) if task == "sequence-classification" and model_dir else None
    return data.prepare(spec.dataset, tokenizer, train_path, eval_path, spec.training.seed, bool(spec.dataset.packing),
                        cache_dir=os.path.join(rt.scratch, "datasets-cache"), task=task, head=head)


@dataclass
class TrainingPlan:
    """What the DeepSpeed stage decided: batch split, precision, ZeRO stage and the config dict."""

    batch: BatchPlan
    precision: str
    zero_stage: int
    ds_config: dict[str, Any]
    gradient_checkpointing: bool = True
    offload: str = "none"
    memory: dict[str, Any] | None = None  # the memory plan's summary (kubetune_api.memory), when one was made


def resolve_precision(spec: FineTuneJobSpec, rt: WorkerContext) -> str:
    import torch

    from . import dsconfig

    return dsconfig.resolve_precision(spec, rt.cuda, rt.cuda and torch.cuda.is_bf16_supported())


def plan_memory(spec: FineTuneJobSpec, rt: WorkerContext) -> MemoryPlan | None:
    """Before any download: refuse a job that cannot fit (exit 3, InsufficientMemory), decide the 'auto' settings."""
    from . import memplan

    return memplan.plan_memory(spec, resolve_precision(spec, rt), rt.cuda, rt.local_rank)


def plan_deepspeed(spec: FineTuneJobSpec, model_dir: str, rt: WorkerContext, mem: MemoryPlan | None = None,
                   task: str = "causal-lm") -> TrainingPlan:
    import torch

    from . import dsconfig, memplan, model

    batch = dsconfig.batch_plan(spec, rt.world_size, memplan.micro_batch(spec, mem))
    precision = resolve_precision(spec, rt)
    planned = memplan.zero_stage(mem)
    if spec.distributed.zero_stage == "auto" and planned is not None and spec.method.type != "qlora":
        stage = planned
    else:
        n = trainable = 0
        gpu_mem = None
        if spec.distributed.zero_stage == "auto":  # sizes matter only to 'auto'
            n = model.count_parameters(model_dir, spec, task)
            trainable = n if spec.method.type == "full" else int(0.02 * n)  # PEFT: a few percent at most
            gpu_mem = torch.cuda.get_device_properties(0).total_memory if rt.cuda else None
        stage = dsconfig.choose_zero_stage(spec, n, trainable, precision, rt.world_size, gpu_mem)
    offload = memplan.offload(spec, mem)
    checkpointing = gradient_checkpointing(spec, memplan.gradient_checkpointing(spec, mem))
    log.info("plan: %s, precision %s, ZeRO-%d, offload %s, gradient checkpointing %s", batch, precision, stage, offload,
             "on" if checkpointing else "off")
    return TrainingPlan(batch, precision, stage, dsconfig.build_ds_config(spec, batch, stage, precision, offload=offload),
                gradient_checkpointing=checkpointing, offload=offload, memory=mem.summary() if mem is not None else None)


def plan_event(plan: TrainingPlan) -> dict[str, Any]:
    """The ``plan`` event: the settings this run uses and the memory plan's numbers (status.plan, via rank 0's report)."""
    event: dict[str, Any] = {"event": "plan", "zeroStage": plan.zero_stage, "offload": plan.offload,
                             "gradientCheckpointing": plan.gradient_checkpointing, "microBatchSize": plan.batch.micro_batch}
    mem = plan.memory or {}
    for key in ("estimatedBytes", "deviceBytes", "device", "fits"):
        if mem.get(key) not in (None, ""):
            event[key] = mem[key]
    return event


def checkpoint_manager(spec: FineTuneJobSpec, rt: WorkerContext, reporters: Reporters) -> CheckpointManager:
    from .checkpoint import CheckpointManager

    return CheckpointManager(spec, scratch=rt.scratch, reporters=reporters)


def local_final_dir(spec: FineTuneJobSpec, rt: WorkerContext) -> str:
    """<output>/final for a local output; scratch/final for S3 (ckpt.publish_final uploads it)."""
    uri = spec.output.uri
    if uri.startswith("s3://"):
        return os.path.join(rt.scratch, "final")
    return os.path.join(uri[len("file://"):] if uri.startswith("file://") else uri, "final")


def gradient_checkpointing(spec: FineTuneJobSpec, wanted: bool) -> bool:
    """``wanted`` (the spec's value or the memory plan's), except for prefix tuning: off, and the log says so.

    transformers' checkpointed decoder layers drop the ``past_key_values`` that
    carry PEFT's prefix, so the first step would fail with a shape mismatch.
    """
    if wanted and spec.method.type == "prefix-tuning":
        log.warning("gradient checkpointing is turned off for prefix-tuning: transformers' checkpointed layers "
                    "drop the prefix (past_key_values); activations are kept in memory instead")
        return False
    return wanted


def tracker_settings(spec: FineTuneJobSpec, run_name: str, final_dir: str) -> dict[str, Any]:
    """TrainingArguments for ``training.tracker``, the run named after the job.

    TensorBoard event files go with the final model (``<output>/final/tensorboard``) unless
    ``TENSORBOARD_LOGGING_DIR`` is set (transformers reads the folder from that variable).
    MLflow and W&B read their server and project from their standard environment variables
    (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT, ...), set through spec.env.
    """
    tracker = spec.training.tracker
    if tracker == "none":
        return {"report_to": []}
    if tracker == "tensorboard":
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", os.path.join(final_dir, "tensorboard"))
    return {"report_to": [tracker], "run_name": run_name}


def training_arguments(spec: FineTuneJobSpec, plan: TrainingPlan, ckpt: CheckpointManager, data: PreparedData,
                       rt: WorkerContext, run_name: str = "kubetune") -> TrainingArguments:
    from transformers import TrainingArguments

    single_process_rendezvous()
    t = spec.training
    has_eval = bool(data.eval)
    length = {"max_steps": t.max_steps} if t.max_steps else {"num_train_epochs": t.epochs}
    return TrainingArguments(
        **ckpt.training_args(),
        **length,
        per_device_train_batch_size=plan.batch.micro_batch,
        per_device_eval_batch_size=plan.batch.micro_batch,
        gradient_accumulation_steps=plan.batch.accumulation,
        learning_rate=t.resolved_learning_rate(spec.method.type),
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        activation_checkpointing=plan.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        eval_strategy=("steps" if t.eval_every else "epoch") if has_eval else "no",
        eval_steps=t.eval_every,
        eval_on_start=has_eval,
        logging_strategy="steps",
        logging_steps=t.log_every,
        **tracker_settings(spec, run_name, local_final_dir(spec, rt)),
        use_liger_kernel=t.liger_kernels,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="random" if spec.dataset.shuffle else "sequential",
        disable_tqdm=True,
        ddp_timeout=spec.distributed.rendezvous_timeout_seconds,
        use_cpu=not rt.cuda,
        deepspeed=plan.ds_config,
    )


def build_trainer(spec: FineTuneJobSpec, net: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, args: TrainingArguments,
                  data: PreparedData, callbacks: list[TrainerCallback], ckpt: CheckpointManager | None = None) -> Trainer:
    from transformers import PrinterCallback, Trainer

    from . import data as data_mod
    from . import evaluate, task_metrics

    causal = data.task == "causal-lm"

    class KubetuneTrainer(Trainer):
        """The HF Trainer with exact evaluation (token-weighted, see evaluate.py; per task, task_metrics.py)."""

        def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                     metric_key_prefix: str = "eval") -> dict[str, float]:
            model = self.model_wrapped if self.is_deepspeed_enabled and self.deepspeed is not None else self.model
            if causal:
                metrics = evaluate.eval_loss(model, data.eval, self.data_collator, self.args.per_device_eval_batch_size, self.args.device)
            else:
                metrics, self.task_details = task_metrics.evaluate(model, data, self.data_collator,
                                                                   self.args.per_device_eval_batch_size, self.args.device)
            self.eval_history.append({"step": self.state.global_step, **metrics})
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            # A checkpoint needs only DeepSpeed's own files (module states and ZeRO shards, written
            # next by _save_optimizer_and_scheduler; resume loads nothing else). The Trainer would
            # also gather and write a consolidated model per checkpoint, the biggest part of a full
            # fine-tuning checkpoint's local save and upload; export consolidates once at the end.
            if _internal_call and self.is_deepspeed_enabled:
                return
            super().save_model(output_dir, _internal_call)

        def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
            # DeepSpeed's files are snapshotted here and written while training goes on (local_save.py).
            if ckpt is not None and self.is_deepspeed_enabled:
                with ckpt.writer.overlapped(self.model_wrapped):
                    super()._save_optimizer_and_scheduler(output_dir)
            else:
                super()._save_optimizer_and_scheduler(output_dir)

    if causal:
        collator: Any = data_mod.Collator(tokenizer.pad_token_id, flatten_packed=data_mod.flattens_packed_batches(_attention(net)))
        loss_func = None
    else:  # seq2seq: the collator builds decoder_input_ids with the base model's own shift
        base = net.get_base_model() if hasattr(net, "get_base_model") else net
        collator = data_mod.TaskCollator(tokenizer, data.task, model=base)
        loss_func = task_metrics.loss_function(data.task, bool(data.labels and data.labels.multi_label))
    trainer = KubetuneTrainer(
        model=net,
        args=args,
        train_dataset=_ListDataset(data.train),
        eval_dataset=_ListDataset(data.eval) if data.eval else None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        compute_loss_func=loss_func,
    )
    trainer.remove_callback(PrinterCallback)  # our ConsoleReporter prints progress
    trainer.add_callback(_forget_warmup_step_callback(trainer))
    trainer.eval_history = []
    trainer.task_details = {}
    return trainer


def forget_warmup_step(optimizer: Any) -> int:
    """Drop the optimizer state that DeepSpeed's warm-up step made before the first training step; returns the
    number of parameters whose state was dropped.

    At ZeRO-0 with bf16 or fp16 (what the memory plan picks for one process) DeepSpeed wraps the
    Trainer's torch AdamW in its FP16_UnfusedOptimizer, which calls ``step()`` once with zero
    gradients while it is built, to create the state. Adam counts that as step 1: every real step's
    bias correction is then one step late, and the first updates are 0.74, 0.86, 0.91 ... of
    AdamW's (step 1, 2, 3; LoRA training fell behind the Hugging Face recipe, docs/trainer.md).
    Only state exactly one step old is dropped (the torch optimizer creates it again at the
    first real step); ZeRO-1/2/3 and fp32 make no such step and leave nothing to drop.
    """
    state = getattr(optimizer, "state", None)
    if not state:
        return 0
    steps = [s.get("step") for s in state.values()]
    if not all(step is not None and float(step) == 1.0 for step in steps):
        return 0
    state.clear()
    return len(steps)


def _forget_warmup_step_callback(trainer: Trainer) -> TrainerCallback:
    """Calls :func:`forget_warmup_step` on DeepSpeed's client optimizer when a run starts from step 0 (on resume
    the Trainer has already loaded the checkpoint's optimizer state: nothing is touched)."""
    from transformers import TrainerCallback

    class ForgetWarmupStep(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            engine = getattr(trainer, "deepspeed", None)
            if state.global_step == 0 and engine is not None:
                dropped = forget_warmup_step(getattr(engine, "basic_optimizer", None))
                if dropped:
                    log.info("optimizer: dropped the state of DeepSpeed's zero-gradient warm-up step (%d parameters); "
                             "AdamW's first step is step 1", dropped)

    return ForgetWarmupStep()


def _attention(net: torch.nn.Module) -> str:
    return str(getattr(getattr(net, "config", None), "_attn_implementation", None) or "sdpa")


def _ListDataset(rows: list[dict[str, Any]]) -> torch.utils.data.Dataset:
    import torch.utils.data

    class ListDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return rows[i]

    return ListDataset()


def final_evaluation(trainer: Trainer, spec: FineTuneJobSpec, data: PreparedData, tokenizer: PreTrainedTokenizerBase,
                     plan: TrainingPlan) -> dict[str, float]:
    if not data.eval:
        return {}
    last = trainer.eval_history[-1] if trainer.eval_history else None
    if last and last["step"] == trainer.state.global_step:  # the Trainer just evaluated at the last step
        metrics = {k: v for k, v in last.items() if k != "step"}
    else:
        metrics = trainer.evaluate()
    if data.task == "seq2seq" and spec.evaluation.samples:  # (training.generationEval is resolved into it)
        from . import task_metrics

        metrics.update(task_metrics.seq2seq_generation(
            trainer.model, data.eval_examples, tokenizer, spec.evaluation.samples, spec.evaluation.decoding.max_new_tokens,
            trainer.args.device, synced=plan.zero_stage == 3,
        ))
    return metrics  # causal-lm generation metrics: the evaluation stage (evaluation.py), base vs tuned


def build_summary(job: FineTuneJob, rt: WorkerContext, plan: TrainingPlan, data: PreparedData, info: ModelInfo, trainer: Trainer,
                  train_result: TrainOutput, metrics: dict[str, float], wall: float, resumed_from: str | None) -> dict[str, Any]:
    from . import lineage

    state = trainer.state
    runtime = train_result.metrics.get("train_runtime") or wall
    history = [
        {k: v for k, v in h.items() if k in ("step", "epoch", "loss", "grad_norm", "learning_rate", "eval_loss")}
        for h in state.log_history
    ]
    return {
        "job": job.metadata.name,
        "method": job.spec.method.type,
        "format": data.format,
        "worldSize": rt.world_size,
        "nodes": rt.nodes,
        "zeroStage": plan.zero_stage,
        "precision": plan.precision,
        "microBatchSize": plan.batch.micro_batch,
        "gradientCheckpointing": plan.gradient_checkpointing,
        "offload": plan.offload,
        "memoryPlan": plan.memory,
        "gradientAccumulation": plan.batch.accumulation,
        "globalBatchSize": plan.batch.global_batch,
        "packing": data.packing,
        "dataWarnings": data.train_stats.warnings + (data.eval_stats.warnings if data.eval_stats else []),
        "steps": state.global_step,
        "epochs": state.epoch,
        "tokensSeen": state.num_input_tokens_seen,
        "trainLoss": train_result.training_loss,
        "initialEvalLoss": trainer.eval_history[0]["eval_loss"] if trainer.eval_history else None,
        "evalLoss": metrics.get("eval_loss"),
        "perplexity": metrics.get("eval_perplexity"),
        "evalTokens": metrics.get("eval_tokens"),
        "exactMatch": metrics.get("eval_exact_match"),
        "trainRuntimeSeconds": runtime,
        "wallSeconds": wall,
        "tokensPerSecond": state.num_input_tokens_seen / runtime if runtime else None,
        "mfu": _summary_mfu(trainer, data, state.num_input_tokens_seen / runtime if runtime else None, rt.world_size),
        "resumedFrom": resumed_from,
        "lineage": lineage.lineage(job),
        "model": asdict(info),
        "data": {"train": data.train_stats.as_dict(), "eval": data.eval_stats.as_dict() if data.eval_stats else None},
        "history": history,
        "spec": redacted_spec(job.spec.model_dump(by_alias=True, mode="json")),
        **task_summary(data, trainer, metrics),
    }


def task_summary(data: PreparedData, trainer: Trainer, metrics: dict[str, float]) -> dict[str, Any]:
    from . import task_metrics

    return task_metrics.summary_fields(data, trainer.eval_history, metrics, getattr(trainer, "task_details", {}))


REDACTED = "<redacted>"


def redacted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as summary.json records it: literal env values replaced, since
    people do put tokens there despite the docs. valueFrom references stay:
    they name a Secret key, not its value."""
    for var in spec.get("env") or []:
        if var.get("value"):
            var["value"] = REDACTED
    return spec


def _summary_mfu(trainer: Trainer, data: PreparedData, tokens_per_second: float | None, world_size: int) -> float | None:
    """Model FLOPs utilisation over the whole run (flops.py): None on CPU and on unknown GPUs."""
    from . import flops

    return flops.training_mfu(trainer.model, data.train, tokens_per_second, world_size)


# -------------------------------------------------------------------- main
def run(config_path: str) -> None:
    started = time.time()
    job = load_config(config_path)
    spec = job.spec
    rt = WorkerContext.from_env()
    setup_logging(rt.rank)
    from . import preflight

    preflight.check_options(spec)  # exit 3 now, not an ImportError minutes later
    from . import evaluation, export, lineage, model, progress, report

    reporters = progress.reporters_from_env(rt.rank)
    ckpt = None
    try:
        reporters.event({"event": "phase", "phase": "Initializing"})
        ckpt = checkpoint_manager(spec, rt, reporters)  # first: a wrong output bucket/credential fails before any download
        mem = plan_memory(spec, rt)  # config.json only: a job that cannot fit fails before the weights download
        model_dir, train_path, eval_path = fetch_inputs(spec, rt)
        adapter_dir = fetch_adapter(spec, rt)  # a wrong adapter fails here, before the data is prepared
        task = model.resolve_task(spec, model_dir)
        tokenizer = model.load_tokenizer(model_dir, spec, task=task)
        data = prepare_data(spec, tokenizer, train_path, eval_path, rt, task, model_dir)
        # base vs tuned (evaluation.py) is for causal LMs; seq2seq and classification report their
        # task metrics before (step 0) and after training instead (task_metrics.py)
        final_eval = evaluation.FinalEvaluation(spec, data, tokenizer, rt.scratch, rt.rank, ckpt.storage,
                                                continues_adapter=adapter_dir is not None) if task == "causal-lm" else None
        plan = plan_deepspeed(spec, model_dir, rt, mem, task)
        reporters.event(plan_event(plan))
        args = training_arguments(spec, plan, ckpt, data, rt, run_name=job.metadata.name)  # before the model: ZeRO-3 builds it partitioned
        join_process_group(args)  # zero.Init in from_pretrained needs the world size

        import transformers

        transformers.set_seed(spec.training.seed)
        net, info = model.load_model(spec, model_dir, plan.precision, plan.gradient_checkpointing, adapter_dir, task=task,
                                     labels=data.labels, pad_token_id=tokenizer.pad_token_id)
        callbacks = [progress.make_progress_callback(reporters), *ckpt.callbacks()]
        if final_eval is not None:
            callbacks += final_eval.callbacks(synced=plan.zero_stage == 3, device=args.device)
        trainer = build_trainer(spec, net, tokenizer, args, data, callbacks, ckpt)

        resume_dir = ckpt.prepare_resume()
        reporters.event({"event": "phase", "phase": "Running"})
        result = trainer.train(resume_from_checkpoint=resume_dir)
        metrics = final_evaluation(trainer, spec, data, tokenizer, plan)
        final_dir = local_final_dir(spec, rt)
        evaluated = final_eval.run(trainer, final_dir) if final_eval is not None else None
        metrics.update(evaluation.status_metrics(evaluated))

        reporters.event({"event": "phase", "phase": "Exporting"})
        export.export_model(trainer, spec, tokenizer, model_dir, final_dir, rt.scratch, model.load_dtype(spec, plan.precision),
                            task, data.labels)
        if rt.rank == 0:
            summary = build_summary(job, rt, plan, data, info, trainer, result, metrics, time.time() - started, resume_dir)
            summary["evaluation"] = evaluated
            export.write_summary(final_dir, summary)
            if spec.evaluation.report and final_eval is not None:
                report.write_report(final_dir, summary, evaluated)
        uris = ckpt.publish_final(final_dir)
        reporters.event({"event": "exported", **uris, **lineage.base_model(spec), "metrics": _status_metrics(metrics)})
    finally:
        if ckpt is not None:
            ckpt.restore_signal_handlers()
            ckpt.close()  # no uploader process outlives the trainer, whatever ended the run
        reporters.close()


def _status_metrics(metrics: dict[str, float]) -> dict[str, float]:
    names = {"eval_loss": "evalLoss", "eval_perplexity": "perplexity", "eval_exact_match": "exactMatch",
             "eval_token_accuracy": "tokenAccuracy", "eval_json_field_match": "jsonFieldMatch",
             "base_exact_match": "baseExactMatch", "base_json_field_match": "baseJsonFieldMatch",
             "test_loss": "testLoss", "test_exact_match": "testExactMatch"}
    from . import task_metrics

    return {**{names[k]: float(v) for k, v in metrics.items() if k in names}, **task_metrics.status_metrics(metrics)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune_trainer", description="Run one FineTuneJob (under torchrun).")
    parser.add_argument("--config", required=True, help="FineTuneJob manifest (YAML or JSON)")
    args = parser.parse_args(argv)
    try:
        run(args.config)
    except PermanentError as e:
        print(contract.format_error_line(e.reason, e), file=sys.stderr, flush=True)
        return contract.PERMANENT
    leave_process_group()
    return contract.OK


def leave_process_group() -> None:
    """Destroy the default process group after a finished run, before the interpreter shuts down.

    Left to interpreter shutdown, Gloo's worker threads can still hold work objects whose tensors
    need the GIL while Python is being torn down, and the process dies with SIGABRT ("terminate
    called without an active exception"): a rank that trained and saved everything exits 134, and
    the pod is counted as failed. NCCL warns about the same omission since PyTorch 2.4. Only after
    a normal end: every rank has passed the run's last collective, so nothing is pending.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.destroy_process_group()
    except Exception as e:  # the run's work is done and saved: never turn success into a failure here
        log.warning("could not destroy the process group at exit: %r", e)
