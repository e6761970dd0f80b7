#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# DeepSpeed's CPU op is cached per source path: the shared virtualenv is reached
# through each checkout's own .venv link, so one shared cache was rebuilt (~30 s,
# more under load) whenever another checkout had built it last. One per checkout.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions/checkout-$(printf %s "$PWD" | md5sum | cut -c1-12)}"
# Headless Chromium for the screenshot of report.html (tests/trainer/test_evaluation_report.py);
# Debian ships it, and the test skips only where it is absent.
if ! command -v chromium-headless-shell >/dev/null && ! command -v chromium >/dev/null && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  install_chromium() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium-headless-shell fonts-dejavu-core >/dev/null; }
  install_chromium || { apt-get update -q >/dev/null && install_chromium; } \
    || echo "test.sh: warning: could not install chromium-headless-shell; the report screenshot test will skip" >&2
fi
bash scripts/setup.sh
# .venv/bin first: the same ninja that built DeepSpeed's CPU op in setup.sh (see there).
export PATH="$PWD/.venv/bin:$PATH"
# This checkout's source roots first, for pytest and for the processes tests start.
export PYTHONPATH="$PWD/api:$PWD/operator:$PWD/trainer${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
