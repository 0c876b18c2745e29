#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of every parser of untrusted bytes: the fuzz/
# workspace (safetensors header, GGUF header, imatrix file, model folders, calibration file, stored quantized row, the
# aggregate's sketch state, configuration; it builds without DataFusion, in minutes). Builds it,
# then runs each target in turn, one process at a time, from its seeds in fuzz/corpus/TARGET/
# (read only: new inputs go to a scratch folder). Exits non-zero when a target crashes, panics,
# overflows, times out or runs out of memory; the input that did it is in
# fuzz/artifacts/TARGET/.
#
# Usage: scripts/fuzz.sh [-t SECONDS | -n RUNS] [-l BYTES] [TARGET...]
#   -t SECONDS  run each target this long (default 60)
#   -n RUNS     run each target for this many executions instead
#   -l BYTES    longest input to try (libFuzzer's -max_len; default: libFuzzer's choice)
#   TARGET      only these targets (default: every target)
# Environment: FUZZ_TARGET_DIR (build folder, default fuzz/target), FUZZ_SANITIZER (address or
# none; default address), FUZZ_CORPUS_OUT (keep the inputs the runs found there, a folder per
# target), FUZZ_ARGS (more libFuzzer flags, e.g. "-entropic=0 -reduce_inputs=0").
set -euo pipefail
cd "$(dirname "$0")/.."

limit=(-max_total_time=60)
max_len=()
while getopts "t:n:l:" opt; do
    case $opt in
    t) limit=(-max_total_time="$OPTARG") ;;
    n) limit=(-runs="$OPTARG") ;;
    l) max_len=(-max_len="$OPTARG") ;;
    *)
        sed -n '2,/^set /p' "$0" | sed '$d' >&2
        exit 2
        ;;
    esac
done
shift $((OPTIND - 1))
wanted=" $* "

# cargo-fuzz builds with the -Z flags of the sanitizers and of coverage instrumentation; the
# stable compiler accepts them with RUSTC_BOOTSTRAP (there is no nightly toolchain here).
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "== cargo install cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

# The targets that write files (a model folder, a Parquet file) write them here, on tmpfs when
# there is one: a write per execution to a disk costs more than the parser.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    scratch=$(mktemp -d /dev/shm/arrowquant-fuzz.XXXXXX)
else
    scratch=$(mktemp -d)
fi
trap 'rm -rf "$scratch"' EXIT
export ARROWQUANT_FUZZ_TMP="$scratch"

failed=()
count=0
dir=fuzz
# Release with debug assertions and overflow checks: an overflow is a crash, as in tests.
flags=(--fuzz-dir "$dir" -O -a --sanitizer "${FUZZ_SANITIZER:-address}"
    --target-dir "${FUZZ_TARGET_DIR:-$PWD/fuzz/target}")
echo "== cargo fuzz build"
start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz: built in $(($(date +%s) - start)) s"
for target in $(cargo fuzz list --fuzz-dir "$dir"); do
    if [ "$wanted" != "  " ] && [[ $wanted != *" $target "* ]]; then
        continue
    fi
    count=$((count + 1))
    echo "== fuzz $target ${limit[*]}"
    corpus="$scratch/corpus-$target"
    if [ -n "${FUZZ_CORPUS_OUT:-}" ]; then
        corpus="$FUZZ_CORPUS_OUT/$target"
    fi
    mkdir -p "$corpus" "$dir/corpus/$target"
    log="$scratch/$target.log"
    start=$(date +%s)
    # -timeout: an input taking longer is a hang. -malloc_limit_mb: one allocation of
    # more than 512 MB, from an input of a few KB, is sized by an untrusted number. No -jobs or -workers: one process, one core.
    if cargo fuzz run "${flags[@]}" "$target" "$corpus" "$PWD/$dir/corpus/$target" -- \
        "${limit[@]}" ${max_len[@]+"${max_len[@]}"} ${FUZZ_ARGS:-} -timeout=30 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 > "$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
        tail -n 60 "$log"
    fi
    seconds=$(($(date +%s) - start))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "fuzz: $target $status: ${runs:-?} executions in $seconds s" \
        "($((${runs:-0} / (seconds > 0 ? seconds : 1))) a second)"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
if [ "$count" -eq 0 ]; then
    echo "fuzz: no target matched: $*" >&2
    exit 2
fi
echo "fuzz: $count targets clean"
