#!/usr/bin/env bash
# Measure lifeboat against "the bar" on this machine, with real processes on
# loopback: new flows per second, latency added to a new flow, and memory
# held per idle flow and per idle client tunnel at the edge. Everything is
# bounded and stops by itself.
#   usage: bench/bar.sh [path-to-lifeboat-binary]   (default target/release/lifeboat)
set -euo pipefail
BIN=${1:-target/release/lifeboat}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"

. "$HERE/topology.sh"
topology_pki bar.lifeboat.test
topology_app 18080
# The loadgen clients share alice's certificate: allow them the tunnels.
topology_configs bar.lifeboat.test 18443 app.bar.test 18080 quic "" "max_tunnels_per_identity = 100000"

start_edge() { RUST_LOG=warn "$BIN" edge -c edge.toml & pids+=($!); EDGE=$!; }
start_edge
RUST_LOG=warn "$BIN" connector -c connector.toml & pids+=($!)
sleep 1.5

export RUST_LOG=warn
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
echo "== new flows per second (QUIC tunnel, 32 at once, 20000 flows or 15 s)"
"$BIN" loadgen -c client.toml --target app.bar.test:18080 --flows 20000 --concurrency 32 --duration 15s
echo "== latency a new flow costs (one at a time, 3000 flows)"
"$BIN" loadgen -c client.toml --target app.bar.test:18080 --flows 3000 --concurrency 1 --duration 15s
echo "== the same over TLS (every flow a CONNECT stream on one HTTP/2 tunnel)"
"$BIN" loadgen -c client.toml --target app.bar.test:18080 --flows 3000 --concurrency 1 --duration 15s --transport tls
echo "== new flows per second over TLS (one HTTP/2 tunnel, 32 at once, 20000 flows or 15 s)"
"$BIN" loadgen -c client.toml --target app.bar.test:18080 --flows 20000 --concurrency 32 --duration 15s --transport tls
# per_idle WHAT N SETTLE LOADGEN-ARGS...: edge RSS before and while a loadgen
# run holds N idle things (measured SETTLE seconds in), and the difference
# per thing. On a new edge each time (freed memory stays in the process and
# would be reused), warmed up by a few flows once the connector is back.
per_idle() {
  local what=$1 n=$2 settle=$3; shift 3
  local before during lg
  kill "$EDGE"; wait "$EDGE" 2>/dev/null || true
  start_edge
  sleep 3
  "$BIN" loadgen -c client.toml --target app.bar.test:18080 --flows 50 --concurrency 10 --duration 10s >/dev/null
  before=$(rss "$EDGE")
  "$BIN" loadgen -c client.toml --target app.bar.test:18080 "$@" >/dev/null &
  lg=$!
  sleep "$settle"
  during=$(rss "$EDGE")
  wait "$lg" || true
  echo "edge RSS before ${before} KiB, with $n $what ${during} KiB: $(awk -v a="$before" -v b="$during" -v n="$n" 'BEGIN { printf "%.2f", (b - a) / n }') KiB per one"
}
N=${IDLE_FLOWS:-2000}
echo "== edge memory per idle flow ($N flows held open 8 s)"
per_idle "idle flows" "$N" 5 --flows "$N" --concurrency "$N" --clients 4 --hold 8s --duration 20s
echo "== edge memory per idle flow over TLS ($N flows on 4 HTTP/2 tunnels held open 8 s)"
per_idle "idle flows" "$N" 5 --flows "$N" --concurrency "$N" --clients 4 --hold 8s --duration 20s --transport tls
T=${IDLE_TUNNELS:-200}
echo "== edge memory per idle client tunnel ($T clients, one idle flow each, held 15 s)"
per_idle "idle client tunnels" "$T" 12 --flows "$T" --concurrency "$T" --clients "$T" --hold 15s --duration 40s
