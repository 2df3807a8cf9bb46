#!/usr/bin/env bash
# Check the vLLM hook against a vLLM release that has no CPU build (e.g. 0.33.0)
# on a CPU machine: what can be checked without running an engine.
#
#   tools/check_vllm_version.sh 0.33.0 [VENV]     (VENV defaults to runs/vllm-VERSION)
#
# A separate venv (never .venv): CPU torch first, then vLLM's GPU wheel with
# --no-deps and its requirements minus torch and the CUDA packages, so that no
# resolver pulls a CUDA torch. Then: import vLLM's scheduler modules and the
# hook, and run the hook's tests that need no engine. An engine cannot start
# from a GPU wheel on a CPU machine (no platform: "Device string must not be
# empty"), so tests/test_vllm_hook.py's engine tests are not run here
# (clients/python/README.md, "Supported vLLM versions"). Not part of `make test`.
set -euo pipefail

VERSION=${1:?usage: tools/check_vllm_version.sh VLLM_VERSION [VENV]}
VENV=${2:-runs/vllm-$VERSION}
TORCH=${TORCH:-torch==2.13.0+cpu}
PY=$VENV/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "$TORCH"
"$PY" -m pip download -q --no-deps "vllm==$VERSION" -d "$WORK"
"$PY" -m pip install -q --no-deps "$WORK"/vllm-"$VERSION"-*.whl
# vLLM's own requirements, less torch and the GPU-only packages.
unzip -p "$WORK"/vllm-"$VERSION"-*.whl "vllm-$VERSION.dist-info/METADATA" \
  | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \
  | grep -viE '^(torch|torchaudio|torchvision|torchcodec|pynvvideocodec|flashinfer|apache-tvm|tilelang|nvidia|nvtx|fastsafetensors|instanttensor|quack|tokenspeed|humming)' \
  >"$WORK/requirements.txt"
echo "${TORCH}" >"$WORK/constraints.txt"
"$PY" -m pip install -q -r "$WORK/requirements.txt" -c "$WORK/constraints.txt"
"$PY" -m pip install -q --no-deps -e .
"$PY" -m pip install -q grpcio grpcio-health-checking grpcio-reflection protobuf onnxruntime tokenizers numpy \
  prometheus-client pytest pytest-timeout grpcio-tools onnx scipy -c "$WORK/constraints.txt"

for module in vllm.v1.core.sched.request_queue vllm.v1.core.sched.scheduler vllm.v1.core.sched.async_scheduler \
  ltr_client.vllm.request_queue ltr_client.vllm.scheduler; do
  "$PY" -c "import $module" && echo "import $module: ok"
done
"$PY" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
"$PY" -m pytest -q -p no:cacheprovider tests/test_vllm_hook_without_engine.py tests/test_scorer.py
# The two tests of test_vllm_hook.py that drive LTRRequestQueue without an engine.
"$PY" -m pytest -q -p no:cacheprovider tests/test_vllm_hook.py -k "the_queue"
