#!/usr/bin/env bash
# End-to-end benchmark of `arrowquant quantize` (release build): throughput on a synthetic
# 2 GB model and peak resident memory on a synthetic 8 GB model, with baselines measured in the
# same run: reading the same files (cat to /dev/null) and scanning them with read_safetensors.
#
#   bash benches/end_to_end.sh [WORK_DIR]      (default: target/bench-models)
#
# Needs the release binary (cargo build --release; ARROWQUANT_BIN=PATH runs another build, to
# compare two versions) and the local venv with numpy (scripts/setup-python.sh). Prints one
# line per measurement; medians of RUNS runs.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/bench-models}
RUNS=${RUNS:-3}
BIN=${ARROWQUANT_BIN:-target/release/arrowquant}
PY=.venv/bin/python
[ -x "$BIN" ] || [ -n "${ARROWQUANT_BIN:-}" ] || cargo build --release --bin arrowquant
mkdir -p "$WORK"
[ -f "$WORK/m2/model.safetensors.index.json" ] || $PY benches/make_synthetic_model.py 2 "$WORK/m2"
[ -f "$WORK/m8/model.safetensors.index.json" ] || $PY benches/make_synthetic_model.py 8 "$WORK/m8"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
seconds() { # wall seconds of a command
    local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
bytes=$(cat "$WORK"/m2/*.safetensors | wc -c)
gb=$(echo "$bytes / 1000000000" | bc -l)
printf 'model: %s, %.3f GB of safetensors; %s runs each; %s\n' "$WORK/m2" "$gb" "$RUNS" "$(nproc) cores"

read_t=$(for _ in $(seq "$RUNS"); do seconds sh -c "cat $WORK/m2/*.safetensors > /dev/null"; done | median)
# The scan touches every value (array_max), as the quantizer does.
scan_t=$(for _ in $(seq "$RUNS"); do seconds $BIN sql -q -c "SELECT sum(array_max(weights)) FROM read_safetensors('$WORK/m2')"; done | median)
quant_t=$(for _ in $(seq "$RUNS"); do seconds $BIN quantize "$WORK/m2" -o "$WORK/out2" --force --quiet --json; done | median)
printf 'read files (cat):                    %7.3f s  %6.2f GB/s\n' "$read_t" "$(echo "$gb / $read_t" | bc -l)"
printf 'scan (read_safetensors, array_max): %7.3f s  %6.2f GB/s\n' "$scan_t" "$(echo "$gb / $scan_t" | bc -l)"
printf 'quantize, local profile:             %7.3f s  %6.2f GB/s  (%.1fx the scan time)\n' "$quant_t" \
    "$(echo "$gb / $quant_t" | bc -l)" "$(echo "$quant_t / $scan_t" | bc -l)"

bytes8=$(cat "$WORK"/m8/*.safetensors | wc -c)
/usr/bin/time -v $BIN quantize "$WORK/m8" -o "$WORK/out8" --force --quiet --json > /dev/null 2> "$WORK/time8.txt"
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time8.txt")
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/time8.txt")
printf 'quantize 8 GB model (%.2f GB): peak RSS %.0f MB, wall %s\n' \
    "$(echo "$bytes8 / 1000000000" | bc -l)" "$(echo "$rss_kb / 1024" | bc -l)" "$wall"
