# syntax=docker/dockerfile:1.7
# durabert orchestrator image: the workflows on orchestrator-queue, plus the `durabert` CLI.
# Build from the repository root:
#   docker build -f deploy/docker/orchestrator.Dockerfile -t durabert-orchestrator:0.1.0 .
# No torch, transformers or datasets: the workflows only schedule activities by name.

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
# Bytecode is compiled here because the root filesystem is read-only at run time; the
# interpreter in the image is the only one uv may use, so the venv's links stay valid.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Every member's pyproject.toml, so the workspace is whole: `--frozen` would install without
# them, but `--locked` (a stale-lock check) and any re-resolution need them all.
COPY pyproject.toml uv.lock ./
COPY shared/pyproject.toml shared/pyproject.toml
COPY data_worker/pyproject.toml data_worker/pyproject.toml
COPY gpu_worker/pyproject.toml gpu_worker/pyproject.toml
COPY orchestrator/pyproject.toml orchestrator/pyproject.toml
# Dependencies first: this layer is reused until uv.lock changes.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --package durabert-orchestrator --no-install-workspace --no-editable
COPY shared/src shared/src
COPY orchestrator/src orchestrator/src
# Non-editable: the final stage copies only /app/.venv, not the sources.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --package durabert-orchestrator --no-editable

FROM python:3.11-slim-bookworm AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="durabert-orchestrator" \
      org.opencontainers.image.description="durabert orchestrator worker (workflows on orchestrator-queue) and CLI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A passwd entry, not only a numeric USER: some libraries call getpass.getuser().
RUN groupadd --system --gid 10001 durabert \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/durabert --create-home durabert
COPY --from=build --chown=0:0 /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DURABERT_LOG_FORMAT=json \
    DURABERT_WORKER__HEALTH_PORT=8081 \
    DURABERT_METRICS_PORT=9464
USER 10001:10001
WORKDIR /home/durabert
EXPOSE 8081 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['DURABERT_WORKER__HEALTH_PORT'] + '/healthz', timeout=3)"]
ENTRYPOINT ["durabert-orchestrator-worker"]
