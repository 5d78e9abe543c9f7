#!/usr/bin/env bash
# Creates the Python environment of the export tests (onnxruntime, transformers, safetensors)
# in target/pyenv, from PyPI. The tests find it there (or at $KILN_PYTHON). The environment is
# made from $KILN_BASE_PYTHON, default python3 (tests/run.sh passes Debian's /usr/bin/python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
env_dir=target/pyenv
if [ ! -x "$env_dir/bin/python" ]; then
    "${KILN_BASE_PYTHON:-python3}" -m venv "$env_dir"
fi
"$env_dir/bin/pip" install --quiet --upgrade pip
"$env_dir/bin/pip" install --quiet -r tests/python/requirements.txt
"$env_dir/bin/python" -c "import onnxruntime, transformers, safetensors, torch; print('export test environment:', 'onnxruntime', onnxruntime.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
