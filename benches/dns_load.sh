#!/usr/bin/env bash
# The DNS firewall against dnsmasq, both forwarding to the same upstream (a third, authoritative
# dnsmasq for bench.test with a one-hour TTL), on a cache-hit workload: 100 names, each answered
# from the cache after the warm-up. For each of PAIRS interleaved pairs (A B A B: egressd, then
# dnsmasq): a closed-loop dnsperf run (queries/s), then a run at RATE queries/s with every answer's
# latency (p99). Prints the medians and the ratios egressd / dnsmasq.
#
#   bash benches/dns_load.sh            (env: PAIRS=3 DURATION=10 CLIENTS=8 RATE=5000)
#
# Needs dnsperf and dnsmasq (Debian: apt-get install dnsperf dnsmasq-base). Builds egressd with
# --release (CARGO_TARGET_DIR honoured). Loopback only; ports 25400-25404.
set -euo pipefail

PAIRS=${PAIRS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
RATE=${RATE:-5000}
UP=25400 EG=25401 DM=25402 GRPC=25403 ADMIN=25404

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
for tool in dnsperf dnsmasq; do
    command -v "$tool" >/dev/null || { echo "$tool is required (apt-get install dnsperf dnsmasq-base)" >&2; exit 2; }
done
(cd "$root" && cargo build --release --bin egressd >&2)
egressd=$target/release/egressd

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

dnsmasq_common=(-k --conf-file=/dev/null --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts
    --pid-file= --user=root --log-facility=/dev/null)
# The upstream: authoritative for bench.test, TTL one hour.
dnsmasq "${dnsmasq_common[@]}" -p "$UP" --address=/bench.test/192.0.2.1 --local-ttl=3600 &
pids+=($!)
# B: dnsmasq as the forwarding cache.
dnsmasq "${dnsmasq_common[@]}" -p "$DM" --server="127.0.0.1#$UP" --cache-size=10000 --dns-forward-max=10000 &
pids+=($!)

# A: egressd's DNS firewall; the rate limit out of the way (dnsperf is one client address).
mkdir -p "$work/policy"
cat >"$work/policy/mesh.yaml" <<YAML
kind: MeshDefaults
trustDomain: corp.example
deny:
  - host: pastebin.com
---
kind: ServicePolicy
service: bench
identities: [spiffe://corp.example/ns/bench/sa/load]
allow:
  - host: "*.bench.test"
    justification: the benchmark's names
---
kind: DnsFirewall
name: bench
listen: 127.0.0.1:$EG
upstreams: [127.0.0.1:$UP]
rateLimit:
  queriesPerSecond: 1000000
  burst: 1000000
YAML
"$egressd" serve --policy "$work/policy" --grpc-listen "127.0.0.1:$GRPC" --admin-listen "127.0.0.1:$ADMIN" \
    >"$work/egressd.log" 2>&1 &
pids+=($!)

for i in $(seq 0 99); do echo "www$i.bench.test A"; done >"$work/queries"
sleep 1
for port in $EG $DM; do
    dnsperf -s 127.0.0.1 -p "$port" -d "$work/queries" -n 2 -c 1 >/dev/null # warm the caches
done

qps() { dnsperf -s 127.0.0.1 -p "$1" -d "$work/queries" -l "$DURATION" -c "$CLIENTS" -q 200 |
    awk '/Queries per second/ {print $4}'; }
p99() { dnsperf -v -s 127.0.0.1 -p "$1" -d "$work/queries" -l "$DURATION" -c "$CLIENTS" -Q "$RATE" |
    awk '/^> / {print $NF}' | sort -g | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.1f\n", a[i]*1e6}'; }

declare -a qa qb pa pb
for pair in $(seq 1 "$PAIRS"); do
    qa+=("$(qps $EG)"); qb+=("$(qps $DM)")
    pa+=("$(p99 $EG)"); pb+=("$(p99 $DM)")
    echo "pair $pair: qps egressd ${qa[-1]} dnsmasq ${qb[-1]}; p99 at $RATE/s (us) egressd ${pa[-1]} dnsmasq ${pb[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratios() { local -n x=$1 y=$2; for i in "${!x[@]}"; do awk -v a="${x[$i]}" -v b="${y[$i]}" 'BEGIN {printf "%.3f\n", a/b}'; done; }
mapfile -t rq < <(ratios qa qb)
mapfile -t rp < <(ratios pa pb)
echo "median queries/s: egressd $(median "${qa[@]}"), dnsmasq $(median "${qb[@]}"); ratio egressd/dnsmasq per pair: ${rq[*]}, median $(median "${rq[@]}")"
echo "median p99 (us) at $RATE/s: egressd $(median "${pa[@]}"), dnsmasq $(median "${pb[@]}"); ratio per pair: ${rp[*]}, median $(median "${rp[@]}")"
