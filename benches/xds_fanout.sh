#!/usr/bin/env bash
# xDS fan-out: for N in 100, 1000, 5000 (or $CLIENTS), a fresh release egressd on a temp copy of
# mesh-config/, N simulated ADS clients, one policy change; prints time-to-all-ACKed and memory.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin egressd --example xds_fanout
ulimit -n 20000 2>/dev/null || true
for n in ${CLIENTS:-100 1000 5000}; do
  dir=$(mktemp -d)
  cp -r mesh-config/. "$dir/"
  ./target/release/egressd serve --policy "$dir" --grpc-listen 127.0.0.1:18200 --admin-listen 127.0.0.1:18201 >"$dir.log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do curl -fs http://127.0.0.1:18201/readyz >/dev/null 2>&1 && break; sleep 0.1; done
  ./target/release/examples/xds_fanout --target 127.0.0.1:18200 --pid $pid --gateway-file "$dir/gateway.yaml" --clients "$n" || true
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf "$dir" "$dir.log"
done
