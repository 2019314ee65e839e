#!/usr/bin/env bash
# Writes the seed corpora in fuzz/corpus/<target>/ from the repository's fixtures: the example
# policy (mesh-config/) and integration/fixtures/semantics.yaml, audit lines from
# src/flows/audit_log.rs's tests, and CheckRequests / DiscoveryRequests written as protobuf text
# and encoded with the protoc and Envoy .proto files that the build already downloads
# (protoc-bin-vendored, envoy-types). The seeds are checked in; run this only to change them.
set -euo pipefail
cd "$(dirname "$0")/.."
C=fuzz/corpus
rm -rf "$C"
mkdir -p "$C"/{policy_load,host_normalize,xfcc,check_request,ads_request,audit_log}

# ---------------------------------------------------------------- policy_load (files split on NUL)
cp mesh-config/mesh.yaml "$C/policy_load/mesh"
cp integration/fixtures/semantics.yaml "$C/policy_load/semantics"
{
    first=1
    for f in mesh-config/mesh.yaml mesh-config/groups.yaml mesh-config/gateway.yaml mesh-config/services/*.yaml; do
        [ $first = 1 ] || printf '\0'
        first=0
        cat "$f"
    done
} >"$C/policy_load/embedded"
{ cat mesh-config/mesh.yaml; printf '\0'; cat mesh-config/services/payments.yaml; } >"$C/policy_load/mesh_payments"
{ cat mesh-config/mesh.yaml; printf -- '---\n'; cat mesh-config/gateway.yaml; } >"$C/policy_load/mesh_gateway"
printf 'kind: MeshDefaults\ntrustDomain: corp.example\nbase: &b {host: a.example.com, justification: j}\n' >"$C/policy_load/anchor"

# ---------------------------------------------------------------- host_normalize
n=0
for h in 'API.Stripe.COM.:8443' 'bücher.example' '[::ffff:169.254.169.254]:443' '*.PythonHosted.org.' \
    '10.20.1.5:5432' '0x7f.1' 'xn--bcher-kva.example:443' 'fd00::1' '*.svc.cluster.local'; do
    printf '%s' "$h" >"$C/host_normalize/$n"
    n=$((n + 1))
done

# ---------------------------------------------------------------- xfcc (client prefix 0xff subject)
SIDECAR='By=spiffe://acme.internal/ns/ci/sa/sidecar;Hash=4e1c0b7f;Subject="CN=runner,O=acme";URI=spiffe://acme.internal/ns/ci/sa/runner'
printf '%s' "$SIDECAR" >"$C/xfcc/sidecar"
printf 'By=spiffe://corp.example/gw;URI=spiffe://corp.example/ns/a/sa/first,%s' "$SIDECAR" >"$C/xfcc/chain"
printf 'URI=spiffe://acme.internal/ns/billing/sa/api;Subject="\xffCN=runner,O=acme' >"$C/xfcc/open_quote"
printf 'Subject="a\\"b";URI="spiffe://corp.example/ns/q"\xffCN=a"b' >"$C/xfcc/escaped"

# ---------------------------------------------------------------- audit_log
ALLOW='{"time":"2026-11-21T20:10:33.0281Z","trace_id":"4b","sampled":true,"duration_us":3.1,"egress.check":"http","egress.spiffe_id":"spiffe://corp.example/ns/payments/sa/api","egress.service":"payments","server.address":"api.stripe.com","egress.protocol":"https","http.request.method":"CONNECT","egress.decision":"allow","egress.mode":"enforce","egress.rule.id":"payments/allow/0","egress.reason":"allowed","server.port":443,"egress.enforced":true}'
UNCLAIMED='{"time":"2026-11-21T20:11:00Z","egress.spiffe_id":"spiffe://corp.example/ns/batch/sa/etl","server.address":"s3.eu-west-1.amazonaws.com","egress.protocol":"https","egress.decision":"would-deny","egress.reason":"unknown-service","server.port":443}'
UNAUTH='{"time":"2026-11-21T20:11:00Z","egress.spiffe_id":"spiffe://other.example/x","server.address":"a.test","egress.protocol":"https","egress.decision":"deny","egress.reason":"unauthenticated","server.port":443}'
TUNNEL='{"time":"2026-11-21T20:10:33.1Z","egress.spiffe_id":"spiffe://corp.example/ns/payments/sa/api","egress.service":"payments","server.address":"api.stripe.com","egress.protocol":"tls","egress.decision":"allow","egress.reason":"tunnel-verified","server.port":443,"egress.tunnel.start":"tls"}'
printf '%s\n' "$ALLOW" >"$C/audit_log/allow"
printf '%s\n' "$UNCLAIMED" >"$C/audit_log/unclaimed"
printf '%s\n%s\n' "$UNAUTH" "$TUNNEL" >"$C/audit_log/unauthenticated_tunnel"
printf '%s\n{"time":"2026-11-21T2\n\n%s\n[1,2]\n%s' "$ALLOW" "$UNCLAIMED" "${ALLOW/2026-11-21T20:10:33.0281Z/2026-01-01T00:00:00+01:00}" \
    >"$C/audit_log/mixed"

# ---------------------------------------------------------------- protobuf seeds
PROTOC=$(ls ~/.cargo/registry/src/*/protoc-bin-vendored-linux-x86_64-*/bin/protoc | head -1)
E=$(ls -d ~/.cargo/registry/src/*/envoy-types-*/proto | head -1)
INCLUDES=(-I"$E/data-plane-api" -I"$E/xds" -I"$E/protoc-gen-validate" -I"$E/googleapis" -I"$E/cel-spec"
    -I"$E/client_model" -I"$E/opentelemetry-proto")
enc() { # MESSAGE PROTO TEXT
    printf '%s' "$3" | "$PROTOC" "${INCLUDES[@]}" --encode="$1" "$2"
}
check() { enc envoy.service.auth.v3.CheckRequest envoy/service/auth/v3/external_auth.proto "$1"; }

PAY='spiffe://corp.example/ns/payments/sa/api'
PEERS='source { principal: "'$PAY'" address { socket_address { address: "127.0.0.1" port_value: 40000 } } }
  destination { address { socket_address { address: "127.0.0.1" port_value: 10000 } } }'
check "attributes { $PEERS request { http { method: \"CONNECT\" host: \"api.stripe.com:443\" protocol: \"HTTP/1.1\" headers { key: \"x-request-id\" value: \"r1\" } } } }" \
    >"$C/check_request/connect_allow"
check "attributes { $PEERS request { http { method: \"GET\" host: \"uploads.stripe.com\" path: \"/\" scheme: \"https\" headers { key: \"x-request-id\" value: \"r2\" } } } }" \
    >"$C/check_request/https_deny"
check "attributes { source { principal: \"$PAY\" } destination { service: \"API.Stripe.com.\" address { socket_address { address: \"127.0.0.1\" port_value: 10443 } } } }" \
    >"$C/check_request/network_sni"
check "attributes { source { principal: \"$PAY\" } destination { address { socket_address { address: \"::ffff:10.20.1.5\" port_value: 5432 } } } }" \
    >"$C/check_request/network_ip"
check "attributes { source { } request { http { method: \"CONNECT\" host: \"api.stripe.com:443\" headers { key: \"x-forwarded-client-cert\" value: \"Hash=1;Subject=\\\"CN=x,O=y\\\";URI=$PAY\" } } } }" \
    >"$C/check_request/xfcc"
check "attributes { source { principal: \"$PAY\" } request { http { method: \"GET\" path: \"/\" header_map { headers { key: \":authority\" raw_value: \"[fd00::1]:8080\" } headers { key: \"x-request-id\" value: \"r3\" } } } } }" \
    >"$C/check_request/header_map_v6"
: >"$C/check_request/empty"

disc() { enc envoy.service.discovery.v3.DiscoveryRequest envoy/service/discovery/v3/discovery.proto "$1"; }
delta() { enc envoy.service.discovery.v3.DeltaDiscoveryRequest envoy/service/discovery/v3/discovery.proto "$1"; }
# One framed message: snapshot selector byte, length byte, bytes.
frame() { # SELECTOR FILE
    local len
    len=$(wc -c <"$2")
    [ "$len" -le 255 ] || { echo "seed message over 255 bytes" >&2; exit 1; }
    printf "\\x$(printf %02x "$1")\\x$(printf %02x "$len")"
    cat "$2"
}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
CLUSTER=type.googleapis.com/envoy.config.cluster.v3.Cluster
LISTENER=type.googleapis.com/envoy.config.listener.v3.Listener
ROUTE=type.googleapis.com/envoy.config.route.v3.RouteConfiguration
NODE='node { id: "gw-1" cluster: "egress-gateway" }'
disc "$NODE type_url: \"$CLUSTER\"" >"$T/c0"
disc "version_info: \"v\" type_url: \"$CLUSTER\" response_nonce: \"1\"" >"$T/c1"
disc "type_url: \"$LISTENER\"" >"$T/l0"
disc "type_url: \"$LISTENER\" response_nonce: \"2\" error_detail { code: 3 message: \"rejected\" }" >"$T/l1"
disc "type_url: \"$ROUTE\" resource_names: \"egress_http\"" >"$T/r0"
disc "type_url: \"$ROUTE\" response_nonce: \"9\" resource_names: \"*\"" >"$T/r1"
{ printf '\x00'; frame 0 "$T/c0"; frame 0 "$T/c1"; frame 0 "$T/l0"; frame 1 "$T/l1"; } >"$C/ads_request/sotw_ack_nack"
{ printf '\x00'; frame 0 "$T/r0"; frame 1 "$T/r1"; frame 2 "$T/c0"; } >"$C/ads_request/sotw_routes"
delta "$NODE type_url: \"$CLUSTER\" initial_resource_versions { key: \"egressd_authz\" value: \"0\" }" >"$T/d0"
delta "type_url: \"$CLUSTER\" response_nonce: \"1\"" >"$T/d1"
delta "type_url: \"$LISTENER\"" >"$T/d2"
delta "type_url: \"$LISTENER\" response_nonce: \"2\" error_detail { code: 3 message: \"rejected\" }" >"$T/d3"
delta "type_url: \"$ROUTE\" resource_names_subscribe: \"egress_http\"" >"$T/d4"
delta "type_url: \"$ROUTE\" resource_names_unsubscribe: \"egress_http\" resource_names_subscribe: \"*\"" >"$T/d5"
{ printf '\x01'; frame 0 "$T/d0"; frame 0 "$T/d1"; frame 0 "$T/d2"; frame 1 "$T/d3"; } >"$C/ads_request/delta_ack_nack"
{ printf '\x01'; frame 0 "$T/d4"; frame 2 "$T/d5"; frame 1 "$T/d2"; } >"$C/ads_request/delta_routes"

find "$C" -type f | sort | while read -r f; do printf '%6d %s\n' "$(wc -c <"$f")" "$f"; done
