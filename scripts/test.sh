#!/usr/bin/env bash
# The whole test suite: every Rust test (the store's PostgreSQL tests among them), then
# the end-to-end suite again with the server on PostgreSQL, each test on a fresh database
# of the server HEARTH_TEST_DATABASE_URL names (default: the local one, trust auth); then
# the JavaScript client: lint and types, unit tests, tests in Node against the real
# binary, and tests in headless Chromium (Debian's `chromium`, or CHROMIUM=path).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Rust, SQLite backend"
cargo test --workspace "$@"
echo "== end-to-end, PostgreSQL backend"
HEARTH_TEST_BACKEND=postgres cargo test -p hearth-server --test e2e "$@"

echo "== JavaScript client (sdk-js)"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    echo "no Chromium at ${CHROMIUM:-/usr/bin/chromium}: install Debian's (apt-get install -y chromium) or set CHROMIUM" >&2
    exit 1
fi
# `cargo test` built target/debug/hearth for the end-to-end suites; the JS tests use it.
[ -x target/debug/hearth ] || cargo build -p hearth-server
cd sdk-js
npm ci --no-audit --no-fund
npm run lint
npm test
