#!/usr/bin/env bash
# Every benchmark that a GPU node answers better than a 2-core CPU machine, in one run
# (bench/README.md, "GPU node"): made for a single lease of one H100/H200 node, which is
# short and must not be wasted on a second start.
#
# Three runs at the same time, each pinned to its own CPU cores so that none takes CPU
# from another (taskset; without it they share every core):
#
#   cores 0-7    bench/gpu_check.sh: LoRA and full fine-tuning of a 1.1B model on the GPU,
#                kubetune against the plain HF Trainer, with the planner's estimate;
#   cores 8-12   bench/checkpoint_stall.py --rounds 3: the trainer on CPU (2 ranks, gloo;
#                the GPU hidden from it), with the writer, the uploader and the S3 server
#                on the node's otherwise idle cores, as they are beside GPU training;
#   cores 13-15  bench/operator_scale.py, RUNS times one after the other: the operator,
#                the emulated API server and the minimal Kopf controller each with a core.
#
#   bench/gpu_node.sh                       # on the node; results in $OUT or /tmp/gpu-node
#   bench/gpu_node.sh --prepare-wheels      # here, with PyPI: the wheels the node lacks, in bench/.wheelhouse
#
# The node's image (python 3.12, torch with CUDA, transformers, peft, accelerate, pyarrow,
# aiohttp...) lacks deepspeed, datasets, pydantic, boto3, moto, kopf and the CEL library; they
# travel as wheels in bench/.wheelhouse (gpu_check.sh's; ignored by git, carried along) and are
# installed without deps.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RUNS=${OPERATOR_SCALE_RUNS:-5}
STALL_ARGS=${STALL_ARGS:---rounds 3}
RES=${OUT:-/tmp/gpu-node}
# What the GPU image lacks (or has in another version); gpu_check.sh pins each to the version installed here
WHEELS="transformers peft datasets dill multiprocess hjson pydantic pydantic-core annotated-types typing-inspection
boto3 botocore s3transfer jmespath jsonschema referencing rpds-py jsonschema-specifications cel-python lark pendulum
google-re2 tzdata moto cryptography cffi pycparser xmltodict responses flask flask-cors blinker itsdangerous
py-partiql-parser kopf kubernetes durationpy websocket-client requests-oauthlib oauthlib iso8601 python-json-logger
jsonpatch jsonpointer kmock"
WHEELHOUSE=bench/.wheelhouse  # gpu_check.sh's, ignored by git

if [[ "${1:-}" == "--prepare-wheels" ]]; then
    # shellcheck disable=SC2086
    WHEELS=$(echo $WHEELS) bash bench/gpu_check.sh --prepare-wheelhouse 3.12 || exit 1  # deepspeed built here too
    echo "carry $WHEELHOUSE to the node (the device tool's carry=[\"$WHEELHOUSE\"]); the tree and it must stay under 64 MiB"
    exit 0
fi

mkdir -p "$RES"
exec > >(tee "$RES/gpu_node.log") 2>&1
echo "== node: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%FT%TZ)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [[ -z "${NO_WHEELS:-}" ]] && compgen -G "$WHEELHOUSE/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check "$WHEELHOUSE"/*.whl 2>&1 | tail -n 5
fi
$PY - <<'EOF'
from importlib.metadata import version
names = "torch transformers peft accelerate datasets deepspeed pyarrow aiohttp kopf moto werkzeug fsspec numpy".split()
print("versions:", ", ".join(f"{n} {version(n)}" for n in names))
EOF
pin() { if command -v taskset >/dev/null && (( $(nproc) >= 16 )); then echo "taskset -c $1"; fi; }
export PYTHONPATH="$PWD/api:$PWD/operator:$PWD/trainer"
start=$(date +%s)

# 1. The GPU check (its own timeout budget: GPU_CHECK_BUDGET_S)
( $(pin 0-7) env OUT=/tmp/gpu-check bash bench/gpu_check.sh > "$RES/gpu_check.txt" 2>&1; echo "gpu_check exit $?" >> "$RES/gpu_check.txt" ) &
gpu=$!
# 2. Checkpoint stall on CPU, the GPU hidden
( $(pin 8-12) env CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 $PY bench/checkpoint_stall.py $STALL_ARGS > "$RES/checkpoint_stall.txt" 2>&1
  echo "checkpoint_stall exit $?" >> "$RES/checkpoint_stall.txt" ) &
stall=$!
# 3. Operator scale, RUNS times
( for i in $(seq "$RUNS"); do
      echo "== operator_scale run $i"
      $(pin 13-15) env CUDA_VISIBLE_DEVICES= $PY bench/operator_scale.py 2>&1 | grep -v -E "^\s*$"
      echo "operator_scale exit ${PIPESTATUS[0]}"
  done > "$RES/operator_scale.txt" ) &
op=$!

wait $op; echo "== operator_scale done after $(( $(date +%s) - start ))s"; grep -E "^ratio|exit" "$RES/operator_scale.txt"
wait $stall; echo "== checkpoint_stall done after $(( $(date +%s) - start ))s"; tail -n 4 "$RES/checkpoint_stall.txt"
wait $gpu; echo "== gpu_check done after $(( $(date +%s) - start ))s"
cp /tmp/gpu-check/lora.json /tmp/gpu-check/full.json "$RES/" 2>/dev/null
grep -E "^\(|^arm|speedup|eval loss after|exit|FAILED|NOT MEASURED|plan est" "$RES/gpu_check.txt"
