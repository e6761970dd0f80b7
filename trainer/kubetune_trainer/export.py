"""Export: adapter, merged model, tokenizer and summary.json into ``<final>/``.

- adapter (PEFT methods): ``Trainer.save_model`` on every rank; under ZeRO-3
  it gathers the partitioned weights (``stage3_gather_16bit_weights_on_model_save``)
  and rank 0 writes them, so the files hold real weights, not empty shards.
- merged, full fine-tuning: the same gathered ``save_model``.
- merged, LoRA/QLoRA/IA3: rank 0 reloads the *unquantised* base model from the
  local model folder, applies the saved adapter and merges it. Merging into the
  original weights (not into de-quantised 4-bit ones) avoids the quality loss
  users report for merged QLoRA adapters; it also needs no ZeRO gathering.

Layout (docs/storage.md): ``final/adapter/``, ``final/merged/``, ``final/summary.json``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from typing import TYPE_CHECKING, Any

from kubetune_api.spec import FineTuneJobSpec

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch
    from transformers import PreTrainedTokenizerBase, Trainer

log = logging.getLogger("kubetune.export")


def wants(spec: FineTuneJobSpec) -> tuple[bool, bool]:
    """(adapter, merged) to export for this spec."""
    if spec.method.type == "full":
        return False, True
    if spec.method.type in ("prompt-tuning", "prefix-tuning"):
        return True, False
    return spec.output.export in ("adapter", "both"), spec.output.export in ("merged", "both")


def _barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def _local_loading() -> Iterator[None]:
    """Load a model whole on this rank alone, even under ZeRO-3.

    The Trainer's ZeRO-3 config makes ``from_pretrained`` build models
    partitioned (``deepspeed.zero.Init``), a collective every rank must join; the
    merge runs on rank 0 only, so with it rank 0 would wait for the others forever.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)


def merge_adapter(base_dir: str, adapter_dir: str, out_dir: str, dtype: torch.dtype, tokenizer: PreTrainedTokenizerBase,
                  trust_remote_code: bool, task: str = "causal-lm", labels: Any = None) -> None:
    """Base + adapter merged; for classification the base gets the job's head (the adapter holds its weights)."""
    from peft import PeftModel

    from . import model

    with _local_loading():
        base = model.auto_class(task).from_pretrained(base_dir, dtype=dtype, trust_remote_code=trust_remote_code,
                                                      **model.task_kwargs(task, labels, tokenizer.pad_token_id))
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def export_model(trainer: Trainer, spec: FineTuneJobSpec, tokenizer: PreTrainedTokenizerBase, base_model_dir: str, final_dir: str,
                 scratch: str, merge_dtype: torch.dtype, task: str = "causal-lm", labels: Any = None) -> dict[str, str | None]:
    """Write the artifacts; returns {'adapter': path|None, 'merged': path|None}. Call on every rank."""
    adapter, merged = wants(spec)
    out = {"adapter": None, "merged": None}
    is_main = trainer.args.process_index == 0
    if is_main:
        os.makedirs(final_dir, exist_ok=True)
    if spec.method.type == "full":
        path = os.path.join(final_dir, "merged")
        trainer.model.config.use_cache = True
        trainer.save_model(path)
        out["merged"] = path
    else:
        adapter_dir = os.path.join(final_dir, "adapter") if adapter else os.path.join(scratch, "export-adapter")
        trainer.save_model(adapter_dir)
        if adapter:
            out["adapter"] = adapter_dir
        if merged:
            path = os.path.join(final_dir, "merged")
            if is_main:
                merge_adapter(base_model_dir, adapter_dir, path, merge_dtype, tokenizer, spec.model.trust_remote_code,
                              task, labels)
                if not adapter:
                    shutil.rmtree(adapter_dir, ignore_errors=True)
            out["merged"] = path
    _barrier()
    return out


def write_summary(final_dir: str, summary: dict) -> str:
    path = os.path.join(final_dir, "summary.json")
    os.makedirs(final_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)
    return path


def read_summary(final_dir: str) -> dict | None:
    path = os.path.join(final_dir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
