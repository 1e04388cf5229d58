#!/usr/bin/env bash
# The whole test suite: every Rust test (the store's PostgreSQL tests among them), then
# the end-to-end suite again with the server on PostgreSQL, each test on a fresh database
# of the server HEARTH_TEST_DATABASE_URL names (default: the local one, trust auth).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Rust, SQLite backend"
cargo test --workspace "$@"
echo "== end-to-end, PostgreSQL backend"
HEARTH_TEST_BACKEND=postgres cargo test -p hearth-server --test e2e "$@"
