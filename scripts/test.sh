#!/usr/bin/env bash
# Runs every check and test: formatting, lints, and the whole test suite (unit, property,
# kernel quality and sqllogictest files). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace
