#!/usr/bin/env bash
# Creates the Python environment of the tests that check Kiln's output with outside tools
# (onnxruntime, transformers, safetensors, torch, tensorboard) in target/pyenv, from PyPI. The tests find it there (or at $KILN_PYTHON). The environment is
# made from $KILN_BASE_PYTHON, default python3 (tests/run.sh passes Debian's /usr/bin/python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
env_dir=target/pyenv
if [ ! -x "$env_dir/bin/python" ]; then
    "${KILN_BASE_PYTHON:-python3}" -m venv "$env_dir"
fi
"$env_dir/bin/pip" install --quiet --upgrade pip
"$env_dir/bin/pip" install --quiet -r tests/python/requirements.txt
"$env_dir/bin/python" -c "import onnxruntime, transformers, safetensors, torch, tensorboard; print('test environment:', 'onnxruntime', onnxruntime.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__, 'tensorboard', tensorboard.__version__)"

# MLflow's tracking server for tests/tracking/mlflow.rs, in an environment of its own
# (target/mlflow-env): its pins stay apart from the export tests' packages.
mlflow_dir=target/mlflow-env
if [ ! -x "$mlflow_dir/bin/python" ]; then
    "${KILN_BASE_PYTHON:-python3}" -m venv "$mlflow_dir"
fi
"$mlflow_dir/bin/pip" install --quiet --upgrade pip
"$mlflow_dir/bin/pip" install --quiet -r tests/python/requirements-mlflow.txt
"$mlflow_dir/bin/mlflow" --version
