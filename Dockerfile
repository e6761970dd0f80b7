# syntax=docker/dockerfile:1
#
# kubetune images, two targets from one file (see docs/install.md):
#
#   docker build --target operator -t kubetune-operator:0.1.0 .
#   docker build --target trainer  -t kubetune-trainer:0.1.0 .
#
# operator: slim Python, the core dependencies, the `operator` extra
#           (Kopf, kubernetes client, prometheus-client) and the `api` extra
#           (FastAPI, uvicorn: `kubetune api`, which the chart can deploy from
#           this image), and only the
#           kubetune_api and kubetune_operator packages: no torch and no
#           trainer code (the build checks both; so does tests/chart).
# trainer:  a CUDA PyTorch base, the `trainer` extra and the kubetune_api and
#           kubetune_trainer packages, with the DeepSpeed ops the trainer uses
#           on GPU compiled at build time instead of at pod start.
#
# Layers, slowest first, so that a source change rebuilds only the last one:
# DeepSpeed's CUDA ops (depend on nothing of ours), the dependencies (depend on
# pyproject.toml only, through scripts/requirements.py), then the kubetune
# wheel, installed with --no-deps.
#
# Both run as a numeric non-root user, so `runAsNonRoot: true` can be verified
# by the kubelet without reading /etc/passwd.

# Python 3.11 is the project's floor (requires-python in pyproject.toml: Kopf
# and transformers need it).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Must provide torch >= 2.6 (the floor in pyproject.toml: transformers 5 needs
# it) and Python >= 3.11 (this tag ships 3.11). The `-devel` variant (nvcc)
# compiles the DeepSpeed ops; `-runtime` is shipped.
ARG TORCH_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9
ARG VERSION=0.1.0


# ----------------------------------------------------------------- operator
# The dependency list, from pyproject.toml alone.
FROM ${PYTHON_IMAGE} AS operator-deps
WORKDIR /src
COPY pyproject.toml ./
COPY scripts/requirements.py scripts/
RUN python scripts/requirements.py operator api > /src/requirements.txt

# The kubetune wheel, built from the API and operator sources only: the
# trainer's source is never in the operator's build context stage.
FROM ${PYTHON_IMAGE} AS operator-wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api/ api/
COPY operator/ operator/
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS operator
ARG VERSION
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="kubetune operator: FineTuneJob -> gang of DeepSpeed pods" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.url="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.documentation="https://github.com/kubetune/kubetune/blob/main/docs/install.md" \
      org.opencontainers.image.vendor="kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"
# Dependencies: their own layer, unchanged by source edits. The guard fails the
# build if torch ever sneaks in through a transitive dependency.
RUN --mount=type=bind,from=operator-deps,source=/src,target=/deps \
    python -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install --no-cache-dir --disable-pip-version-check -r /deps/requirements.txt \
 && /opt/kubetune/bin/python -c "import importlib.util as u, sys; sys.exit('torch found in the operator image' if u.find_spec('torch') else 0)"
# kubetune itself, nothing else: the image holds kubetune_api and
# kubetune_operator and no trainer code.
RUN --mount=type=bind,from=operator-wheel,source=/wheels,target=/wheels \
    /opt/kubetune/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /wheels/kubetune-*.whl \
 && /opt/kubetune/bin/python -c "import importlib.util as u, sys; import kubetune_api, kubetune_operator; sys.exit('trainer code found in the operator image' if u.find_spec('kubetune_trainer') else 0)"
# HOME=/tmp: uid 65532 has no passwd entry or home, and the chart mounts a
# writable emptyDir at /tmp under a read-only root filesystem.
ENV PATH=/opt/kubetune/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# 65532: the conventional "nonroot" uid; no shell or home directory needed.
USER 65532:65532
# /healthz (KUBETUNE_HEALTH_PORT) and /metrics (KUBETUNE_METRICS_PORT).
EXPOSE 8080 9090
ENTRYPOINT ["kubetune", "operator"]


# ------------------------------------------------------------------ trainer
# DeepSpeed's ops and the dependency list: nothing of kubetune's source, so a
# source change never recompiles the CUDA ops.
FROM ${TORCH_IMAGE}-devel AS trainer-deps
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# GPU architectures to compile for: A100 (8.0), A10/RTX 30 (8.6), L4/L40/RTX 40
# (8.9), H100/H200 (9.0, +PTX for newer). There is no GPU at build time, so the
# list must be explicit.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX"
# Keep equal to the deepspeed pin of the trainer extra in pyproject.toml
# (tests/chart checks it).
ARG DEEPSPEED_VERSION=0.19.8
WORKDIR /deps
# Pin the base image's torch so nothing below replaces it with another build.
# DeepSpeed JIT-compiles its ops on first use, which costs minutes in every new
# pod and, for CUDA ops, needs nvcc (absent from the runtime image). Prebuilt
# here: FusedAdam (the GPU optimizer) and the utils ops ZeRO uses; both are
# portable across CPUs (no -march=native). CPUAdam (optimizer offload) is NOT
# prebuilt: DeepSpeed compiles it with -march=native and the build host's
# SIMD width, which would crash with "illegal instruction" on nodes with an
# older CPU; it is compiled on first use on the node itself (g++ below).
# --no-build-isolation lets the build see the base image's CUDA torch.
RUN pip freeze | grep -E '^torch==' > /deps/torch-constraint.txt \
 && test -s /deps/torch-constraint.txt \
 && DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_UTILS=1 \
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    pip wheel --no-cache-dir --disable-pip-version-check --no-build-isolation --no-deps \
      --wheel-dir /deps/wheels "deepspeed==${DEEPSPEED_VERSION}"
COPY pyproject.toml /src/
COPY scripts/requirements.py /src/scripts/
RUN python /src/scripts/requirements.py trainer > /deps/requirements.txt

# The kubetune wheel, from the API and trainer sources.
FROM ${TORCH_IMAGE}-devel AS trainer-wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api/ api/
COPY trainer/ trainer/
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels .

FROM ${TORCH_IMAGE}-runtime AS trainer
ARG VERSION
LABEL org.opencontainers.image.title="kubetune-trainer" \
      org.opencontainers.image.description="kubetune trainer: DeepSpeed fine-tuning under torchrun" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.url="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.documentation="https://github.com/kubetune/kubetune/blob/main/docs/install.md" \
      org.opencontainers.image.vendor="kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# g++ for the CPU ops DeepSpeed compiles on the node (CPUAdam with offload);
# the version is whatever the base image's Ubuntu release ships.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
# Dependencies, DeepSpeed from its prebuilt wheel: their own layer, unchanged
# by source edits. The base image's torch stays (constraint).
RUN --mount=type=bind,from=trainer-deps,source=/deps,target=/deps \
    pip install --no-cache-dir --disable-pip-version-check \
      --constraint /deps/torch-constraint.txt \
      /deps/wheels/deepspeed-*.whl -r /deps/requirements.txt
# kubetune itself, by path (never by name from an index), nothing else.
RUN --mount=type=bind,from=trainer-wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --disable-pip-version-check --no-deps /wheels/kubetune-*.whl \
 && python -c "import deepspeed, kubetune_trainer, torch; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)"
# Non-root user 1000:1000 (the operator's default runAsUser/runAsGroup for
# trainer pods, KUBETUNE_RUN_AS_USER) with a writable home for caches, and the
# scratch directory KUBETUNE_SCRATCH points to (pods mount a volume over it).
# Some base images already have a uid 1000 user (ubuntu:24.04's "ubuntu").
RUN (getent passwd 1000 >/dev/null || useradd --uid 1000 --user-group --no-log-init --no-create-home kubetune) \
 && mkdir -p /home/kubetune /scratch \
 && chown 1000:1000 /home/kubetune /scratch
ENV KUBETUNE_SCRATCH=/scratch \
    HOME=/home/kubetune \
    PYTHONUNBUFFERED=1
WORKDIR /scratch
USER 1000:1000
# The operator sets the command (torchrun ... -m kubetune_trainer --config FILE).
CMD ["python", "-m", "kubetune_trainer", "--help"]
