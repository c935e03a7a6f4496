#!/usr/bin/env bash
# DR activation stampede on loopback: N clients arriving at once
# (`lifeboat loadgen --clients N`, one first flow each) against a fresh
# edge and connector, for each transport. Prints one line per run: time
# until every client was served, setup percentiles, tunnels up per second,
# the edge's peak RSS and the handshakes the edge shed or refused.
# Everything is bounded (each run stops at --duration) and stops by itself.
#   usage: bench/stampede.sh [path-to-lifeboat-binary] [clients...]
#          (default target/release/lifeboat, 250 1000 2000)
#   env:   TRANSPORTS="quic tls auto"  DURATION=60s  EDGE_LIMITS="max_handshakes_inflight = 256"
set -euo pipefail
BIN=${1:-target/release/lifeboat}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
shift || true
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(250 1000 2000)
TRANSPORTS=${TRANSPORTS:-"quic tls auto"}
DURATION=${DURATION:-60s}
EDGE_LIMITS=${EDGE_LIMITS:-}
PORT=19443 ADMIN=19444 APP=19080
W=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$W"; }
trap cleanup EXIT
cd "$W"
[ -z "${KEEP:-}" ] || echo "keeping $W" >&2
ulimit -n 20000 2>/dev/null || true

"$BIN" pki init --dir pki --trust-domain stampede.lifeboat.test --days 2 >/dev/null
"$BIN" pki issue --dir pki --role edge --name edge1 --ip 127.0.0.1 --days 2 >/dev/null
"$BIN" pki issue --dir pki --role connector --name c1 --group dc1-dr --days 2 >/dev/null
"$BIN" pki issue --dir pki --role client --name alice --days 2 >/dev/null

# The app: accepts, reads to the end, closes.
python3 - "$APP" <<'PY' &
import asyncio, sys
async def hold(r, w):
    try:
        await r.read()
    except OSError:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(hold, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with s:
        await asyncio.sleep(3600)
asyncio.run(main())
PY
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$APP") 2>/dev/null && break; sleep 0.1; done

cat > edge.toml <<TOML
trust_domain = "stampede.lifeboat.test"
[tls]
ca = "pki/ca.pem"
cert = "pki/edge1.pem"
key = "pki/edge1.key"
[listen]
quic = "127.0.0.1:$PORT"
tls = "127.0.0.1:$PORT"
admin = "127.0.0.1:$ADMIN"
[dr]
trigger = "static:on"
[limits]
# Every loadgen client presents alice's certificate.
max_tunnels_per_identity = 100000
$EDGE_LIMITS
[[connector_group]]
name = "dc1-dr"
dr = true
[[server_group]]
name = "dc1"
connector_groups = ["dc1-dr"]
[[segment]]
name = "app"
dr = true
domains = ["app.stampede.test"]
tcp_ports = ["$APP"]
server_groups = ["dc1"]
TOML
cat > connector.toml <<TOML
trust_domain = "stampede.lifeboat.test"
edges = ["127.0.0.1:$PORT"]
transport = "quic"
[tls]
ca = "pki/ca.pem"
cert = "pki/c1.pem"
key = "pki/c1.key"
[dns]
hosts = { "app.stampede.test" = "127.0.0.1" }
TOML
cat > client.toml <<TOML
trust_domain = "stampede.lifeboat.test"
edges = ["127.0.0.1:$PORT"]
transport = "auto"
[tls]
ca = "pki/ca.pem"
cert = "pki/alice.pem"
key = "pki/alice.key"
[listen]
socks = "127.0.0.1:0"
TOML

export RUST_LOG=error
metric() { # metric() NAME [LABEL="VALUE"]...: the sum of NAME's samples with every label given
  curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v want="$*" '
    BEGIN { n = split(want, w, " ") }
    index($0, w[1] "{") == 1 || index($0, w[1] " ") == 1 {
      for (i = 2; i <= n; i++) if (index($0, w[i]) == 0) next
      s += $NF
    }
    END { printf "%d", s }'
}
printf '%-5s %6s | %-10s %-8s %-9s %-9s %-8s %-9s %-9s %s\n' transport clients "all served" served "setup p50" "setup p99" "tunnels/s" "edge RSS" "peak RSS" "edge refused (client handshakes)"
for transport in $TRANSPORTS; do
  for n in "${COUNTS[@]}"; do
    "$BIN" edge -c edge.toml 2>edge.log & edge=$!
    pids+=($edge)
    "$BIN" connector -c connector.toml 2>connector.log & conn=$!
    pids+=($conn)
    for _ in $(seq 100); do
      [ "$(metric lifeboat_connectors_connected)" = 1 ] && break
      sleep 0.1
    done
    base=$(awk '/VmRSS/ {print $2}' "/proc/$edge/status")
    start=$(date +%s.%N)
    timeout 300 "$BIN" loadgen -c client.toml --target "app.stampede.test:$APP" --clients "$n" --flows "$n" \
      --concurrency "$n" --duration "$DURATION" --transport "$transport" --json >report.json 2>loadgen.log || true
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    peak=$(awk '/VmHWM/ {print $2}' "/proc/$edge/status")
    shed=$(metric lifeboat_handshakes_total 'role="client"' 'result="shed"')
    tmo=$(metric lifeboat_handshakes_total 'role="client"' 'result="timeout"')
    ok=$(metric lifeboat_handshakes_total 'role="client"' 'result="ok"')
    python3 - "$transport" "$n" "$wall" "$base" "$peak" "$shed" "$tmo" "$ok" <<'PY'
import json, sys
t, n, wall, base, peak, shed, tmo, ok = sys.argv[1:]
try:
    r = json.load(open("report.json"))
except Exception:
    r = {}
def g(k, f="{:.0f}", scale=1.0):
    v = r.get(k)
    return "-" if v is None else f.format(v * scale)
served = r.get("clients_served")
# Before the stampede report existed: clients whose tunnel never came up
# were dropped and counted `unreachable`; the run's wall time bounds the rest.
if served is None:
    served = int(n) - r.get("refusals", {}).get("unreachable", 0)
allin = g("all_served_seconds", "{:.2f} s")
if allin == "-" and served == int(n):
    allin = "<={:.2f} s".format(float(wall))
refused = dict(r.get("handshakes_refused", {}))
print(f"{t:<5} {n:>6} | {allin:<10} {served!s:<8} {g('setup_p50_us', '{:.0f} ms', 1e-3):<9} "
      f"{g('setup_p99_us', '{:.0f} ms', 1e-3):<9} {g('handshakes_per_second'):<8} "
      f"{int(base)//1024} MiB{'':<3} {int(peak)//1024} MiB{'':<3} ok {ok}, shed {shed}, timeout {tmo}; "
      f"clients saw {refused or '-'}, flows failed {r.get('flows_failed', '-')} {r.get('refusals') or ''}")
PY
    kill "$conn" "$edge" 2>/dev/null || true
    wait "$conn" "$edge" 2>/dev/null || true
  done
done
