#!/usr/bin/env bash
# Creates the local virtual environment (.venv) with the Python packages the repository uses:
# numpy, safetensors and pyarrow (the example model, calibration set and benchmark models),
# gguf (the GGUF reference vectors and the live comparison), datafusion 55 (the Python sessions
# the package registers into), maturin (builds the package), pytest and ruff, and nbclient,
# ipykernel and matplotlib (the notebook, executed by the tests), and the server's clients:
# the ADBC Flight SQL driver and prometheus-client's text parser.
# Idempotent: a second run only checks the pins.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
fi
.venv/bin/pip install --quiet \
  "numpy>=2,<3" "safetensors>=0.8,<0.9" "pyarrow>=17" "gguf==0.19.0" \
  "datafusion>=55,<56" "maturin>=1.9,<2" "pytest>=8" "ruff>=0.6" \
  "nbclient>=0.10" "nbformat>=5.10" "ipykernel>=6.29" "matplotlib>=3.8" \
  "adbc-driver-flightsql>=1.8,<2" "adbc-driver-manager>=1.8,<2" "prometheus-client>=0.20,<1"
echo ".venv ready: $(.venv/bin/python --version)"
