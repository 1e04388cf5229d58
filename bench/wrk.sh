#!/usr/bin/env bash
# The same Hearth workloads as hearth-bench, driven by wrk (a lean C load generator,
# `apt-get install wrk`), so less of the 2 cores goes to generating load. Prints one
# markdown row per phase. Usage: bench/wrk.sh [seconds per phase, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install wrk" >&2; exit 1; }
cargo build --release -p hearth-server -p hearth-bench >&2

dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
printf '[[indexes]]\ncollection = "items"\nfields = ["owner", "score desc"]\n' > "$dir/hearth.toml"
export BENCH_KEY=hk_bench_0123456789abcdefghijklmnopqrstuvwxyz
HEARTH_SERVICE_KEY=$BENCH_KEY RUST_LOG=info,tower_http=off \
  target/release/hearth serve --dir "$dir" --addr 127.0.0.1:0 > "$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$dir/log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$dir/log" | head -1)

row() { # name, wrk output
  local rps p50 p99
  rps=$(grep -o 'Requests/sec: *[0-9.]*' <<<"$2" | grep -o '[0-9.]*$')
  p50=$(awk '$1=="50%"{print $2}' <<<"$2")
  p99=$(awk '$1=="99%"{print $2}' <<<"$2")
  local non2xx
  non2xx=$(grep -o 'Non-2xx or 3xx responses: *[0-9]*' <<<"$2" | grep -o '[0-9]*$' || true)
  echo "| $1 | $rps | $p50 | $p99 | ${non2xx:-0} |"
}

echo "| phase (wrk, 1 thread) | req/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
for c in 1 16 64; do
  row "create c=$c" "$(wrk -t1 -c$c -d${seconds}s --latency -s bench/wrk/create.lua "$url")"
done
target/release/hearth-bench seed "${url#http://}" 100000 >&2
sleep 5 # let the checkpointer fold the bulk load into the database file
for c in 16 64; do
  row "get by id c=$c" "$(wrk -t1 -c$c -d${seconds}s --latency -s bench/wrk/get.lua "$url")"
done
for c in 16 64; do
  row "indexed query, 20 of 100,000, c=$c" "$(wrk -t1 -c$c -d${seconds}s --latency -s bench/wrk/query.lua "$url")"
done
