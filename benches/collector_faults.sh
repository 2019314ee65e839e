#!/usr/bin/env bash
# Check throughput while the OTLP collector is stalled (accepts connections, never answers) and
# while it is down (connection refused), each against egressd with telemetry off; every decision
# sampled, 64 in flight, rounds interleaved, medians, answers decoded; then what was dropped.
# Usage: [ROUNDS=4] [DURATION=4] bash benches/collector_faults.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin egressd --example check_load
bin=./target/release/egressd; load=./target/release/examples/check_load
# A collector that accepts connections and never reads or answers: the h2 handshake never completes.
python3 -c '
import socket,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1",18195)); s.listen(64)
conns=[]
while True:
    c,_=s.accept(); conns.append(c)
' &
spy=$!
env -u OTEL_EXPORTER_OTLP_ENDPOINT $bin serve --grpc-listen 127.0.0.1:18100 --admin-listen 127.0.0.1:18101 --flow-table-size 0 --no-detect > /tmp/off.log 2>&1 &
opid=$!
env -u OTEL_EXPORTER_OTLP_ENDPOINT $bin serve --grpc-listen 127.0.0.1:18102 --admin-listen 127.0.0.1:18103 --flow-table-size 0 --no-detect --otlp-endpoint http://127.0.0.1:18195 --traces-sampler always_on > /tmp/st.log 2>&1 &
spid=$!
env -u OTEL_EXPORTER_OTLP_ENDPOINT $bin serve --grpc-listen 127.0.0.1:18104 --admin-listen 127.0.0.1:18105 --flow-table-size 0 --no-detect --otlp-endpoint http://127.0.0.1:18196 --traces-sampler always_on > /tmp/down.log 2>&1 &
dpid=$!
trap 'kill $spy $spid $opid $dpid 2>/dev/null' EXIT
for a in 18101 18103 18105; do for _ in $(seq 100); do curl -fs "http://127.0.0.1:$a/readyz" >/dev/null 2>&1 && break; sleep 0.1; done; done
echo "== collector stalled (accepts, never answers) vs telemetry off"
$load --target 127.0.0.1:18102 --name stalled --baseline 127.0.0.1:18100 --baseline-name off --concurrency 64 --duration ${DURATION:-4} --rounds ${ROUNDS:-4} | tail -3
echo "== collector down (connection refused) vs telemetry off"
$load --target 127.0.0.1:18104 --name down --baseline 127.0.0.1:18100 --baseline-name off --concurrency 64 --duration ${DURATION:-4} --rounds ${ROUNDS:-4} | tail -3
for a in 18103 18105; do curl -fs "http://127.0.0.1:$a/metrics" | grep -E '^egressd_spans_(exported|dropped)'; done
