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
#          PERF=DIR (a perf profile of the edge per run)  KEEP=1 (keep the work folder)
#          KEY_EXCHANGE=hybrid|classical (every role's [tls] key_exchange; unset: the default)
set -euo pipefail
BIN=${1:-target/release/lifeboat}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
[ -z "${PERF:-}" ] || PERF=$(mkdir -p "$PERF" && cd "$PERF" && pwd)
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

. "$HERE/topology.sh"
topology_pki stampede.lifeboat.test
topology_app "$APP"
# Every loadgen client presents alice's certificate: the edge allows them the tunnels.
topology_configs stampede.lifeboat.test "$PORT" app.stampede.test "$APP" auto \
  "admin = \"127.0.0.1:$ADMIN\"" "max_tunnels_per_identity = 100000
$EDGE_LIMITS"

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
printf '%-9s %7s | %-7s %-10s %-7s %-9s %-9s %-9s %-9s %-16s %s\n' transport clients "run" "all served" served "setup p50" "setup p99" "tunnels/s" "edge hs/s" "edge RSS→peak" "edge CPU, UDP drops | edge: client handshakes; loadgen: handshakes refused, flows failed"
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
    cpu0=$(awk '{print $14 + $15}' "/proc/$edge/stat")
    drops0=$(awk '/^Udp:/ && $2 ~ /^[0-9]/ {print $6}' /proc/net/snmp)
    start=$(date +%s.%N)
    if [ -n "${PERF:-}" ]; then # PERF=DIR: a CPU profile of the edge during each run
      perf record -e cpu-clock -F 499 -g -p "$edge" -o "$PERF/edge-$transport-$n.data" 2>/dev/null & prof=$!
    fi
    timeout 300 "$BIN" loadgen -c client.toml --target "app.stampede.test:$APP" --clients "$n" --flows "$n" \
      --concurrency "$n" --duration "$DURATION" --transport "$transport" --json >report.json 2>loadgen.log || true
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    if [ -n "${PERF:-}" ]; then kill -INT "$prof"; wait "$prof" || true; fi
    peak=$(awk '/VmHWM/ {print $2}' "/proc/$edge/status")
    cpu=$(( $(awk '{print $14 + $15}' "/proc/$edge/stat") - cpu0 ))
    drops=$(( $(awk '/^Udp:/ && $2 ~ /^[0-9]/ {print $6}' /proc/net/snmp) - drops0 ))
    shed=$(metric lifeboat_handshakes_total 'role="client"' 'result="shed"')
    tmo=$(metric lifeboat_handshakes_total 'role="client"' 'result="timeout"')
    ok=$(metric lifeboat_handshakes_total 'role="client"' 'result="ok"')
    python3 - "$transport" "$n" "$wall" "$base" "$peak" "$shed" "$tmo" "$ok" "$cpu" "$drops" "$(getconf CLK_TCK)" <<'PY'
import json, sys
t, n, wall, base, peak, shed, tmo, ok, cpu, drops, hz = sys.argv[1:]
n, wall = int(n), float(wall)
try:
    r = json.load(open("report.json"))
except Exception:
    r = {}
def ms(k):
    v = r.get(k)
    return "-" if v is None else "{:.0f} ms".format(v / 1e3)
# Before the stampede report existed (no `clients_served`): a client whose
# tunnel did not come up was dropped, so a client was served when a flow
# succeeded on it (one flow per client here, on the clients not dropped);
# only the run's wall time bounds when.
new = "clients_served" in r
dropped = (r.get("refusals") or {}).get("unreachable", 0)
served = r.get("clients_served", min(r.get("flows_ok", 0), n - dropped))
allin = r.get("all_served_seconds") if new else None
span = allin if allin else wall
allin = "{:.2f} s".format(allin) if allin else "-"
tps = "{:.0f}".format(r["handshakes_per_second"]) if new else "-"
refused = r.get("handshakes_refused") or {}
failed = r.get("flows_failed", "-")
words = r.get("refusals") or ""
print(f"{t:<9} {n:>7} | {wall:5.2f} s {allin:<10} {served!s:<7} {ms('setup_p50_us'):<9} {ms('setup_p99_us'):<9} "
      f"{tps:<9} {int(ok) / span:<9.0f} {int(base)//1024:>3}→{int(peak)//1024} MiB{'':<7} "
      f"{int(cpu) / int(hz) / wall * 100:3.0f}%  {drops:>5} | ok {ok}, shed {shed}, timeout {tmo}; {refused or '-'}, {failed} {words}")
PY
    kill "$conn" "$edge" 2>/dev/null || true
    wait "$conn" "$edge" 2>/dev/null || true
  done
done
