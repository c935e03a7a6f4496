#!/usr/bin/env bash
# lifeboat side by side with the haproxy chain an operator would deploy
# instead, on loopback, same certificates (`lifeboat pki`), same apps, same
# loads, in one run, alternating between the chains load by load:
#
#   haproxy:       app client -> hop 1 (plain in, TLS out with alice's certificate)
#                  -> hop 2 (TLS in, `verify required`; TLS out with a client certificate)
#                  -> hop 3 (TLS in, `verify required`; plain out) -> app
#   lifeboat QUIC: app client -> client forward listener -> edge -> connector -> app
#                  (client and connector `transport = "quic"`)
#   lifeboat TLS:  the same with `transport = "tls"` for client and connector
#   floor:         app client -> 3 haproxy hops in plain TCP (no TLS, no
#                  checks) -> app: what three relays cost on this machine
#                  at the least (bulk and wrk loads only)
#
# Loads: iperf3 with 1 and 8 streams (an iperf3 server is the app); nginx
# serving a 1 KiB file with keepalive off under wrk -c32 (new flows/s) and
# -c1 (p50 latency; direct to nginx too, for the latency each chain adds);
# idle connections held by a small python client (RSS per idle connection
# at the edge / haproxy hop 2, and over the chain's three processes, each
# chain measured first thing on its fresh processes); the DR stampede
# (`lifeboat loadgen --clients N`, lifeboat only). Prints one table: each
# figure for haproxy, lifeboat QUIC and lifeboat TLS, and lifeboat's
# ratios to haproxy, all from this one run (throughput and latency: the
# median of ROUNDS rounds; memory and the stampede: measured once).
#
# Installs haproxy, iperf3, nginx and wrk (apt-get) when missing. Loopback
# and ports 29001-29099 only; every load is bounded in count and time;
# everything it started is killed by PID when it exits.
#
#   usage: benches/side_by_side.sh [--short] [path-to-lifeboat-binary]
#          (default target/release/lifeboat; --short: about a second per
#          load and small counts, for CI: tests/side_by_side.rs)
#   env:   ROUNDS=3 SECONDS_PER_LOAD=8 IDLE_CONNS=1000 STAMPEDE_CLIENTS=1000
#          LOADS="idle wrk1 wrk32 iperf1 iperf8 stampede" (the loads to run;
#          the table leaves the others out)
#          PERF=DIR (perf profiles of the QUIC chain's edge and client during
#          its first 1-stream iperf3 run; PERF_ARGS="-g" by default, or e.g.
#          "--call-graph dwarf" for callers)  KEEP=1 (keep the work folder)
set -euo pipefail
SHORT=
if [ "${1:-}" = --short ]; then SHORT=1; shift; fi
BIN=${1:-target/release/lifeboat}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or give the binary's path)" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
[ -z "${PERF:-}" ] || PERF=$(mkdir -p "$PERF" && cd "$PERF" && pwd)
if [ -n "$SHORT" ]; then
  ROUNDS=${ROUNDS:-1} SECS=${SECONDS_PER_LOAD:-1} IDLE=${IDLE_CONNS:-100} STAMPEDE=${STAMPEDE_CLIENTS:-50}
else
  ROUNDS=${ROUNDS:-3} SECS=${SECONDS_PER_LOAD:-8} IDLE=${IDLE_CONNS:-1000} STAMPEDE=${STAMPEDE_CLIENTS:-1000}
fi
export PATH=$PATH:/usr/sbin:/sbin

need=()
for tool in haproxy iperf3 nginx wrk python3 curl; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

# Ports: the apps, each haproxy hop and each lifeboat chain's edge and
# forward listeners; app k (1 iperf3, 2 nginx, 3 idle) is reached at
# <entry>+k.
IPERF=29001 NGINX=29002 IDLEAPP=29003
HOP1=29010 HOP2=29020 HOP3=29030 FLOOR1=29060 FLOOR2=29070 FLOOR3=29080
QEDGE=29040 QFWD=29040 TEDGE=29050 TFWD=29050
TD=side.lifeboat.test APPHOST=app.side.test
for p in $(seq 29001 29003) $(seq 29011 29013) $(seq 29021 29023) $(seq 29031 29033) $(seq 29040 29043) $(seq 29050 29053) \
  $(seq 29061 29063) $(seq 29071 29073) $(seq 29081 29083); do
  if [ -n "$(ss -Hltun "( sport = :$p )")" ]; then echo "port $p is in use: another run, or another program" >&2; exit 1; fi
done

W=$(mktemp -d)
pids=()
cleanup() {
  local p left
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do # 5 s to exit, then SIGKILL
    left=
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
    [ -n "$left" ] || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      echo "still running 5 s after SIGTERM, killed: $(ps -o args= -p "$p")" >&2
      { kill -KILL "$p" && wait "$p"; } 2>/dev/null || true
    fi
  done
  if [ -n "${KEEP:-}" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$W"
chmod 755 "$W" # nginx's workers (user nobody) read www/
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export RUST_LOG=${RUST_LOG:-warn}
log() { echo "[${SECONDS}s] $*" >&2; }

# ------------------------------------------------------------ certificates
# shellcheck source=bench/topology.sh
. "$HERE/../bench/topology.sh"
topology_pki "$TD"
# hop 3 is a TLS server: an edge-role certificate (server and client auth).
"$BIN" pki issue --dir pki --role edge --name edge2 --ip 127.0.0.1 --days 2 >/dev/null
mkdir hp
for n in alice edge1 edge2; do cat "pki/$n.pem" "pki/$n.key" >"hp/$n.pem"; done

# -------------------------------------------------------------- the apps
iperf3 -s -B 127.0.0.1 -p "$IPERF" >iperf3.log 2>&1 &
pids+=($!)
mkdir -p www nginx/logs
head -c 1024 /dev/urandom >www/1k.bin
chmod 755 www && chmod 644 www/1k.bin
cat >nginx/nginx.conf <<EOF
worker_processes 2;
error_log $W/nginx/logs/error.log warn;
pid $W/nginx/nginx.pid;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_timeout 0;
  server { listen 127.0.0.1:$NGINX backlog=4096; root $W/www; }
}
EOF
nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -g 'daemon off;' 2>nginx/logs/stderr.log &
pids+=($!)
# The idle app: answers a connection's first byte with one byte (so a
# client knows its connection went all the way), then reads to the end.
python3 - "$IDLEAPP" <<'PY' &
import asyncio, sys
async def answer(r, w):
    try:
        if await r.read(1):
            w.write(b"k")
            await r.read()
    except OSError:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(answer, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with s:
        await asyncio.sleep(3600)
asyncio.run(main())
PY
pids+=($!)

# --------------------------------------------------------- haproxy chain
# hop_cfg NAME IN_BASE BIND_TLS OUT_BASE SERVER_TLS: one listen section per app.
hop_cfg() {
  local name=$1 in=$2 bind=$3 out=$4 server=$5 k
  {
    printf 'global\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 5m\n  timeout server 5m\n'
    for k in 1 2 3; do
      printf 'listen app%s\n  bind 127.0.0.1:%s %s\n  server s 127.0.0.1:%s %s\n' \
        "$k" $((in + k)) "$bind" $((out + k)) "$server"
    done
  } >"hp/$name.cfg"
}
VERIFY="ca-file $W/pki/ca.pem verify required"
hop_cfg hop1 "$HOP1" "" "$HOP2" "ssl crt $W/hp/alice.pem $VERIFY"
hop_cfg hop2 "$HOP2" "ssl crt $W/hp/edge1.pem $VERIFY" "$HOP3" "ssl crt $W/hp/edge1.pem $VERIFY"
hop_cfg hop3 "$HOP3" "ssl crt $W/hp/edge2.pem $VERIFY" 29000 ""
# The floor: the same three hops in plain TCP.
hop_cfg floor1 "$FLOOR1" "" "$FLOOR2" ""
hop_cfg floor2 "$FLOOR2" "" "$FLOOR3" ""
hop_cfg floor3 "$FLOOR3" "" 29000 ""
declare -A PID
for h in hop1 hop2 hop3 floor1 floor2 floor3; do
  haproxy -db -f "hp/$h.cfg" >"hp/$h.log" 2>&1 &
  pids+=($!)
  PID[$h]=$!
done

# --------------------------------------------------------- lifeboat chains
# lb_chain DIR TRANSPORT EDGE_PORT FWD_BASE: edge, connector and client
# (forward listeners FWD_BASE+k to app k) in DIR, both tunnels TRANSPORT.
lb_chain() {
  local dir=$1 transport=$2 port=$3 fwd=$4 k
  mkdir "$dir"
  ln -s ../pki "$dir/pki"
  (
    cd "$dir"
    # The stampede's clients share alice's certificate: allow them the
    # tunnels. A short drain: flows still open at the end are not waited for.
    topology_configs "$TD" "$port" "$APPHOST" "$IPERF-$IDLEAPP" "$transport" "" \
      "max_tunnels_per_identity = 100000
drain_timeout = \"1s\""
    sed -i "s/^transport = \"quic\"/transport = \"$transport\"/" connector.toml
    printf '[limits]\ndrain_timeout = "1s"\n' >>connector.toml
    for k in 1 2 3; do
      printf '[[forward]]\nlisten = "127.0.0.1:%s"\nto = "%s:%s"\n' $((fwd + k)) "$APPHOST" $((29000 + k)) >>client.toml
    done
  )
  local role
  for role in edge connector client; do
    "$BIN" "$role" -c "$dir/$role.toml" 2>"$dir/$role.log" &
    pids+=($!)
    PID[$dir-$role]=$!
  done
}
lb_chain quic quic "$QEDGE" "$QFWD"
lb_chain tls tls "$TEDGE" "$TFWD"

CHAINS=(haproxy quic tls)
declare -A ENTRY=([direct]=29000 [haproxy]=$HOP1 [quic]=$QFWD [tls]=$TFWD [floor]=$FLOOR1)
declare -A MIDDLE=([haproxy]=${PID[hop2]} [quic]=${PID[quic-edge]} [tls]=${PID[tls-edge]})
declare -A ALL=([haproxy]="${PID[hop1]} ${PID[hop2]} ${PID[hop3]}"
  [quic]="${PID[quic-client]} ${PID[quic-edge]} ${PID[quic-connector]}"
  [tls]="${PID[tls-client]} ${PID[tls-edge]} ${PID[tls-connector]}")

# Ready: a request through each chain to nginx succeeds (bounded).
for c in direct "${CHAINS[@]}" floor; do
  ok=
  for _ in $(seq 150); do
    if curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$((ENTRY[$c] + 2))/1k.bin"; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { log "chain $c did not come up; logs in $W (KEEP=1 keeps them)"; tail -n 5 "$W"/*/*.log >&2 || true; exit 1; }
done
log "all chains up (work folder $W)"

# ------------------------------------------------------------ measurements
# Each result is a line "KEY CHAIN VALUE" in results.txt.
record() { echo "$1 $2 $3" >>results.txt; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
rss_sum() { local s=0 p; for p in "$@"; do s=$((s + $(rss "$p"))); done; echo "$s"; }
idle_at_app() { ss -Htn state established "( sport = :$IDLEAPP )" | wc -l; }

# holder PORT N HOLD OUT: N idle connections to PORT (32 opening at once),
# each counted once the idle app's answer to its first byte came through (a connection the
# chain closed is opened again, up to 4 times); writes how many it holds to
# OUT, then holds them HOLD seconds or until OUT.release exists.
holder() {
  timeout $(($3 + 120)) python3 - "$@" <<'PY'
import os, socket, sys, time
from concurrent.futures import ThreadPoolExecutor
port, n, hold, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
retries = 0
def one(_):
    global retries
    for _ in range(5):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"x")
            if s.recv(1) == b"k":
                return s
            s.close()
        except OSError:
            pass
        retries += 1
        time.sleep(0.2)
with ThreadPoolExecutor(32) as ex:
    socks = list(ex.map(one, range(n)))
with open(out, "w") as f:
    f.write(f"{sum(s is not None for s in socks)} {retries}\n")
end = time.monotonic() + hold
while time.monotonic() < end and not os.path.exists(out + ".release"):
    time.sleep(0.05)
PY
}

# hold CHAIN N: N idle connections through CHAIN to the idle app; once all
# are through, the RSS growth per connection of the middle process and of
# the chain's three (after a warm-up of 20 connections).
hold() {
  local c=$1 n=$2 mid0 all0 pid held=0 retries=0
  rm -f held.out held.out.release
  holder "$((ENTRY[$c] + 3))" 20 0 held.out >/dev/null || true
  wait_idle_app 0
  sleep 0.5
  mid0=$(rss "${MIDDLE[$c]}")
  # shellcheck disable=SC2086 # a list of PIDs
  all0=$(rss_sum ${ALL[$c]})
  rm -f held.out
  holder "$((ENTRY[$c] + 3))" "$n" 60 held.out &
  pid=$!
  for _ in $(seq 1200); do [ -s held.out ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  [ -s held.out ] && read -r held retries <held.out
  sleep 1
  if [ "$held" -ge "$n" ]; then
    record idle_mid "$c" "$(awk -v a="$mid0" -v b="$(rss "${MIDDLE[$c]}")" -v n="$n" 'BEGIN { printf "%.2f", (b - a) / n }')"
    # shellcheck disable=SC2086
    record idle_all "$c" "$(awk -v a="$all0" -v b="$(rss_sum ${ALL[$c]})" -v n="$n" 'BEGIN { printf "%.2f", (b - a) / n }')"
  else
    log "hold $c: only $held of $n idle connections came through"
  fi
  [ "$retries" = 0 ] || log "hold $c: $retries connections closed by the chain before the app answered, opened again"
  touch held.out.release
  wait "$pid" 2>/dev/null || true
  wait_idle_app 0
}
wait_idle_app() { for _ in $(seq 100); do [ "$(idle_at_app)" -le "$1" ] && return; sleep 0.1; done; }

# wrk_run KEY CHAIN CONNS: wrk against nginx's 1 KiB file through CHAIN.
wrk_run() {
  local key=$1 c=$2 conns=$3 out
  out=$(timeout $((SECS + 20)) wrk -t "$((conns < 2 ? 1 : 2))" -c "$conns" -d "${SECS}s" --timeout 5s --latency \
    "http://127.0.0.1:$((ENTRY[$c] + 2))/1k.bin" 2>&1) || { log "wrk $c -c$conns failed: $out"; return 0; }
  echo "== wrk $c -c$conns" >>wrk.log
  echo "$out" >>wrk.log
  if grep -qE 'Socket errors|Non-2xx' <<<"$out"; then log "wrk $c -c$conns: $(grep -E 'Socket errors|Non-2xx' <<<"$out")"; fi
  if [ "$key" = rps ]; then
    record rps "$c" "$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")"
  else
    record p50 "$c" "$(awk '$1 == "50%" {
      v = $2; u = 1
      if (v ~ /us$/) { sub(/us$/, "", v) } else if (v ~ /ms$/) { sub(/ms$/, "", v); u = 1000 } else if (v ~ /s$/) { sub(/s$/, "", v); u = 1000000 }
      printf "%.1f", v * u }' <<<"$out")"
  fi
}

# iperf CHAIN STREAMS: iperf3 upload through CHAIN, Gbit/s received.
iperf() {
  local c=$1 p=$2 out prof=()
  if [ -n "${PERF:-}" ] && [ "$c" = quic ] && [ "$p" = 1 ] && [ ! -e "$PERF/edge-quic-iperf1.data" ]; then
    # shellcheck disable=SC2086 # PERF_ARGS: several arguments
    perf record -e cpu-clock -F 999 ${PERF_ARGS:--g} -p "${PID[quic-edge]}" -o "$PERF/edge-quic-iperf1.data" 2>"$PERF/edge.log" &
    prof+=($!)
    # shellcheck disable=SC2086
    perf record -e cpu-clock -F 999 ${PERF_ARGS:--g} -p "${PID[quic-client]}" -o "$PERF/client-quic-iperf1.data" 2>"$PERF/client.log" &
    prof+=($!)
    pids+=("${prof[@]}")
    sleep 0.5
  fi
  out=$(timeout $((SECS + 20)) iperf3 -c 127.0.0.1 -p "$((ENTRY[$c] + 1))" -t "$SECS" -P "$p" -J 2>&1) || out=
  if [ ${#prof[@]} -gt 0 ]; then kill -INT "${prof[@]}"; wait "${prof[@]}" || true; fi
  local gbps
  gbps=$(python3 -c 'import json, sys; print("{:.3f}".format(json.loads(sys.stdin.read())["end"]["sum_received"]["bits_per_second"] / 1e9))' <<<"$out" 2>/dev/null) ||
    { log "iperf3 $c -P$p failed: $(head -c 300 <<<"$out")"; return 0; }
  record "iperf$p" "$c" "$gbps"
}

# stampede CHAIN: N lifeboat clients arriving at once at CHAIN's edge.
stampede() {
  local c=$1 out
  out=$(timeout 300 "$BIN" loadgen -c "$c/client.toml" --target "$APPHOST:$IDLEAPP" --clients "$STAMPEDE" \
    --flows "$STAMPEDE" --concurrency "$STAMPEDE" --duration "$([ -n "$SHORT" ] && echo 30s || echo 60s)" \
    --transport "$c" --json 2>>"$c/loadgen.log") || true
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
if r.get("clients_served") == int(sys.argv[2]) and r.get("all_served_seconds"):
    print(r["all_served_seconds"], r["handshakes_per_second"])' "$out" "$STAMPEDE" >stampede.out 2>/dev/null || true
  if [ -s stampede.out ]; then
    record stampede_s "$c" "$(awk '{print $1}' stampede.out)"
    record stampede_tps "$c" "$(awk '{print $2}' stampede.out)"
  else
    log "stampede $c: not every client served: $(head -c 400 <<<"$out")"
  fi
}

LOADS=" ${LOADS:-idle wrk1 wrk32 iperf1 iperf8 stampede} "
want() { [[ "$LOADS" == *" $1 "* ]]; }
start=$(date +%s)
if want idle; then
  log "== idle connections ($IDLE each, fresh processes)"
  for c in "${CHAINS[@]}"; do hold "$c" "$IDLE"; done
fi
for r in $(seq "$ROUNDS"); do
  log "== round $r of $ROUNDS:$LOADS(${SECS} s each)"
  ! want wrk1 || for c in direct "${CHAINS[@]}" floor; do wrk_run p50 "$c" 1; done
  ! want wrk32 || for c in direct "${CHAINS[@]}" floor; do wrk_run rps "$c" 32; done
  ! want iperf1 || for c in direct "${CHAINS[@]}" floor; do iperf "$c" 1; done
  ! want iperf8 || for c in direct "${CHAINS[@]}" floor; do iperf "$c" 8; done
done
if want stampede; then
  log "== stampede ($STAMPEDE clients)"
  for c in quic tls; do stampede "$c"; done
fi
log "measured in $(($(date +%s) - start)) s"

# ------------------------------------------------------------------ table
python3 - "$ROUNDS" "$SECS" "$IDLE" "$STAMPEDE" "$LOADS" <<'PY'
import collections, statistics, sys
rounds, secs, idle, stampede, loads = sys.argv[1:]
loads = loads.split()
vals = collections.defaultdict(list)
for line in open("results.txt"):
    key, chain, v = line.split()
    try:
        vals[key, chain].append(float(v))
    except ValueError:
        pass
def med(key, chain):
    v = vals.get((key, chain))
    return statistics.median(v) if v else None
for c in ("haproxy", "quic", "tls", "floor"):  # the latency each chain adds to a new flow
    a, d = med("p50", c), med("p50", "direct")
    if a is not None and d is not None:
        vals["added", c] = [a - d]
def f(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"
direct = lambda key, digits: f(med(key, "direct"), digits)
rows = [
    ("iperf1", "iperf1", f"bulk, iperf3 1 stream, Gbit/s (direct {direct('iperf1', 1)})", 2, False),
    ("iperf8", "iperf8", f"bulk, iperf3 8 streams, Gbit/s (direct {direct('iperf8', 1)})", 2, False),
    ("wrk32", "rps", f"new flows/s: nginx 1 KiB, keepalive off, wrk -c32 (direct {direct('rps', 0)})", 0, False),
    ("wrk1", "p50", f"latency p50, same, wrk -c1, us (direct {direct('p50', 0)})", 0, False),
    ("wrk1", "added", "latency p50 added to direct, us", 0, False),
    ("idle", "idle_mid", f"RSS per idle connection at the edge / haproxy hop 2, KiB ({idle} held)", 1, False),
    ("idle", "idle_all", "RSS per idle connection, the chain's 3 processes, KiB", 1, False),
    ("stampede", "stampede_s", f"stampede, {stampede} clients at once: all served, s (lifeboat only)", 2, True),
    ("stampede", "stampede_tps", "stampede: tunnels up per second (lifeboat only)", 0, True),
]
rows = [r[1:] for r in rows if r[0] in loads]
missing = 0
print()
print(f"side by side: throughput and latency the median of {rounds} round(s) of {secs} s; ratio = lifeboat / haproxy")
print()
print("| load | haproxy | lifeboat QUIC | lifeboat TLS | QUIC / haproxy | TLS / haproxy | floor: 3 plain TCP relays |")
print("|---|---|---|---|---|---|---|")
for key, label, digits, only in rows:
    h, q, t, fl = (med(key, c) for c in ("haproxy", "quic", "tls", "floor"))
    ratio = lambda x: "-" if x is None or not h else f"{x / h:.2f}"
    cells = [f(q, digits), f(t, digits)]
    cells = (["n/a"] + cells + ["n/a", "n/a"]) if only else ([f(h, digits)] + cells + [ratio(q), ratio(t)])
    cells.append("n/a" if key.startswith(("idle", "stampede")) else f(fl, digits))
    missing += sum(c == "-" for c in cells)
    print(f"| {label} | " + " | ".join(cells) + " |")
sys.exit(1 if missing else 0)
PY
