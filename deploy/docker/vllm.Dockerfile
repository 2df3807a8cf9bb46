# syntax=docker/dockerfile:1.7
# vLLM with ltr-client installed, so that `--scheduler-cls
# ltr_client.vllm.LTRScheduler` imports. deploy/k8s runs this as the engine.
#
# Build from the repository root:
#   docker build -f deploy/docker/vllm.Dockerfile -t ltr-vllm:0.32.0 .
# ltr-client's vllm extra takes vllm 0.32 or 0.33; the image stays on 0.32.0, the
# release the hook's engine tests ran on (clients/python/README.md).
# For a CPU node pool, build the same recipe on vLLM's CPU image of that release
# (rename FROM, e.g. to a locally built `vllm-cpu:v0.32.0`), tagged 0.32.0-cpu.
FROM vllm/vllm-openai:v0.32.0
LABEL org.opencontainers.image.title="ltr-vllm" \
      org.opencontainers.image.description="vLLM with the ltr-sidecar scheduler hook (ltr-client)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY clients/python/ /tmp/ltr-client/
# ltr-client needs only grpcio, protobuf and numpy; pip keeps vLLM's versions
# where they satisfy it. Importing the hook (which imports vLLM, grpc and the
# generated stubs) fails the build if the result does not fit together.
RUN python3 -m pip install --no-cache-dir /tmp/ltr-client \
    && python3 -c "import ltr_client.vllm.scheduler" \
    && rm -rf /tmp/ltr-client
