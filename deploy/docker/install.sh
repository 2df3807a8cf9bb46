#!/bin/sh
# Install ltr-sidecar, with its pinned dependencies, into one Python environment.
#
#   PYTHON=/opt/ltr/bin/python sh deploy/docker/install.sh cpu|cuda
#
# Run from the root of the build context (the repository root). cpu.Dockerfile
# and cuda.Dockerfile RUN exactly this, and tests/test_deploy.py runs it into a
# fresh venv and serves from it, so a broken image recipe fails the tests too.
# pip's cache is left to the caller: the Dockerfiles set PIP_NO_CACHE_DIR=1.
set -eu

variant="${1:?usage: install.sh cpu|cuda}"
python="${PYTHON:-python3}"
here="$(dirname "$0")"

case "$variant" in
  cpu | cuda) ;;
  *) echo "install.sh: unknown variant '$variant' (cpu or cuda)" >&2; exit 2 ;;
esac

# 1. Every third-party package, pinned. --no-deps: the file is the complete set,
#    and `pip check` below proves it.
"$python" -m pip install --no-deps --requirement "$here/requirements-cpu.txt"

# 2. The local distribution, ltr-sidecar, which holds both ltr_sidecar and
#    ltr_client, built against the pinned setuptools (no build isolation, so
#    nothing unpinned is fetched). The default ranker bundle ships inside
#    ltr_sidecar as package data.
"$python" -m pip install --no-deps --no-build-isolation .
"$python" -m pip check

# 3. CUDA: onnxruntime-gpu replaces onnxruntime (same module, shared files:
#    uninstall first, then force the GPU package's files in).
if [ "$variant" = cuda ]; then
  "$python" -m pip uninstall --yes onnxruntime
  "$python" -m pip install --force-reinstall --no-deps --requirement "$here/requirements-cuda.txt"
fi

# 4. Fail the build, not the pod: the runtime must import, offer the expected
#    execution provider, and the bundled default ranker must pass its hash check.
#    LTR_SKIP_BUNDLE_CHECK=1 skips the last check only (for a source tree with
#    no default bundle yet; the tests say when they use it).
LTR_VARIANT="$variant" "$python" - <<'EOF'
import os
import sys

import onnxruntime as ort

import ltr_sidecar.server  # noqa: F401  (imports grpc, health, reflection, tokenizers, prometheus)
from ltr_sidecar.bundle import DEFAULT_BUNDLE, load_bundle

want = "CUDAExecutionProvider" if os.environ["LTR_VARIANT"] == "cuda" else "CPUExecutionProvider"
have = ort.get_available_providers()
if want not in have:
    sys.exit(f"install.sh: onnxruntime {ort.__version__} offers {have}, not {want}")
if os.environ.get("LTR_SKIP_BUNDLE_CHECK") == "1":
    print(f"install.sh: onnxruntime {ort.__version__} {have}; default bundle check skipped")
else:
    bundle = load_bundle(DEFAULT_BUNDLE)
    print(f"install.sh: onnxruntime {ort.__version__} {have}; default ranker {bundle.model_version} at {DEFAULT_BUNDLE}")
EOF
