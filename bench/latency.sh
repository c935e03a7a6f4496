#!/usr/bin/env bash
# Where a request's latency goes: one client (python, TCP_NODELAY) against
# an echo app, directly, through three plain TCP relays (haproxy in TCP
# mode: no TLS, no checks, the least three hops cost on this machine), and
# through lifeboat's chain (client forward listener -> edge -> connector)
# with QUIC and with TLS tunnels. Two figures each, medians:
#   new flow: connect, send 5 bytes, until their echo is back (what a
#             request-first app waits on a new connection; the connect's
#             own handshake is not counted, as wrk does not count it);
#   data RTT: one byte there and back on an established connection.
# Loopback and ports 28180-28199 only; bounded counts; everything started
# is stopped by PID when it exits.
#   usage: bench/latency.sh [path-to-lifeboat-binary] [rounds]
#          (default target/release/lifeboat, 2 rounds; the chains alternate)
set -euo pipefail
BIN=${1:-target/release/lifeboat}
ROUNDS=${2:-2}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or give the binary's path)" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
export PATH=$PATH:/usr/sbin:/sbin
command -v haproxy >/dev/null || { echo "needs haproxy (apt-get install -y haproxy)" >&2; exit 1; }
APP=28181 RELAY=28191 EDGE=28183 FWD=28182
W=$(mktemp -d)
pids=()
stop() { # stop PIDS...: TERM, then wait until they are gone
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -9 "$p" 2>/dev/null || true; done
}
cleanup() { stop "${pids[@]}"; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"

. "$HERE/topology.sh"
topology_echo_app "$APP"

# Three relays in plain TCP, RELAY -> RELAY+1 -> RELAY+2 -> the app.
for i in 0 1 2; do
  out=$((RELAY + i + 1)); [ "$i" = 2 ] && out=$APP
  printf 'global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 5m\n  timeout server 5m\nlisten a\n  bind 127.0.0.1:%s\n  server s 127.0.0.1:%s\n' \
    $((RELAY + i)) "$out" >"relay$i.cfg"
  haproxy -db -f "relay$i.cfg" >"relay$i.log" 2>&1 &
  pids+=($!)
done

topology_pki latency.lifeboat.test
# lifeboat TRANSPORT: start edge, connector and client (forward FWD -> the
# app) with TRANSPORT tunnels; their PIDs in LB.
lifeboat() {
  topology_configs latency.lifeboat.test "$EDGE" app.latency.test "$APP" "$1"
  sed -i "s/^transport = \"quic\"/transport = \"$1\"/" connector.toml
  printf '[[forward]]\nlisten = "127.0.0.1:%s"\nto = "app.latency.test:%s"\n' "$FWD" "$APP" >>client.toml
  LB=()
  local role
  for role in edge connector client; do
    RUST_LOG=warn "$BIN" "$role" -c "$role.toml" 2>"$role-$1.log" &
    LB+=($!)
  done
  pids+=("${LB[@]}")
}

# measure NAME PORT: the two figures through PORT.
measure() {
  python3 - "$1" "$2" <<'PY'
import socket, statistics, sys, time
name, port = sys.argv[1], int(sys.argv[2])
def conn():
    deadline = time.time() + 15
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
class Ended(Exception):
    pass
def echo(s, msg):
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        d = s.recv(64)
        if not d:
            raise Ended(f"{name}: the connection ended before the echo")
        got += d
# Warm up: until the chain carries a flow (its tunnels come up), then 50.
deadline = time.time() + 15
while True:
    s = conn()
    try:
        echo(s, b"x")
        break
    except (Ended, OSError):
        if time.time() > deadline:
            raise
        time.sleep(0.2)
    finally:
        s.close()
for _ in range(50):
    s = conn(); echo(s, b"x"); s.close()
new = []
for _ in range(400):
    s = conn()
    t = time.perf_counter(); echo(s, b"hello"); new.append((time.perf_counter() - t) * 1e6)
    s.close()
s = conn(); echo(s, b"x")
rtt = []
for _ in range(2000):
    t = time.perf_counter(); echo(s, b"y"); rtt.append((time.perf_counter() - t) * 1e6)
print(f"| {name} | {statistics.median(new):.0f} | {statistics.median(rtt):.0f} |")
PY
}

echo "| path | new flow: first echo p50, us | data RTT p50, us |"
echo "|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  measure "direct to the app" "$APP"
  measure "3 plain TCP relays (haproxy, mode tcp)" "$RELAY"
  for t in quic tls; do
    lifeboat "$t"
    measure "lifeboat, $t tunnels" "$FWD"
    stop "${LB[@]}"
  done
done
