#!/usr/bin/env bash
# Builds the fuzz targets, then runs each for SECONDS (default 60) with libFuzzer's
# -max_total_time, one after another, at the lowest CPU priority. Prints each target's executions
# (libFuzzer's final stats) and exits non-zero if any target crashed, naming the crash input.
#
#   bash fuzz/run.sh [SECONDS]
#
# Environment: CARGO_TARGET_DIR (default fuzz/target), FUZZ_TARGETS (a space-separated subset).
# Seeds are read from fuzz/corpus/<target>/ and not written to; what a run finds grows
# fuzz/work/corpus/<target>/ (ignored by git), and crash inputs land in fuzz/artifacts/<target>/.
set -uo pipefail

secs=${1:-60}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/fuzz/target}
read -r -a targets <<<"${FUZZ_TARGETS:-policy_load host_normalize xfcc check_request ads_request audit_log dns_packet}"
cargo_fuzz=(nice -n 19 cargo +nightly fuzz)

mkdir -p fuzz/work
echo "== building (log: fuzz/work/build.log)"
if ! "${cargo_fuzz[@]}" build --fuzz-dir fuzz --target-dir "$target_dir" >fuzz/work/build.log 2>&1; then
    tail -n 30 fuzz/work/build.log >&2
    echo "fuzz build failed" >&2
    exit 2
fi

triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$triple/release

failed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/corpus/$t" "fuzz/artifacts/$t"
    log=fuzz/work/$t.log
    extra=()
    [ -f "fuzz/dict/$t.dict" ] && extra+=("-dict=fuzz/dict/$t.dict")
    echo "== $t: ${secs}s"
    # The binary built above, run directly: `cargo fuzz run` would rebuild whenever someone edits
    # the library in between, so targets of one run could test different code.
    nice -n 19 "$bin_dir/$t" "fuzz/work/corpus/$t" "fuzz/corpus/$t" -artifact_prefix="fuzz/artifacts/$t/" \
        -max_total_time="$secs" -print_final_stats=1 -timeout=30 "${extra[@]}" >"$log" 2>&1
    rc=$?
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
    [ -n "$execs" ] || execs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -n 1)
    if [ "$rc" -eq 0 ]; then
        line=$(printf '%-16s %12s execs in %ss  ok' "$t" "${execs:-?}" "$secs")
    else
        failed=1
        crash=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/^Test unit written to //')
        grep -m 1 -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log" || true
        line=$(printf '%-16s %12s execs  CRASHED (exit %s): %s  (log: %s)' "$t" "${execs:-?}" "$rc" \
            "${crash:-no crash input written}" "$log")
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
