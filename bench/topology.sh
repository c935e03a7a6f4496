# Sourced by the bench scripts: the certificates, the app and the configs of
# a loopback DR topology (one edge, one connector, one client identity) in
# the current folder. Needs BIN (the lifeboat binary) and `pids` (an array
# the caller's cleanup kills).

# topology_pki TRUST_DOMAIN: a CA and the edge1, c1 and alice certificates.
topology_pki() {
  "$BIN" pki init --dir pki --trust-domain "$1" --days 2 >/dev/null
  "$BIN" pki issue --dir pki --role edge --name edge1 --ip 127.0.0.1 --days 2 >/dev/null
  "$BIN" pki issue --dir pki --role connector --name c1 --group dc1-dr --days 2 >/dev/null
  "$BIN" pki issue --dir pki --role client --name alice --days 2 >/dev/null
}

# topology_app PORT: an app that accepts connections, reads to the end and
# closes (flows stay idle as long as their client holds them); returns
# once it listens.
topology_app() {
  python3 - "$1" <<'PY' &
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
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
}

# topology_echo_app PORT: an app that sends back what it reads; returns
# once it listens.
topology_echo_app() {
  python3 - "$1" <<'PY' &
import asyncio, sys
async def echo(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except OSError:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with s:
        await asyncio.sleep(3600)
asyncio.run(main())
PY
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
}

# topology_configs TRUST_DOMAIN EDGE_PORT APP_HOST APP_PORT CLIENT_TRANSPORT [EDGE_LISTEN [EDGE_LIMITS]]:
# edge.toml (QUIC and TLS on EDGE_PORT, DR on, one segment APP_HOST:APP_PORT;
# EDGE_LISTEN added to [listen], EDGE_LIMITS as [limits]), connector.toml
# (QUIC, APP_HOST resolving to 127.0.0.1) and client.toml (alice); every
# role's [tls] key_exchange is $KEY_EXCHANGE when set (hybrid, classical).
topology_configs() {
  local td=$1 port=$2 host=$3 app=$4 transport=$5 listen=${6:-} limits=${7:-}
  local kx=${KEY_EXCHANGE:+key_exchange = \"$KEY_EXCHANGE\"}
  cat > edge.toml <<TOML
trust_domain = "$td"
[tls]
ca = "pki/ca.pem"
cert = "pki/edge1.pem"
key = "pki/edge1.key"
$kx
[listen]
quic = "127.0.0.1:$port"
tls = "127.0.0.1:$port"
$listen
[dr]
trigger = "static:on"
[limits]
$limits
[[connector_group]]
name = "dc1-dr"
dr = true
[[server_group]]
name = "dc1"
connector_groups = ["dc1-dr"]
[[segment]]
name = "app"
dr = true
domains = ["$host"]
tcp_ports = ["$app"]
server_groups = ["dc1"]
TOML
  cat > connector.toml <<TOML
trust_domain = "$td"
edges = ["127.0.0.1:$port"]
transport = "quic"
[tls]
ca = "pki/ca.pem"
cert = "pki/c1.pem"
key = "pki/c1.key"
$kx
[dns]
hosts = { "$host" = "127.0.0.1" }
TOML
  cat > client.toml <<TOML
trust_domain = "$td"
edges = ["127.0.0.1:$port"]
transport = "$transport"
[tls]
ca = "pki/ca.pem"
cert = "pki/alice.pem"
key = "pki/alice.key"
$kx
[listen]
socks = "127.0.0.1:0"
TOML
}
