#!/usr/bin/env bash
# One command for the cost of telemetry on the Check path: the same load against egressd without
# telemetry (baseline), with every decision exported as a span to a local OTLP collector, and with
# the audit log on, each in its own process; rounds interleaved (target, baseline, target, ...).
# The live flow table is off in all of them (benches/flow_table_load.sh measures it).
# The collector decodes every export (COLLECTOR_DECODE=wire, default: every field of the wire format
# checked, no messages built; =messages: prost into the generated OTLP types, ~6 us a span here).
# Usage: [ROUNDS=6] [DURATION=5] [COLLECTOR_DECODE=wire|messages] bash benches/telemetry_load.sh [extra check_load args]
set -euo pipefail
rounds=${ROUNDS:-6}
duration=${DURATION:-5}
cd "$(dirname "$0")/.."
cargo build --release --bin egressd --example check_load
bin=./target/release/egressd
load=./target/release/examples/check_load
tmp=$(mktemp -d)
pids=()
declare -A pid_of
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
start() { # name grpc admin args...
  local name=$1 grpc=$2 admin=$3; shift 3
  env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
    "$bin" serve --grpc-listen "$grpc" --admin-listen "$admin" --flow-table-size 0 --no-detect "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  pid_of[$name]=$!
  for _ in $(seq 100); do curl -fs "http://$admin/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$name did not start"; cat "$tmp/$name.log"; exit 1
}
echo "collector decoding: ${COLLECTOR_DECODE:-wire}"
"$load" --serve-collector 127.0.0.1:18190 --collector-decode "${COLLECTOR_DECODE:-wire}" 2>"$tmp/collector.log" &
pids+=($!)
start off   127.0.0.1:18100 127.0.0.1:18101
otlp=(--otlp-endpoint http://127.0.0.1:18190)
start spans-all  127.0.0.1:18102 127.0.0.1:18103 "${otlp[@]}" --traces-sampler always_on
start spans-1pct 127.0.0.1:18104 127.0.0.1:18105 "${otlp[@]}" --traces-sampler traceidratio --traces-sampler-arg 0.01
start spans-1pct-all 127.0.0.1:18106 127.0.0.1:18107 "${otlp[@]}" --traces-sampler traceidratio \
  --traces-sampler-arg 0.01 --sample-denies
start audit 127.0.0.1:18108 127.0.0.1:18109 --audit-log "$tmp/audit.jsonl"
compare() { # name grpc description
  echo "== $1 vs telemetry off: $3"
  "$load" --target "$2" --name "$1" --baseline 127.0.0.1:18100 --baseline-name off \
    --target-pid "${pid_of[$1]}" --baseline-pid "${pid_of[off]}" --concurrency 64 --duration "$duration" --rounds "$rounds" "${extra[@]}"
}
extra=("$@")
compare spans-all 127.0.0.1:18102 "every decision exported as a span"
compare spans-1pct 127.0.0.1:18104 "allows sampled at 1%, denies and would-denies always exported"
compare spans-1pct-all 127.0.0.1:18106 "1% of all decisions exported (--sample-denies)"
compare audit 127.0.0.1:18108 "audit log, fsync per batch"
echo "== what was kept and lost"
for admin in 18103 18105 18107 18109; do
  curl -fs "http://127.0.0.1:$admin/metrics" | grep -E '^egressd_(spans_(exported|dropped)|audit_records_(written|dropped))' || true
done
tail -n 1 "$tmp/collector.log" || true
