#!/usr/bin/env bash
# CPU and page faults per GB carried, two lifeboat builds side by side:
# iperf3 (one stream, 6 s) through the QUIC chain (client forward listener,
# edge, connector, iperf3 server as the app) on loopback, builds A and B
# alternately ROUNDS times, each on fresh processes. CPU per byte moves far
# less than Gbit/s on a shared machine, so it is the figure to compare.
#   usage: bench/cpu_per_gb.sh BIN_A BIN_B [ROUNDS]   (ports 27201, 27300, 27443)
set -uo pipefail
BINA=$1; BINB=$2; R=${3:-4}
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"
BIN=$BINA
. "$HERE/topology.sh"
topology_pki bk.lifeboat.test
iperf3 -s -B 127.0.0.1 -p 27201 >/dev/null 2>&1 & pids+=($!)
topology_configs bk.lifeboat.test 27443 app.bk.test 27201 quic "" ""
printf '[[forward]]\nlisten = "127.0.0.1:27300"\nto = "app.bk.test:27201"\n' >>client.toml
export RUST_LOG=error
# cpu+faults PID: CPU ticks (user+system) and minor faults so far.
stat_of() { awk '{print $14+$15, $10}' "/proc/$1/stat"; }
run() {
  local which=$1 bin=$BINA e c k p a b
  [ "$which" = B ] && bin=$BINB
  "$bin" edge -c edge.toml & e=$!
  "$bin" connector -c connector.toml & c=$!
  "$bin" client -c client.toml & k=$!
  sleep 2
  local c0=0 f0=0 c1=0 f1=0
  for p in $e $c $k; do read -r a b < <(stat_of $p); c0=$((c0 + a)); f0=$((f0 + b)); done
  local bytes
  bytes=$(timeout 30 iperf3 -c 127.0.0.1 -p 27300 -t 6 -J 2>/dev/null |
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bytes"]))' 2>/dev/null || echo 0)
  for p in $e $c $k; do read -r a b < <(stat_of $p); c1=$((c1 + a)); f1=$((f1 + b)); done
  kill $k $c $e; wait $k $c $e 2>/dev/null
  local tick; tick=$(getconf CLK_TCK)
  awk -v b="$bytes" -v c=$((c1 - c0)) -v f=$((f1 - f0)) -v w="$which" -v t="$tick" 'BEGIN {
    if (b == 0) { printf "%s failed\n", w; exit }
    printf "%s %.2f Gbit/s  %.0f CPU-ms/GB  %.0f faults/GB\n", w, b * 8 / 6e9, c * 1000 / t / (b / 1e9), f / (b / 1e9) }'
}
for _ in $(seq "$R"); do run A; run B; done
