#!/usr/bin/env bash
# One command for the Check load comparison: egressd (release) versus a no-op Check server, both in
# their own process, same load, rounds interleaved.
# Usage: [ROUNDS=4] [DURATION=5] [RATE=5000] bash benches/check_load.sh [extra check_load args]
set -euo pipefail
rounds=${ROUNDS:-4}
duration=${DURATION:-5}
rate=${RATE:-5000}
cd "$(dirname "$0")/.."
cargo build --release --bin egressd --example check_load
grpc=127.0.0.1:18100
admin=127.0.0.1:18101
./target/release/egressd serve --grpc-listen "$grpc" --admin-listen "$admin" >/tmp/egressd-bench.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -fs "http://$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
echo "== max throughput (closed loop)"
./target/release/examples/check_load --target "$grpc" --noop --concurrency 64 --duration "$duration" --rounds "$rounds" "$@"
echo "== fixed rate $rate checks/s"
./target/release/examples/check_load --target "$grpc" --noop --concurrency 32 --rate "$rate" --duration "$duration" --rounds "$rounds" "$@"
