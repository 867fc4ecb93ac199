# syntax=docker/dockerfile:1
# The Bailu inference worker on SGLang: the engine's official image at the version Bailu's sglang
# dialect is written against (services/bailu/worker/engines/server/versions.py, the one place it is pinned; a
# unit test keeps the ARG below equal to it), plus the worker, which starts `python3 -m sglang.launch_server` as its
# child process on localhost and serves gRPC in front of it.
#
#   docker build -f docker/worker-sglang.Dockerfile -t bailu/worker-sglang:0.1.0 .
#
# The worker lives apart from the engine: its own Python 3.11 (the version Bailu supports; these engine
# images ship another) in /opt/bailu, with the worker's light dependencies only (gRPC, pydantic,
# prometheus-client, httpx). Nothing is installed into the engine's environment, so the engine's torch,
# CUDA libraries and pinned packages stay exactly as its maintainers built them. The ML stack of the
# worker extra (bailu[ml]: ms-swift, transformers, peft, torch; and gguf, xgrammar) is left out: it serves only
# the in-process transformers engine, never used in this image. uv (from PyPI, pinned) installs that
# Python: a standalone CPython build, downloaded at build time as the engine images fetch their own.
#
# Not built on the development machines (no Docker engine there); hadolint-clean (make lint-docker).

ARG SGLANG_IMAGE=lmsysorg/sglang:v0.5.23

FROM ${SGLANG_IMAGE}
ARG UV_VERSION=0.13.8
ARG WORKER_PYTHON=3.11.14
LABEL org.opencontainers.image.title="bailu-worker-sglang" \
      org.opencontainers.image.description="Bailu inference worker (gRPC) supervising a SGLang server" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/bailu/python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# A fixed non-root user (10001), as in the other Bailu images; the chart runs every pod as it.
RUN groupadd --system --gid 10001 bailu \
 && useradd --system --uid 10001 --gid bailu --home-dir /tmp --no-create-home --shell /usr/sbin/nologin bailu
# uv into its own folder (the engine's site-packages stay untouched), then the worker's Python and venv.
RUN python3 -m pip install --no-cache-dir --target /opt/bailu/uv "uv==${UV_VERSION}" \
 && /opt/bailu/uv/bin/uv python install "${WORKER_PYTHON}" \
 && /opt/bailu/uv/bin/uv venv --python "${WORKER_PYTHON}" /opt/bailu/venv \
 && chmod -R a+rX /opt/bailu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
# pyproject.toml stays the one list of the worker's dependencies: this reads it and leaves out the ML stack.
RUN /opt/bailu/venv/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
skip = ('bailu[', 'ms-swift', 'transformers', 'peft', 'torch', 'gguf', 'xgrammar'); \
deps = p['dependencies'] + [d for d in p['optional-dependencies']['worker'] if not d.startswith(skip)]; \
open('/tmp/worker-requirements.txt', 'w').write(chr(10).join(deps))" \
 && /opt/bailu/uv/bin/uv pip install --python /opt/bailu/venv/bin/python \
      -r /tmp/worker-requirements.txt \
 && /opt/bailu/uv/bin/uv pip install --python /opt/bailu/venv/bin/python --no-deps /src \
 && rm -rf /src /tmp/worker-requirements.txt
# HOME and every cache under /tmp (an emptyDir in the chart, where the root filesystem is read-only). The
# engine's own command stays first on PATH: the worker runs from /opt/bailu/venv by its full path.
ENV HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/inductor \
    SGLANG_CACHE_DIR=/tmp/.cache/sglang \
    PYTHONUNBUFFERED=1 \
    BAILU_WORKER_ENGINE=sglang \
    BAILU_WORKER_PORT=50051 \
    BAILU_WORKER_HTTP_PORT=9091
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9091
# Alive while the worker's probe server answers; loading the engine may take many minutes, readiness is /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=1800s --retries=3 \
    CMD ["/opt/bailu/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/healthz', timeout=4)"]
# The engine image's own entrypoint would start the engine itself; the worker starts it instead.
ENTRYPOINT ["/opt/bailu/venv/bin/python", "-m", "bailu.worker"]
CMD []
