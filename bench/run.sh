#!/usr/bin/env bash
# Builds Hearth and the benchmark in release, then runs it. Extra args go to the bench
# (`--quick` for a short run).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p hearth-server -p hearth-bench
exec target/release/hearth-bench "$@"
