#!/usr/bin/env bash
# The detectors' precision and recall on the labelled synthetic corpus (egressd::detect::corpus):
# for each seed, 60 services and two days of traffic with injected attacks, then
# `egressd detect --labels`. Prints the table per seed and the time `detect` took.
# Usage: [SEEDS="1 2 3"] bash benches/detect_eval.sh
set -euo pipefail
seeds=${SEEDS:-"1 2 3"}
cd "$(dirname "$0")/.."
cargo build --release --bin egressd --example detect_corpus
out=target/detect-eval
mkdir -p "$out"
for seed in $seeds; do
  dir="$out/seed-$seed"
  ./target/release/examples/detect_corpus "$dir" --seed "$seed"
  echo "== seed $seed: $(wc -c <"$dir/audit.log") bytes of audit log"
  start=$(date +%s.%N)
  ./target/release/egressd detect --policy "$dir/policy" --audit-log "$dir/audit.log" --labels "$dir/labels.json" >"$dir/signals.txt"
  echo "detect took $(echo "$(date +%s.%N) - $start" | bc) s"
  rm -f "$dir/audit.log"
done
