#!/usr/bin/env bash
# What the detectors cost the Check path: egressd with detection (the default) against egressd
# with `--no-detect`, each in its own process, the same load, rounds interleaved, medians; answers
# decoded; server CPU per check from /proc. Twice: with the audit log on in both (decisions are
# queued to the telemetry thread anyway; the detectors are all that differs), and with neither
# audit log nor spans (detection is then what queues decisions at all). The flow table is on in
# all four, as by default.
# Usage: [ROUNDS=6] [DURATION=5] [CASES="mix get-allow"] bash benches/detect_load.sh [extra check_load args]
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
  env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
    "$bin" serve --grpc-listen "$grpc" --admin-listen "$admin" "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -fs "http://$admin/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "$name did not start"; cat "$tmp/$name.log"; exit 1
}
run() { # label target target-pid baseline baseline-pid
  for case in $cases; do
    echo "== $case: $1 (closed loop, 32 in flight, 4 connections)"
    ./target/release/examples/check_load --target "$2" --name detect --target-pid "$3" \
      --baseline "$4" --baseline-name no-detect --baseline-pid "$5" --case "$case" --concurrency 32 --connections 4 \
      --duration "$duration" --rounds "$rounds" "${extra[@]}"
  done
}
extra=("$@")
start audit-detect 127.0.0.1:18130 127.0.0.1:18131 --audit-log "$tmp/a.log" --audit-fsync never
a_on=${pids[-1]}
start audit-off 127.0.0.1:18132 127.0.0.1:18133 --audit-log "$tmp/b.log" --audit-fsync never --no-detect
a_off=${pids[-1]}
run "audit log on in both: detection on vs off" 127.0.0.1:18130 "$a_on" 127.0.0.1:18132 "$a_off"
kill "$a_on" "$a_off"
start detect 127.0.0.1:18134 127.0.0.1:18135
d_on=${pids[-1]}
start off 127.0.0.1:18136 127.0.0.1:18137 --no-detect
d_off=${pids[-1]}
run "no audit log, no spans: detection on vs off" 127.0.0.1:18134 "$d_on" 127.0.0.1:18136 "$d_off"
echo "== detector state: $(curl -fs http://127.0.0.1:18135/signals | head -c 300)"
