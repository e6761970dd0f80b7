"""Fine-tune a model shipped as a GGUF file: convert it once into a Hugging Face folder.

transformers reads GGUF (``from_pretrained(dir, gguf_file=name)``, needs the
``gguf`` package) by de-quantising every tensor, which takes tens of seconds
for even a 135M model, and the result cannot be saved with
``save_pretrained`` (it carries a GGUF quantisation config). So the trainer
never trains on the GGUF-loaded object: ``convert_to_hf`` loads it once,
copies its state dict into a fresh model built from the same config (minus
the quantisation config) and saves that, with the tokenizer (chat template
included) next to it. Every later run, restart and rank reads the ordinary
safetensors folder.

The conversion is atomic (written to a temporary sibling folder, then
renamed) and cached: ``out_dir`` records which file it came from (name, size
and SHA-256), and a second call for the same file returns at once.

Command line: ``python -m kubetune_trainer.gguf MODEL.gguf OUT_DIR``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from kubetune_api import contract
from kubetune_api.contract import PermanentError

MARKER = "kubetune-gguf-source.json"


def is_gguf(source: str | os.PathLike) -> bool:
    """True for a model source that names a GGUF file (by extension)."""
    return str(source).lower().endswith(".gguf")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _source_record(gguf_path: Path) -> dict:
    return {"file": gguf_path.name, "size": gguf_path.stat().st_size, "sha256": _sha256(gguf_path)}


def _already_converted(out_dir: Path, record: dict) -> bool:
    try:
        return json.loads((out_dir / MARKER).read_text()) == record
    except (OSError, ValueError):
        return False


def convert_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str | None = None) -> Path:
    """Convert ``gguf_path`` into a Hugging Face model folder at ``out_dir``; return ``out_dir``.

    ``dtype`` ('float32', 'bfloat16', 'float16') is the dtype of the saved
    weights; unset keeps what de-quantisation produced (float32). Raises
    ``PermanentError`` (reason ``ModelNotFound`` / ``InvalidModel``) when the
    file is missing or not a GGUF model transformers can read.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise PermanentError(f"GGUF model file {gguf_path} does not exist", reason="ModelNotFound")
    record = _source_record(gguf_path)
    if dtype:
        record["dtype"] = dtype
    if _already_converted(out_dir, record):
        return out_dir

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name)
    except ImportError:
        raise
    except Exception as e:  # transformers raises several types for unreadable or unsupported files
        raise PermanentError(
            f"cannot load {gguf_path} as a GGUF causal language model: {type(e).__name__}: {e}",
            reason="InvalidModel",
        ) from e

    # A fresh model of the same architecture, without the GGUF quantisation
    # config that makes save_pretrained refuse the loaded one.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    target_dtype = getattr(torch, dtype) if dtype else next(loaded.parameters()).dtype
    config.dtype = target_dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=target_dtype)
    state = {k: v.to(target_dtype) if v.is_floating_point() else v for k, v in loaded.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    # Tied output embeddings are absent from the state dict by design.
    tied = set(getattr(fresh, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise PermanentError(
            f"converting {gguf_path}: weights did not map onto {type(fresh).__name__} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})",
            reason="InvalidModel",
        )
    if config.tie_word_embeddings:
        fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    del loaded

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the folder is a shared cache
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m kubetune_trainer.gguf",
        description="Convert a GGUF model file into a Hugging Face model folder (weights de-quantised).",
    )
    parser.add_argument("gguf_file")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    args = parser.parse_args(argv)
    try:
        out = convert_to_hf(args.gguf_file, args.out_dir, dtype=args.dtype)
    except PermanentError as e:
        print(contract.format_error_line(e.reason, e), file=sys.stderr)
        return 3
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
