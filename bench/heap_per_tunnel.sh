#!/usr/bin/env bash
# Where an idle client tunnel's memory goes at the edge: the edge runs
# under heaptrack while `lifeboat loadgen` holds 200 client tunnels, one
# idle flow each, for 15 s; heaptrack's peak consumers, divided by the
# tunnels, say what each costs and who allocated it. Loopback only
# (ports 26080, 26443); everything stops by itself.
#   usage: bench/heap_per_tunnel.sh [quic|tls] [path-to-lifeboat-binary] [OUT]
#   then:  heaptrack_print OUT.zst (or --flamegraph-cost-type peak -F stacks.txt)
set -uo pipefail
T=${1:-quic}
BIN=${2:-target/release/lifeboat}
OUT=${3:-heap-$T}
command -v heaptrack >/dev/null || { echo "needs heaptrack (apt-get install heaptrack)" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"
. "$HERE/topology.sh"
topology_pki hp.lifeboat.test
topology_app 26080
# The loadgen clients share alice's certificate: allow them the tunnels.
topology_configs hp.lifeboat.test 26443 app.hp.test 26080 quic "" "max_tunnels_per_identity = 100000"
export RUST_LOG=error
heaptrack -o "$OUT" "$BIN" edge -c edge.toml & e=$!
sleep 4
"$BIN" connector -c connector.toml & pids+=($!)
sleep 2
# Warm up (the first handshakes, the connector tunnel), then the 200.
"$BIN" loadgen -c client.toml --target app.hp.test:26080 --flows 50 --concurrency 10 --duration 10s --transport "$T" >/dev/null 2>&1
"$BIN" loadgen -c client.toml --target app.hp.test:26080 --flows 200 --concurrency 200 --clients 200 \
  --hold 15s --duration 40s --transport "$T" 2>&1 | tail -3
pkill -TERM -f "^$BIN edge -c edge.toml"
wait $e
