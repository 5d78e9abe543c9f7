#!/usr/bin/env bash
# Set up a Python virtualenv with PyTorch for the CPU reference benchmark
# (benches/torch_ref.py). Idempotent: creates benches/.venv if missing and
# installs torch only if `import torch` fails there.
#
# Usage:  bash benches/setup-torch.sh        (from anywhere)
#         PYTHON=python3.11 TORCH_VERSION=2.15.0 bash benches/setup-torch.sh
#
# Note: a CPU-only `pip install --no-deps torch` (+ its pure-Python deps) does
# NOT work with the PyPI Linux wheel: `import torch` fails with
# "libcudart.so.13: cannot open shared object file" / "libcublasLt.so.* not
# found", because torch preloads its CUDA runtime libraries unconditionally.
# So we install the full wheel with its nvidia-*/cuda-* dependencies (~5.4 GB
# venv). torch then runs fine on CPU-only machines (cuda.is_available() is
# False).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$HERE/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.15.0}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup-torch: creating virtualenv at $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi

if "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; then
    echo "setup-torch: torch already importable ($("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))" >&2
else
    echo "setup-torch: installing torch==$TORCH_VERSION into $VENV" >&2
    "$VENV/bin/python" -m pip install --upgrade pip
    "$VENV/bin/python" -m pip install "torch==$TORCH_VERSION" numpy
fi

"$VENV/bin/python" -c 'import torch; torch.ones(2, 2).sum().item(); print("setup-torch: ok, torch", torch.__version__)'
