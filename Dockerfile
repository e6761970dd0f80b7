# syntax=docker/dockerfile:1
#
# kubetune images, two targets from one file (see docs/install.md):
#
#   docker build --target operator -t kubetune-operator:0.1.0 .
#   docker build --target trainer  -t kubetune-trainer:0.1.0 .
#
# operator: slim Python + the `operator` extra only (Kopf, kubernetes client,
#           prometheus-client). No torch: a build step and tests/chart check it.
# trainer:  a CUDA PyTorch base + the `trainer` extra, with the DeepSpeed ops the
#           trainer uses on GPU compiled at build time instead of at pod start.
#
# Both run as a numeric non-root user, so `runAsNonRoot: true` can be verified
# by the kubelet without reading /etc/passwd.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Must provide torch >= 2.6 (transformers 5 needs it) and Python >= 3.10. The
# `-devel` variant (nvcc) compiles the DeepSpeed ops; `-runtime` is shipped.
ARG TORCH_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9


# ----------------------------------------------------------------- operator
FROM ${PYTHON_IMAGE} AS operator-build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
# Only the operator extra. The guard fails the build if torch ever sneaks in
# through a transitive dependency.
RUN python -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install --no-cache-dir --disable-pip-version-check ".[operator]" \
 && /opt/kubetune/bin/python -c "import importlib.util as u, sys; sys.exit('torch found in the operator image' if u.find_spec('torch') else 0)"

FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="kubetune operator: FineTuneJob -> gang of DeepSpeed pods" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=operator-build /opt/kubetune /opt/kubetune
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
FROM ${TORCH_IMAGE}-devel AS trainer-build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# GPU architectures to compile for: A100 (8.0), A10/RTX 30 (8.6), L4/L40/RTX 40
# (8.9), H100/H200 (9.0, +PTX for newer). There is no GPU at build time, so the
# list must be explicit.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX"
# Keep equal to the deepspeed pin of the trainer extra in pyproject.toml
# (tests/chart checks it).
ARG DEEPSPEED_VERSION=0.19.8
WORKDIR /build
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
# Pin the base image's torch so nothing below replaces it with another build.
# DeepSpeed JIT-compiles its ops on first use, which costs minutes in every new
# pod and, for CUDA ops, needs nvcc (absent from the runtime image). Prebuilt
# here: FusedAdam (the GPU optimizer) and the utils ops ZeRO uses; both are
# portable across CPUs (no -march=native). CPUAdam (optimizer offload) is NOT
# prebuilt: DeepSpeed compiles it with -march=native and the build host's
# SIMD width, which would crash with "illegal instruction" on nodes with an
# older CPU; it is compiled on first use on the node itself (g++ below).
# --no-build-isolation lets the build see the base image's CUDA torch.
RUN pip freeze | grep -E '^torch==' > /build/torch-constraint.txt \
 && test -s /build/torch-constraint.txt \
 && DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_UTILS=1 \
    TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    pip wheel --no-cache-dir --disable-pip-version-check --no-build-isolation --no-deps \
      --wheel-dir /build/wheels "deepspeed==${DEEPSPEED_VERSION}" \
 && pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /build/wheels .

FROM ${TORCH_IMAGE}-runtime AS trainer
LABEL org.opencontainers.image.title="kubetune-trainer" \
      org.opencontainers.image.description="kubetune trainer: DeepSpeed fine-tuning under torchrun" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# g++ for the CPU ops DeepSpeed compiles on the node (CPUAdam with offload);
# the version is whatever the base image's Ubuntu release ships.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
# Installed from the files built above: the kubetune wheel by path (never by
# name from an index) with the trainer extra, DeepSpeed from its prebuilt wheel.
RUN --mount=type=bind,from=trainer-build,source=/build,target=/build \
    pip install --no-cache-dir --disable-pip-version-check \
      --constraint /build/torch-constraint.txt \
      /build/wheels/deepspeed-*.whl "$(ls /build/wheels/kubetune-*.whl)[trainer]" \
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
