#!/usr/bin/env bash
# What the live flow table costs the Check path: egressd with the table (the default) against
# egressd with `--flow-table-size 0`, each in its own process, the same load, rounds interleaved,
# medians; answers decoded; server CPU per check from /proc. Neither has spans or an audit log,
# so the table is all that differs.
# Usage: [ROUNDS=6] [DURATION=5] [CASES="mix get-allow"] bash benches/flow_table_load.sh [extra check_load args]
set -euo pipefail
rounds=${ROUNDS:-6}
duration=${DURATION:-5}
cases=${CASES:-"mix get-allow"}
cd "$(dirname "$0")/.."
cargo build --release --bin egressd --example check_load
bin=./target/release/egressd
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
start() { # name grpc admin args...
  local name=$1 grpc=$2 admin=$3; shift 3
  "$bin" serve --grpc-listen "$grpc" --admin-listen "$admin" --no-detect "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -fs "http://$admin/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$name did not start"; cat "$tmp/$name.log"; exit 1
}
start off 127.0.0.1:18120 127.0.0.1:18121 --flow-table-size 0
off_pid=${pids[-1]}
start flows 127.0.0.1:18122 127.0.0.1:18123
flows_pid=${pids[-1]}
for case in $cases; do
  echo "== $case: flow table on vs off (closed loop, 32 in flight, 4 connections)"
  ./target/release/examples/check_load --target 127.0.0.1:18122 --name flows --target-pid "$flows_pid" \
    --baseline 127.0.0.1:18120 --baseline-name off --baseline-pid "$off_pid" --case "$case" --concurrency 32 --connections 4 --duration "$duration" --rounds "$rounds" "$@"
done
echo "== flows kept: $(curl -fs http://127.0.0.1:18123/flows | head -c 120)..."
