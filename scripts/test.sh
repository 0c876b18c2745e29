#!/usr/bin/env bash
# Runs every check and test: formatting and lints (Rust and Python), the Rust test suite (unit,
# property, kernel quality, sqllogictest, CLI and pipeline), then the Python package built in the
# dev profile into .venv and its pytest suite (the server's Flight SQL and HTTP clients among
# them), the deployment files' checks (scripts/check_deploy.sh), and the llama.cpp runtime check
# (scripts/llama_check.sh: builds llama-cpp-python into .venv-llama on first use). Usage:
# scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== rustfmt --check (every tracked .rs file)"
scripts/fmt.sh --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo test"
cargo test --workspace 2>&1 | tee -a "$log"

echo "== fuzz: a short run of every fuzz target"
scripts/fuzz.sh -t 20

echo "== python: .venv, ruff, the extension (dev profile), pytest"
scripts/build-python.sh
.venv/bin/ruff check python/ examples/ scripts/ benches/
.venv/bin/ruff format --check python/ examples/ scripts/ benches/
.venv/bin/python -m pytest -q python/tests 2>&1 | tee -a "$log"

echo "== deploy: the Dockerfile, the Kubernetes manifests and the dashboard against the server"
ARROWQUANT_BIN=target/debug/arrowquant scripts/check_deploy.sh

echo "== llama.cpp: ArrowQuant's GGUF files of a real checkpoint load, run, and beat llama.cpp's own"
scripts/llama_check.sh

# One closing line for the whole suite, summed over every test binary and pytest.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     /^[0-9]+ (passed|failed)/ && / in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed,?$/) p += $(i-1); if ($i ~ /^failed,?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
