#!/usr/bin/env bash
# Build an mmcv 2.1.0 wheel with compiled ops against the torch installed in the current Python environment.
#
# mmdet 3.3.0 and mmsegmentation 1.2.2 need mmcv >=2.0.0rc4,<2.2.0 *with* its compiled mmcv._ext (mmcv-lite fails at
# import), and mmcv 2.1.0 ships no wheel for recent torch. Its sdist does not build as shipped on torch >= 2.6:
#   1. its setup.py imports pkg_resources, which setuptools >= 70 no longer provides;
#   2. it hard-codes -std=c++14 / -std=c++17, but torch's headers now require C++20.
# This script builds it in a throw-away virtualenv that sees your torch (--system-site-packages) but has its own
# setuptools<70, so your environment's setuptools is left alone. Takes ~40 minutes on 2 cores (CPU ops only).
#
# Usage:
#   tools/build_mmcv.sh [WHEEL_DIR]          # default WHEEL_DIR: ./wheels
#   pip install --find-links WHEEL_DIR -e ".[test,mm]"
# Environment:
#   PYTHON      interpreter whose torch to build against (default: python)
#   MAX_JOBS    parallel compile jobs (default: number of cores)
#   FORCE_CUDA  1 to compile the CUDA ops too (needs nvcc; automatic when torch sees a GPU)
set -euo pipefail

MMCV_VERSION=2.1.0
PYTHON=${PYTHON:-python}
WHEEL_DIR=$(mkdir -p "${1:-wheels}" && cd "${1:-wheels}" && pwd)
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export MMCV_WITH_OPS=1

"$PYTHON" -c "import torch" || { echo "build_mmcv.sh: torch must be installed in $PYTHON first" >&2; exit 1; }
BUILD_DIR=$(mktemp -d)
trap 'rm -rf "$BUILD_DIR"' EXIT
echo "Building mmcv $MMCV_VERSION against torch $("$PYTHON" -c 'import torch; print(torch.__version__)') in $BUILD_DIR"

"$PYTHON" -m venv --system-site-packages "$BUILD_DIR/venv"
export PATH="$BUILD_DIR/venv/bin:$PATH"  # torch's extension builder looks for ninja on PATH
BUILD_PY="$BUILD_DIR/venv/bin/python"
"$BUILD_PY" -m pip install --quiet "setuptools<70" wheel ninja

cd "$BUILD_DIR"
# The sdist only; its metadata step already runs setup.py: hence setuptools<70, and no build isolation (it imports
# torch).
"$BUILD_PY" -m pip download --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION"
tar xzf "mmcv-$MMCV_VERSION.tar.gz"
cd "mmcv-$MMCV_VERSION"
sed -i 's/c++17/c++20/g; s/c++14/c++20/g' setup.py
grep -q 'c++20' setup.py || { echo "build_mmcv.sh: setup.py has no C++ standard flag to patch" >&2; exit 1; }
"$BUILD_PY" -m pip wheel --no-deps --no-build-isolation -w "$WHEEL_DIR" .

echo "Wheel written to $WHEEL_DIR:"
ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl
echo "Install with: pip install --find-links $WHEEL_DIR -e \".[test,mm]\""
