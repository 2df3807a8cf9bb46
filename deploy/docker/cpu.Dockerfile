# syntax=docker/dockerfile:1.7
# ltr-sidecar, CPU image (ONNX Runtime CPU execution provider).
#
# Build from the repository root (the build context); BuildKit reads
# cpu.Dockerfile.dockerignore next to this file:
#   docker build -f deploy/docker/cpu.Dockerfile -t ltr-sidecar:0.1.0-cpu .
# Run:
#   docker run --rm -p 50051:50051 -p 9090:9090 ltr-sidecar:0.1.0-cpu
# Arguments after the image name are added to `ltr-sidecar serve`
# (e.g. --model /models/v2); every flag can also be set as LTR_<FLAG>.

# Pin by digest (python:3.11-slim-bookworm@sha256:...) in your registry for byte-identical rebuilds.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the install needs (the .dockerignore keeps the rest out).
COPY deploy/docker/install.sh deploy/docker/requirements-cpu.txt deploy/docker/requirements-cuda.txt deploy/docker/
COPY clients/python/ clients/python/
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
RUN python -m venv /opt/ltr \
    && PYTHON=/opt/ltr/bin/python sh deploy/docker/install.sh cpu

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="ltr-sidecar" \
      org.opencontainers.image.description="gRPC scheduling sidecar that ranks LLM requests by predicted output length (ONNX Runtime, CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
# The virtual environment only: no sources, no compilers, no pip cache.
COPY --from=build /opt/ltr /opt/ltr
ENV PATH=/opt/ltr/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LTR_LOG_FORMAT=json
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
EXPOSE 50051 9090
# `ltr-sidecar health` asks grpc.health.v1 on loopback (exit 0 only if SERVING).
# If you move the port or enable TLS, set LTR_TARGET / LTR_TLS_CA for it too.
# Kubernetes ignores HEALTHCHECK and uses the native gRPC probes in deploy/k8s.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["ltr-sidecar", "health", "--target", "127.0.0.1:50051", "--timeout", "3"]
# Listen on all interfaces *inside the container*: in a pod, the kubelet's gRPC
# probes and Prometheus reach the container at the pod IP, never on loopback,
# and publishing a port from Docker needs it too. The boundary is the pod's or
# container's network namespace; restrict it further with a NetworkPolicy or
# TLS (--tls-cert/--tls-key[/--tls-client-ca]). Later flags win, so `--host
# 127.0.0.1` as an argument still confines it to the pod.
# Exec form: ltr-sidecar is PID 1 and gets SIGTERM itself (health NOT_SERVING, drain, exit 0).
ENTRYPOINT ["ltr-sidecar", "serve", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0"]
