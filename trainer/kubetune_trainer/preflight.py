"""Start-up checks: every option the spec asks for must be available in this image.

An option the image cannot honour (a tracker that is not installed, Liger or
flash-attention without their packages or without a GPU, QLoRA without
bitsandbytes) would otherwise fail minutes later with an ImportError, exit 1,
and be retried as if it were transient. Checked first, it fails the job at
once: exit 3 and one line naming the field and what to install.
"""
from __future__ import annotations

import importlib.util

from kubetune_api.contract import PermanentError
from kubetune_api.spec import FineTuneJobSpec

REASON = "OptionUnavailable"

# tracker -> (module transformers imports, how to get it)
TRACKERS = {
    "tensorboard": ("tensorboard", "it ships in the kubetune trainer image (pip install 'kubetune[trainer]')"),
    "mlflow": ("mlflow", "it ships in the kubetune trainer image (pip install 'kubetune[trainer]')"),
    "wandb": ("wandb", "build the image with wandb (pip install wandb) or choose tensorboard or mlflow"),
}


def importable(module: str) -> bool:
    """Whether ``module`` can be imported here (found on the path; not imported, so the check is fast)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def unavailable_options(spec: FineTuneJobSpec) -> list[str]:
    """One line per option of ``spec`` that this image cannot honour (empty when all are fine)."""
    problems = []
    tracker = spec.training.tracker
    if tracker in TRACKERS:
        module, fix = TRACKERS[tracker]
        if not importable(module):
            problems.append(f"spec.training.tracker: {tracker} is not installed in this image ({module}); {fix}")
    if spec.training.liger_kernels:
        if not importable("liger_kernel"):
            problems.append("spec.training.ligerKernels: the liger-kernel package is not installed in this image; "
                            "build the image with pip install liger-kernel, or set ligerKernels: false")
        elif not cuda_available():
            problems.append("spec.training.ligerKernels: Liger kernels need a CUDA GPU; set ligerKernels: false on CPU")
    if spec.model.attention == "flash_attention_2":
        if not importable("flash_attn"):
            problems.append("spec.model.attention: flash_attention_2 needs the flash-attn package, which is not installed "
                            "in this image; build it with pip install flash-attn, or use attention: auto (sdpa)")
        elif not cuda_available():
            problems.append("spec.model.attention: flash_attention_2 needs a CUDA GPU; use attention: auto (sdpa) on CPU")
    if spec.method.type == "qlora" and not importable("bitsandbytes"):
        problems.append("spec.method.type: qlora needs bitsandbytes, which is not installed in this image "
                        "(pip install 'kubetune[trainer]'), or use method lora")
    return problems


def check_options(spec: FineTuneJobSpec) -> None:
    """PermanentError (exit 3) naming the first unavailable option, and how many more there are."""
    problems = unavailable_options(spec)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PermanentError(problems[0] + more, REASON)
