#!/usr/bin/env bash
# Formats every tracked Rust file, or checks it with --check. `cargo fmt` alone skips the SQL
# function files: udfs/src/lib.rs declares them inside its `functions!` macro, and rustfmt does
# not follow module declarations in macros. Usage: scripts/fmt.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.rs')
cargo fmt --all -- "$@"
rustfmt --edition 2024 "$@" "${files[@]}"
