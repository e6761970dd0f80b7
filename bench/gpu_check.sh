#!/usr/bin/env bash
# One prepared GPU check for a single H100/H200 (bench/README.md, "GPU check").
#
# LoRA and full fine-tuning of a 1.1B Llama-style model (TinyLlama-1.1B's shape, random
# weights, bf16, packing into 2048-token rows) for a fixed number of optimizer steps,
# kubetune's trainer against the plain Hugging Face Trainer script, both through
# bench/train_throughput.py (same data, same steps, same held-out eval). Prints tokens/s,
# MFU and peak memory per arm, and for kubetune's arms the memory planner's estimate
# ("plan est", kubetune_api.memory) next to the measured torch.cuda.max_memory_allocated,
# so the first GPU run calibrates the planner. Designed to finish in under 8 minutes
# including warm-up (model build, imports, DeepSpeed init); every run is cut off by
# `timeout` so it does.
#
#   bench/gpu_check.sh                      # on the GPU machine; no network needed
#   GPU_CHECK_SIZE=tiny bench/gpu_check.sh  # the same plumbing on a CPU, in about a minute
#   bench/gpu_check.sh --prepare-wheelhouse 3.11   # here (needs PyPI): wheels to carry
#
# What the GPU machine must have: torch (CUDA), transformers, peft, accelerate, datasets,
# tokenizers, safetensors for both arms; deepspeed, pydantic and pyyaml for kubetune's
# trainer (it always runs under DeepSpeed). Missing ones are installed from
# bench/.wheelhouse when that folder was carried along (--prepare-wheelhouse builds it for
# the machine's Python version); otherwise the kubetune arms are reported as NOT MEASURED,
# with the reason, and only the baseline runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELHOUSE=bench/.wheelhouse
COMMON="torch transformers peft accelerate datasets tokenizers safetensors"
KUBETUNE_ONLY="deepspeed pydantic yaml"
# What a GPU image with torch/transformers/peft/accelerate may lack; pyarrow alone is ~53 MB
DEFAULT_WHEELS="datasets pyarrow pandas multiprocess dill xxhash pydantic pydantic-core annotated-types typing-inspection hjson ninja py-cpuinfo msgpack einops psutil"

pinned() {  # name==version as installed here (a set known to work together), for each of "$@"
    $PY - "$@" <<'EOF'
import sys
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))
EOF
}

if [[ "${1:-}" == "--prepare-wheelhouse" ]]; then
    pyver=${2:?usage: $0 --prepare-wheelhouse PYTHON_VERSION (e.g. 3.11)}
    mkdir -p "$WHEELHOUSE"
    # deepspeed is an sdist on PyPI: build its (pure Python, ops compiled at run time) wheel here
    $PY -m pip wheel --quiet --no-deps --no-build-isolation -w "$WHEELHOUSE" "deepspeed==0.19.8" || exit 1
    # --no-deps and an explicit list: the GPU image already has torch, numpy, transformers and
    # huggingface-hub (with fsspec, requests, tqdm, pyyaml); the carry limit is 64 MiB in all
    $PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$WHEELHOUSE" $(pinned ${WHEELS:-$DEFAULT_WHEELS}) || exit 1
    du -sh "$WHEELHOUSE"
    echo "carry $WHEELHOUSE to the GPU machine (run tool: carry=[\"$WHEELHOUSE\"]); 64 MiB at most."
    echo "Over the limit? Check the GPU image first (python -m pip list) and keep only what it lacks:"
    echo "  rm -rf $WHEELHOUSE; WHEELS='datasets multiprocess dill xxhash pyarrow' $0 --prepare-wheelhouse $pyver"
    exit 0
fi

SIZE=${GPU_CHECK_SIZE:-1b}
OUT_DIR=${OUT:-/tmp/kubetune-gpu-check}
BUDGET=${GPU_CHECK_BUDGET_S:-450}  # seconds for both runs; 8 minutes minus margin for this script
export PYTHONPATH="$PWD/api:$PWD/trainer:$PWD/operator${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT_DIR"
start=$(date +%s)

missing() {  # the modules of "$@" that do not import
    $PY - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

echo "== machine"
date -u +"%Y-%m-%dT%H:%M:%SZ"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY - <<'EOF' || exit 1
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
EOF
gpu=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
if [[ "$gpu" != 1 && "$SIZE" != tiny ]]; then
    echo "no CUDA GPU: this check is for one H100/H200 (GPU_CHECK_SIZE=tiny runs its plumbing on a CPU)"
    exit 2
fi

echo "== dependencies"
need=$(missing $COMMON $KUBETUNE_ONLY)
if [[ -n "$need" && -d "$WHEELHOUSE" ]]; then
    pkgs=$(echo "$need" | sed 's/\byaml\b/pyyaml/')
    echo "installing from $WHEELHOUSE: $pkgs"
    $PY -m pip install --quiet --no-index --find-links "$WHEELHOUSE" $pkgs
    need=$(missing $COMMON $KUBETUNE_ONLY)
fi
common_missing=$(missing $COMMON)
if [[ -n "$common_missing" ]]; then
    echo "cannot run either arm: missing $common_missing (carry $WHEELHOUSE, see --prepare-wheelhouse)"
    exit 3
fi
arms=hf,kubetune
kt_missing=$(missing $KUBETUNE_ONLY)
if [[ -n "$kt_missing" ]]; then
    echo "kubetune arms: NOT MEASURED, missing $kt_missing (carry $WHEELHOUSE, see --prepare-wheelhouse)"
    arms=hf
fi
$PY -c "import transformers, peft; print('transformers', transformers.__version__, 'peft', peft.__version__)"
$PY -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>/dev/null
$PY -c "import flash_attn; print('flash-attn', flash_attn.__version__, '(kubetune uses it; the baseline uses sdpa)')" 2>/dev/null \
    || echo "flash-attn: not installed (both arms use sdpa)"

status=0
for method in lora full; do
    left=$(( BUDGET - ($(date +%s) - start) ))
    if [[ $method == lora ]]; then limit=$(( left / 2 )); else limit=$left; fi
    echo "== $method fine-tuning, $SIZE model (limit ${limit}s)"
    timeout --kill-after=15 "$limit" $PY bench/train_throughput.py --size "$SIZE" --method "$method" --arms "$arms" \
        --model-dir "$OUT_DIR/model" --workdir "$OUT_DIR/$method" --json "$OUT_DIR/$method.json" \
        2>&1 | grep -v -E "Warning|warnings.warn|Loading weights|Writing model" | tee "$OUT_DIR/$method.txt"
    rc=${PIPESTATUS[0]}
    if [[ $rc != 0 ]]; then
        echo "$method: FAILED or cut off (exit $rc); see $OUT_DIR/$method/*.log"
        tail -n 20 "$OUT_DIR/$method"/*.log 2>/dev/null | tail -n 40
        status=1
    fi
done
echo "== done in $(( $(date +%s) - start ))s; results in $OUT_DIR/{lora,full}.{txt,json}"
exit $status
