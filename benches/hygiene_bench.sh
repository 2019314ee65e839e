#!/usr/bin/env bash
# Policy hygiene at scale: `egressd lint` and `egressd report stale` on a generated policy of
# SERVICES services (six allows each, ~60,000 rules for 10,000) and an audit log of RECORDS
# decisions against it; wall time and peak RSS per run, one core (taskset).
# Usage: [SERVICES=10000] [RECORDS=1000000] [RUNS=3] bash benches/hygiene_bench.sh
set -euo pipefail
services=${SERVICES:-10000}
records=${RECORDS:-1000000}
runs=${RUNS:-3}
cd "$(dirname "$0")/.."
cargo build --release --bin egressd --example gen_mesh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./target/release/examples/gen_mesh "$services" "$records" "$tmp"
echo "policy: $services services; audit log: $records records, $(du -m "$tmp/audit.log" | cut -f1) MiB"
cat "$tmp/audit.log" >/dev/null # page cache warm: the disk is not what is measured
measure() { # name command...
  local name=$1; shift
  for run in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$tmp/time" taskset -c 0 "$@" >"$tmp/out" 2>"$tmp/err" || true
    read -r secs kib <"$tmp/time"
    printf '%-6s run %d: %6.2f s  peak RSS %6.1f MiB\n' "$name" "$run" "$secs" "$(echo "$kib / 1024" | bc -l)"
  done
  tail -n 3 "$tmp/out" | cut -c1-160 | sed "s/^/       | /"
}
measure lint ./target/release/egressd lint "$tmp/policy"
measure stale ./target/release/egressd report stale --policy "$tmp/policy" --audit-log "$tmp/audit.log"
grep -m1 "egressd: read" "$tmp/err" || true
