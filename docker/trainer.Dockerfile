# syntax=docker/dockerfile:1
# The Bailu trainer: one training run (`python -m bailu.trainer`): dataset snapshot, LoRA/QLoRA SFT and
# ORPO/DPO with ms-swift, the evaluation gate, export, publish to the model registry. The Helm chart's
# trainer CronJob runs it; the image also carries the operator CLI (`bailu models ...`).
#
#   docker build -f docker/trainer.Dockerfile -t bailu/trainer:0.1.0 .      (or: make images)
#
# CUDA: PyPI is the only package index this project uses, and PyPI's torch wheel for Linux x86_64 is the
# CUDA build: it brings the CUDA runtime, cuDNN and NCCL as nvidia-* wheels, so a slim Python base is a
# CUDA-enabled PyTorch base; the GPU driver comes from the node (NVIDIA container toolkit / GPU
# Operator). The same image trains on CPUs, slowly (the chart's CPU demo does, on SmolLM2-135M).
# bitsandbytes is added for QLoRA (BAILU_TRAINER_QUANT_BITS=4). GPTQ/AWQ export (BAILU_TRAINER_QUANTIZE)
# needs their packages too, which are not here: build an image FROM this one that adds them.
#
# The ML stack (ms-swift, transformers, peft) is installed with the pins of the `worker` extra, the one
# place that pins them, so that training and serving use the same templates and tokenizers. No model is
# inside: runs read the base model from the model store (or from a worker image, copied by the
# CronJob's init container). The runtime image has no compiler and no pip cache; it runs as the
# non-root user 10001 with a read-only root filesystem in the Helm chart, where /tmp is an emptyDir.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG BITSANDBYTES_VERSION=0.50.2
# Unset unless given: pip reads it from the environment.
ARG PIP_EXTRA_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and pinned: the extras accept any torch>=2.6, and pip would otherwise pick the newest.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
# trainer: the pinned ms-swift/transformers/peft set and redis (registry index); collector: the Kubernetes
# client (`bailu retrain`).
RUN pip install --no-cache-dir "./[trainer,collector]" "bitsandbytes==${BITSANDBYTES_VERSION}"

FROM ${PYTHON_IMAGE} AS trainer
LABEL org.opencontainers.image.title="bailu-trainer" \
      org.opencontainers.image.description="Bailu trainer (ms-swift LoRA/QLoRA SFT and preference alignment, evaluation gate, model registry) and the bailu operator CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 bailu \
 && useradd --system --uid 10001 --gid bailu --home-dir /tmp --no-create-home --shell /usr/sbin/nologin bailu
COPY --from=builder /opt/venv /opt/venv
# HOME and every cache under /tmp (an emptyDir in the chart, where the root filesystem is read-only);
# Hugging Face libraries never go to the network: models and datasets come from volumes.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    BAILU_TRAINER_WORK_DIR=/tmp/trainer-runs
WORKDIR /tmp
USER 10001:10001
# A batch job: nothing to probe.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "bailu.trainer"]
