#!/usr/bin/env bash
# Creates, gets and indexed lists with wrk on the PostgreSQL backend (one node, then two
# nodes on one database) beside the SQLite backend, in one run, with pgbench inserting the
# same ~1 KB JSONB rows as the floor. Prints markdown rows.
# Needs: wrk, pgbench, a PostgreSQL at $PG (default the local one, trust auth).
# Usage: bench/postgres.sh [seconds per phase, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
cargo build --release -p hearth-server -p hearth-bench >&2
export BENCH_KEY=hk_bench_0123456789abcdefghijklmnopqrstuvwxyz
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

fresh_db() { psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" && psql "$PG/postgres" -qc "CREATE DATABASE $1"; }

start() { # dir, [database url]: prints the node's URL
  local dir=$1
  mkdir -p "$dir"
  printf '[[indexes]]\ncollection = "items"\nfields = ["owner", "score desc"]\n' > "$dir/hearth.toml"
  env HEARTH_SERVICE_KEY=$BENCH_KEY RUST_LOG=info,tower_http=off ${2:+HEARTH_DATABASE_URL=$2} \
    target/release/hearth serve --dir "$dir" --addr 127.0.0.1:0 > "$dir/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do grep -q "listening on" "$dir/log" && break; sleep 0.1; done
  grep -o 'http://[0-9.:]*' "$dir/log" | head -1
}

row() { # name, wrk outputs...: requests/s summed over the outputs, p50/p99 of the first
  local name=$1 rps=0 first=$2
  shift
  for out in "$@"; do
    rps=$(awk -v a="$rps" -v b="$(grep -o 'Requests/sec: *[0-9.]*' <<<"$out" | grep -o '[0-9.]*$')" 'BEGIN{print a+b}')
  done
  echo "| $name | $rps | $(awk '$1=="50%"{print $2}' <<<"$first") | $(awk '$1=="99%"{print $2}' <<<"$first") |"
}

run() { # label, script, connections (split over the nodes), urls...
  local label=$1 script=$2 c=$3
  shift 3
  local i=0 waiting=() texts=()
  for url in "$@"; do
    wrk -t1 -c$((c / $#)) -d"${seconds}s" --latency -s "bench/wrk/$script.lua" "$url" > "$work/wrk.$i" 2>&1 &
    waiting+=($!)
    i=$((i + 1))
  done
  for pid in "${waiting[@]}"; do wait "$pid"; done
  for j in $(seq 0 $((i - 1))); do texts+=("$(cat "$work/wrk.$j")"); done
  row "$label" "${texts[@]}"
}

echo "| phase (wrk, c=64 in all) | req/s | p50 | p99 |"
echo "|---|---|---|---|"

# The floor: pgbench inserting the same document as a JSONB row, synchronous_commit on.
fresh_db hearth_bench_floor
psql "$PG/hearth_bench_floor" -qc "CREATE TABLE docs (path TEXT PRIMARY KEY, data JSONB NOT NULL)"
body=$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" bench/wrk/create.lua)
printf "\\\\set n random(1, 2000000000)\nINSERT INTO docs VALUES ('creates/' || :client_id || '-' || :n || '-' || random(), '%s'::jsonb);\n" "$body" > "$work/floor.sql"
floor=$(pgbench -n -c 64 -j 2 -T "$seconds" -f "$work/floor.sql" "$PG/hearth_bench_floor" 2>&1)
echo "| pgbench floor: INSERT of the 1 KB JSONB row | $(grep -o 'tps = [0-9.]*' <<<"$floor" | head -1 | grep -o '[0-9.]*$') | | |"

for setup in sqlite postgres-1 postgres-2; do
  urls=()
  case $setup in
    sqlite) urls+=("$(start "$work/sqlite")") ;;
    postgres-1) fresh_db hearth_bench; urls+=("$(start "$work/pg1" "$PG/hearth_bench")") ;;
    postgres-2)
      fresh_db hearth_bench
      urls+=("$(start "$work/pg2a" "$PG/hearth_bench")")
      mkdir -p "$work/pg2b" && cp "$work/pg2a/hearth.key" "$work/pg2b/"
      urls+=("$(start "$work/pg2b" "$PG/hearth_bench")") ;;
  esac
  run "$setup: create" create 64 "${urls[@]}"
  target/release/hearth-bench seed "${urls[0]#http://}" 100000 >&2
  sleep 3
  run "$setup: get by id" get 64 "${urls[@]}"
  run "$setup: indexed query, 20 of 100,000" query 64 "${urls[@]}"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  pids=()
  sleep 1
done
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS hearth_bench WITH (FORCE)"
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS hearth_bench_floor WITH (FORCE)"
