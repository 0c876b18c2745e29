#!/usr/bin/env bash
# Scan speed of read_gguf against read_safetensors over the same tensors: the synthetic 2 GB
# model of benches/end_to_end.sh, written once more as an F32 GGUF file by gguf-py
# (benches/safetensors_to_gguf.py), both scanned touching every value (array_max), runs
# alternated, medians of RUNS. Target: read_gguf within 1.5x of read_safetensors.
#
#   bash benches/gguf_scan.sh [WORK_DIR]      (default: target/bench-models)
#
# Needs the release binary (cargo build --release; ARROWQUANT_BIN=PATH runs another build) and
# the local venv (scripts/setup-python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/bench-models}
RUNS=${RUNS:-5}
BIN=${ARROWQUANT_BIN:-target/release/arrowquant}
PY=.venv/bin/python
[ -x "$BIN" ] || [ -n "${ARROWQUANT_BIN:-}" ] || cargo build --release --bin arrowquant
mkdir -p "$WORK"
[ -f "$WORK/m2/model.safetensors.index.json" ] || $PY benches/make_synthetic_model.py 2 "$WORK/m2"
[ -f "$WORK/m2.gguf" ] || $PY benches/safetensors_to_gguf.py "$WORK/m2" "$WORK/m2.gguf"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
seconds() {
    local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
st=() gg=()
for _ in $(seq "$RUNS"); do
    st+=("$(seconds $BIN sql -q -c "SELECT sum(array_max(weights)) FROM read_safetensors('$WORK/m2')")")
    gg+=("$(seconds $BIN sql -q -c "SELECT sum(array_max(weights)) FROM read_gguf('$WORK/m2.gguf')")")
done
st_t=$(printf '%s\n' "${st[@]}" | median)
gg_t=$(printf '%s\n' "${gg[@]}" | median)
gb=$(echo "$(stat -c %s "$WORK/m2.gguf") / 1000000000" | bc -l)
printf 'model: %s as F32 GGUF, %.3f GB; %s runs each, alternated; %s cores\n' "$WORK/m2" "$gb" "$RUNS" "$(nproc)"
printf 'scan read_safetensors (array_max): %7.3f s  %6.2f GB/s\n' "$st_t" "$(echo "$gb / $st_t" | bc -l)"
printf 'scan read_gguf (array_max):        %7.3f s  %6.2f GB/s  (%.2fx read_safetensors)\n' \
    "$gg_t" "$(echo "$gb / $gg_t" | bc -l)" "$(echo "$gg_t / $st_t" | bc -l)"
