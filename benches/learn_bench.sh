#!/usr/bin/env bash
# Replay and learn over a generated audit log: records per second and peak RSS, on one core
# (taskset), for `discover` (read + replay) and `learn --diff` (read + replay + propose + diff).
# HOSTS: destinations per subject (100: ~7,500 flows, a busy gateway's month; 2000: ~90,000).
# Usage: [RECORDS=1000000] [HOSTS=100] [RUNS=3] bash benches/learn_bench.sh
set -euo pipefail
records=${RECORDS:-1000000}
runs=${RUNS:-3}
hosts=${HOSTS:-100}
cd "$(dirname "$0")/.."
cargo build --release --bin egressd --example gen_audit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./target/release/examples/gen_audit "$records" "$tmp/audit.log" "$hosts"
echo "audit log: $records records, $(du -m "$tmp/audit.log" | cut -f1) MiB"
mkdir "$tmp/policy" && cp -r mesh-config/. "$tmp/policy/"
cat "$tmp/audit.log" >/dev/null # page cache warm: the disk is not what is measured
# The machine's speed in this run, to compare runs of other days by: the same file's lines counted
# on the same core (this VM's absolute times drift by up to 1.5x).
/usr/bin/time -f "%e" -o "$tmp/time" taskset -c 0 wc -l "$tmp/audit.log" >/dev/null
echo "reference: wc -l of the log on the same core: $(cat "$tmp/time") s"
measure() { # name command...
  local name=$1; shift
  for run in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$tmp/time" taskset -c 0 "$@" >"$tmp/out" 2>"$tmp/err"
    read -r secs kib <"$tmp/time"
    awk -v n="$name" -v r="$run" -v s="$secs" -v k="$kib" -v rec="$records" \
      'BEGIN { printf "%-8s run %d: %6.2f s  %9.0f records/s  peak RSS %5.1f MiB\n", n, r, s, rec / s, k / 1024 }'
  done
  grep -m1 "egressd: read" "$tmp/err" || true
}
measure discover ./target/release/egressd discover --policy "$tmp/policy" --audit-log "$tmp/audit.log"
measure learn ./target/release/egressd learn --policy "$tmp/policy" --audit-log "$tmp/audit.log" --diff
echo "learned diff: $(wc -l <"$tmp/out") lines"
