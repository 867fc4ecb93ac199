# syntax=docker/dockerfile:1
# The Bailu gateway: the OpenAI-compatible HTTP API in front of the workers. The same image runs the
# feedback collector (`python -m bailu.collector`; the Helm chart's collector uses it): both are small
# CPU services on the same base, and one image is one build, one scan and one pull. The collector's
# extra adds only the Kubernetes client (redis is shared), which the gateway never imports.
#
#   docker build -f docker/gateway.Dockerfile -t bailu/gateway:0.1.0 .      (or: make images)
#
# The build context is the repository root (see .dockerignore). The runtime image has no compiler
# and no pip cache; it runs as the non-root user 10001 with a read-only root filesystem in the
# Helm chart, where /tmp is an emptyDir.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services/ services/
RUN pip install --no-cache-dir "./[gateway,collector]"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="bailu-gateway" \
      org.opencontainers.image.description="Bailu gateway (OpenAI-compatible API over gRPC inference workers) and feedback collector" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 bailu \
 && useradd --system --uid 10001 --gid bailu --home-dir /tmp --no-create-home --shell /usr/sbin/nologin bailu
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    BAILU_GATEWAY_PORT=8000
WORKDIR /tmp
USER 10001:10001
# 8000: the gateway; 9092: the collector's probes and metrics. The health check below is the
# gateway's (the default command); Kubernetes ignores it and probes each container itself.
EXPOSE 8000 9092
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["python", "-m", "bailu.gateway"]
