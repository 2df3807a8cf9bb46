# syntax=docker/dockerfile:1.7
# ltr-sidecar, CUDA image (onnxruntime-gpu, CUDA execution provider).
#
# Build from the repository root (the build context); BuildKit reads
# cuda.Dockerfile.dockerignore next to this file:
#   docker build -f deploy/docker/cuda.Dockerfile -t ltr-sidecar:0.1.0-cuda .
# Run (needs the NVIDIA Container Toolkit and a driver for CUDA 13, >= 580):
#   docker run --rm --gpus 1 -p 50051:50051 -p 9090:9090 ltr-sidecar:0.1.0-cuda
# onnxruntime-gpu 1.31 from PyPI is built for CUDA 13.x + cuDNN 9, which this
# base image provides (see requirements-cuda.txt).

# Pin by digest in your registry for byte-identical rebuilds.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's Python 3.12. Versions are not pinned: Ubuntu drops superseded
# package versions from its archive, so exact pins would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the install needs (the .dockerignore keeps the rest out).
COPY deploy/docker/install.sh deploy/docker/requirements-cpu.txt deploy/docker/requirements-cuda.txt deploy/docker/
COPY clients/python/ clients/python/
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
# The same install as the CPU image, then onnxruntime -> onnxruntime-gpu.
RUN python3 -m venv /opt/ltr \
    && PYTHON=/opt/ltr/bin/python sh deploy/docker/install.sh cuda

FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
LABEL org.opencontainers.image.title="ltr-sidecar" \
      org.opencontainers.image.description="gRPC scheduling sidecar that ranks LLM requests by predicted output length (ONNX Runtime, CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
# The venv's interpreter is a link to /usr/bin/python3.12: the runtime needs python3 (not venv, not pip).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/ltr /opt/ltr
# CUDA first, CPU as the fallback: if the CUDA provider cannot start (no GPU
# visible to this container), ONNX Runtime falls back to CPU, and ModelInfo and
# the ltr_model_info metric name the provider actually used. Listing them skips
# the TensorRT provider that auto-selection would try first (TensorRT is not in
# this image). The NVIDIA_* variables come from the base image.
ENV PATH=/opt/ltr/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LTR_LOG_FORMAT=json \
    LTR_PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
EXPOSE 50051 9090
# `ltr-sidecar health` asks grpc.health.v1 on loopback (exit 0 only if SERVING).
# If you move the port or enable TLS, set LTR_TARGET / LTR_TLS_CA for it too.
# Kubernetes ignores HEALTHCHECK and uses the native gRPC probes in deploy/k8s.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["ltr-sidecar", "health", "--target", "127.0.0.1:50051", "--timeout", "3"]
# Listen on all interfaces *inside the container*: in a pod, the kubelet's gRPC
# probes and Prometheus reach the container at the pod IP, never on loopback,
# and publishing a port from Docker needs it too. The boundary is the pod's or
# container's network namespace; restrict it further with a NetworkPolicy or
# TLS. Later flags win, so `--host 127.0.0.1` as an argument still confines it.
# Exec form: ltr-sidecar is PID 1 and gets SIGTERM itself (health NOT_SERVING, drain, exit 0).
ENTRYPOINT ["ltr-sidecar", "serve", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0"]
