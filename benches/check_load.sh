#!/usr/bin/env bash
# The Check load comparison: egressd (release) versus a no-op Check server, each in its own
# process, the same load, rounds interleaved A B A B, medians; the client decodes every answer as
# Envoy does. One run per Check path (`CASES`), closed loop (max throughput) and at a fixed rate
# (latency).
# Usage: [ROUNDS=4] [DURATION=5] [RATE=5000] [CASES="get-allow connect-verified ..."]
#        bash benches/check_load.sh [extra check_load args]
set -euo pipefail
rounds=${ROUNDS:-4}
duration=${DURATION:-5}
rate=${RATE:-5000}
cases=${CASES:-"get-allow connect-verified network-allow deny deny-rule mix"}
cd "$(dirname "$0")/.."
cargo build --release --bin egressd --example check_load
grpc=127.0.0.1:18100
admin=127.0.0.1:18101
./target/release/egressd serve --grpc-listen "$grpc" --admin-listen "$admin" >/tmp/egressd-bench.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs "http://$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
for case in $cases; do
    echo "== $case: max throughput (closed loop, 32 in flight, 4 connections)"
    ./target/release/examples/check_load --target "$grpc" --noop --case "$case" --concurrency 32 --connections 4 \
        --duration "$duration" --rounds "$rounds" "$@"
    echo "== $case: fixed rate $rate checks/s"
    ./target/release/examples/check_load --target "$grpc" --noop --case "$case" --concurrency 32 --connections 4 \
        --rate "$rate" --duration "$duration" --rounds "$rounds" "$@"
done
