#!/usr/bin/env bash
# Builds the arrow_quant_v2 extension into .venv (dev profile by default; PROFILE=release for
# benchmarks). Usage: scripts/build-python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh
profile=${PROFILE:-dev}
VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" \
  .venv/bin/maturin develop --quiet --manifest-path python/Cargo.toml --profile "$profile"
