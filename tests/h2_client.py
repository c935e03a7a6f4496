#!/usr/bin/env python3
"""A third-party HTTP/2 client (the `h2` library from PyPI) on a lifeboat
edge's TLS listener: one TLS connection with a client certificate and ALPN
`h2`, standard CONNECT streams on it (RFC 9113 8.5), as any HTTP/2 proxy
client would send them.

usage: h2_client.py HOST PORT SERVER_NAME CA CERT KEY DR_AUTHORITY NON_DR_AUTHORITY BYTES

On one connection, at once:
  - CONNECT DR_AUTHORITY, then `POST /echo` of BYTES patterned bytes through
    the flow (half-closed after the body), the app's echo read back;
  - CONNECT NON_DR_AUTHORITY (refused: not a DR segment);
  - a GET (not CONNECT: refused `method`);
  - CONNECT DR_AUTHORITY with a 10,000-byte header (over the edge's 8 KiB
    `preamble_bytes`: refused `too-large`).
Prints one JSON object: the ALPN, the echo's outcome, and each refusal's
status, `lifeboat-error` word and body line.
"""

import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def pattern(n):
    block = bytes(range(251))
    return (block * (n // len(block) + 1))[:n]


class Stream:
    def __init__(self):
        self.status = None
        self.headers = {}
        self.data = bytearray()
        self.ended = False
        self.reset = None


def main():
    host, port, name, ca, cert, key, dr, non_dr, nbytes = sys.argv[1:10]
    nbytes = int(nbytes)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((host, int(port)), timeout=30)
    sock = ctx.wrap_socket(raw, server_hostname=name)
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams = {}

    def pump():
        data = sock.recv(1 << 16)
        if not data:
            raise SystemExit("the edge closed the connection")
        for ev in conn.receive_data(data):
            s = streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived):
                s.headers = dict(ev.headers)
                s.status = int(s.headers[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                s.data += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                s.ended = True
            elif isinstance(ev, h2.events.StreamReset):
                s.reset = int(ev.error_code)
                s.ended = True
        sock.sendall(conn.data_to_send())

    def request(headers, end_stream=False):
        sid = conn.get_next_available_stream_id()
        streams[sid] = Stream()
        conn.send_headers(sid, headers, end_stream=end_stream)
        sock.sendall(conn.data_to_send())
        return sid

    flow = request([(":method", "CONNECT"), (":authority", dr)])
    refused = request([(":method", "CONNECT"), (":authority", non_dr)])
    get = request(
        [(":method", "GET"), (":scheme", "https"), (":authority", dr), (":path", "/")],
        end_stream=True,
    )
    big = request([(":method", "CONNECT"), (":authority", dr), ("x-pad", "p" * 10000)])
    while streams[flow].status is None:
        pump()
    result = {"alpn": sock.selected_alpn_protocol(), "flow_status": streams[flow].status}
    if streams[flow].status == 200:
        body = pattern(nbytes)
        head = (
            f"POST /echo HTTP/1.1\r\nHost: {dr}\r\nContent-Length: {nbytes}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        out = memoryview(head + body)
        while out:
            n = min(conn.local_flow_control_window(flow), conn.max_outbound_frame_size, len(out))
            if n == 0:
                pump()
                continue
            conn.send_data(flow, out[:n].tobytes())
            sock.sendall(conn.data_to_send())
            out = out[n:]
        conn.end_stream(flow)
        sock.sendall(conn.data_to_send())
        while not streams[flow].ended:
            pump()
        got = bytes(streams[flow].data)
        answer_head, _, echoed = got.partition(b"\r\n\r\n")
        result["echo_head"] = answer_head.split(b"\r\n")[0].decode(errors="replace")
        result["echo_len"] = len(echoed)
        result["echo_exact"] = echoed == body
        result["flow_reset"] = streams[flow].reset
    while not (streams[refused].ended and streams[get].ended and streams[big].ended):
        pump()
    result["refusals"] = [
        {
            "status": streams[s].status,
            "word": streams[s].headers.get("lifeboat-error"),
            "line": bytes(streams[s].data).decode(errors="replace"),
        }
        for s in (refused, get, big)
    ]
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
