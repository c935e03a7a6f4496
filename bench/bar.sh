#!/usr/bin/env bash
# Measure lifeboat against "the bar" on this machine, with real processes on
# loopback: new flows per second, latency added to a new flow, and memory
# held per idle flow at the edge. Everything is bounded and stops by itself.
#   usage: bench/bar.sh [path-to-lifeboat-binary]   (default target/release/lifeboat)
set -euo pipefail
BIN=${1:-target/release/lifeboat}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
W=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"

"$BIN" pki init --dir pki --trust-domain bar.lifeboat.test --days 2 >/dev/null
"$BIN" pki issue --dir pki --role edge --name edge1 --ip 127.0.0.1 --days 2 >/dev/null
"$BIN" pki issue --dir pki --role connector --name c1 --group dc1-dr --days 2 >/dev/null
"$BIN" pki issue --dir pki --role client --name alice --days 2 >/dev/null

# An app that accepts connections and answers nothing: flows stay idle.
python3 - <<'PY' &
import asyncio
async def hold(r, w):
    await r.read()
    w.close()
async def main():
    s = await asyncio.start_server(hold, "127.0.0.1", 18080, backlog=4096)
    async with s:
        await asyncio.sleep(600)
asyncio.run(main())
PY
pids+=($!)

cat > edge.toml <<TOML
trust_domain = "bar.lifeboat.test"
[tls]
ca = "pki/ca.pem"
cert = "pki/edge1.pem"
key = "pki/edge1.key"
[listen]
quic = "127.0.0.1:18443"
tls = "127.0.0.1:18443"
[dr]
trigger = "static:on"
[[connector_group]]
name = "dc1-dr"
dr = true
[[server_group]]
name = "dc1"
connector_groups = ["dc1-dr"]
[[segment]]
name = "app"
dr = true
domains = ["app.bar.test"]
tcp_ports = ["18080"]
server_groups = ["dc1"]
TOML
cat > connector.toml <<TOML
trust_domain = "bar.lifeboat.test"
edges = ["127.0.0.1:18443"]
transport = "quic"
[tls]
ca = "pki/ca.pem"
cert = "pki/c1.pem"
key = "pki/c1.key"
[dns]
hosts = { "app.bar.test" = "127.0.0.1" }
TOML
cat > client.toml <<TOML
trust_domain = "bar.lifeboat.test"
edges = ["127.0.0.1:18443"]
transport = "quic"
[tls]
ca = "pki/ca.pem"
cert = "pki/alice.pem"
key = "pki/alice.key"
[listen]
socks = "127.0.0.1:0"
TOML

RUST_LOG=warn "$BIN" edge -c edge.toml & pids+=($!); EDGE=$!
RUST_LOG=warn "$BIN" connector -c connector.toml & pids+=($!)
sleep 1.5

export RUST_LOG=warn
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
echo "== new flows per second (QUIC tunnel, 32 at once, 20000 flows or 15 s)"
"$BIN" loadgen -c client.toml --target app.bar.test:18080 --flows 20000 --concurrency 32 --duration 15s
echo "== latency a new flow costs (one at a time, 3000 flows)"
"$BIN" loadgen -c client.toml --target app.bar.test:18080 --flows 3000 --concurrency 1 --duration 15s
echo "== the same over TLS (a TLS connection per flow, resumed)"
"$BIN" loadgen -c client.toml --target app.bar.test:18080 --flows 3000 --concurrency 1 --duration 15s --transport tls
N=${IDLE_FLOWS:-2000}
echo "== edge memory per idle flow ($N flows held open 8 s)"
before=$(rss "$EDGE")
"$BIN" loadgen -c client.toml --target app.bar.test:18080 --flows "$N" --concurrency "$N" --clients 4 --hold 8s --duration 20s >/dev/null &
lg=$!
sleep 5
during=$(rss "$EDGE")
wait "$lg" || true
echo "edge RSS before ${before} KiB, with $N idle flows ${during} KiB: $(awk -v a="$before" -v b="$during" -v n="$N" 'BEGIN { printf "%.2f", (b - a) / n }') KiB per idle flow"
