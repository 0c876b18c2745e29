#!/usr/bin/env bash
# Creates the local virtual environment (.venv) with the Python packages the repository's
# scripts use: numpy and safetensors (examples/make_example_model.py, the benchmark's synthetic
# models), pyarrow (examples/make_weights.py) and gguf (scripts/make_gguf_vectors.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet "numpy>=2,<3" "safetensors>=0.8,<0.9" "pyarrow>=17" "gguf==0.19.0"
echo ".venv ready: $(.venv/bin/python --version)"
