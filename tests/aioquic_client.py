#!/usr/bin/env python3
"""A third-party QUIC client (aioquic) against the lifeboat edge.

Run by tests/tls_edge.rs. Connects with a client certificate and ALPN
`lifeboat/1`, opens a bidirectional stream, sends the CONNECT preamble and,
once the edge answers 200, an HTTP request to the app; checks the app's
body (the `/bytes/N` pattern, byte i == i % 251). A second stream on the
same connection asks for a destination outside the DR segments and must be
refused with 403 and its `Lifeboat-Error` word. Prints `key=value` lines;
exits non-zero on any mismatch.
"""

import argparse
import asyncio
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived, StreamReset


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.streams = {}

    def open(self):
        sid = self._quic.get_next_available_stream_id()
        q = asyncio.Queue()
        self.streams[sid] = q
        return sid, q

    def send(self, sid, data, end=False):
        self._quic.send_stream_data(sid, data, end_stream=end)
        self.transmit()

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived) and event.stream_id in self.streams:
            q = self.streams[event.stream_id]
            if event.data:
                q.put_nowait(event.data)
            if event.end_stream:
                q.put_nowait(None)
        elif isinstance(event, StreamReset) and event.stream_id in self.streams:
            self.streams[event.stream_id].put_nowait(
                RuntimeError(f"stream reset, code {event.error_code}")
            )


async def read_until(q, buf, pred):
    """Append chunks from q to buf until pred(buf); False at end of stream."""
    while not pred(buf):
        chunk = await q.get()
        if chunk is None:
            return False
        if isinstance(chunk, Exception):
            raise chunk
        buf.extend(chunk)
    return True


def head_of(buf):
    end = buf.find(b"\r\n\r\n")
    return buf[:end].decode("latin-1"), end + 4


def connect_request(dest):
    return f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n\r\n".encode()


async def main(a):
    cfg = QuicConfiguration(is_client=True, alpn_protocols=["lifeboat/1"])
    cfg.load_verify_locations(cafile=a.ca)
    cfg.load_cert_chain(a.cert, a.key)
    cfg.verify_mode = ssl.CERT_REQUIRED
    cfg.server_name = "localhost"  # a DNS name in the edge's certificate
    cfg.idle_timeout = 20.0
    async with connect(a.host, a.port, configuration=cfg, create_protocol=Client) as c:
        print(f"alpn={c._quic.tls.alpn_negotiated}")

        # A flow: CONNECT, the edge's 200, then HTTP to the app.
        sid, q = c.open()
        c.send(sid, connect_request(a.dest))
        buf = bytearray()
        if not await read_until(q, buf, lambda b: b"\r\n\r\n" in b):
            sys.exit(f"stream ended before an answer: {bytes(buf)!r}")
        answer, used = head_of(buf)
        print(f"answer={answer.splitlines()[0]}")
        if not answer.startswith("HTTP/1.1 200 "):
            sys.exit(f"not established: {answer!r}")
        del buf[:used]
        host = a.dest.rsplit(":", 1)[0]
        c.send(
            sid,
            f"GET /bytes/{a.bytes} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
            end=True,
        )
        await read_until(q, buf, lambda b: False)  # to the end of the stream
        app_head, used = head_of(buf)
        print(f"app={app_head.splitlines()[0]}")
        body = bytes(buf[used:])
        bad = next((i for i, x in enumerate(body) if x != i % 251), None)
        print(f"app_body={len(body)} pattern={'ok' if bad is None else f'differs at {bad}'}")
        if len(body) != a.bytes or bad is not None:
            sys.exit("app body mismatch")

        # A refusal on a second stream of the same connection.
        sid, q = c.open()
        c.send(sid, connect_request(a.refused_dest), end=True)
        buf = bytearray()
        await read_until(q, buf, lambda b: False)
        head, _ = head_of(buf)
        word = next(
            (
                line.split(":", 1)[1].strip()
                for line in head.splitlines()
                if line.lower().startswith("lifeboat-error:")
            ),
            "",
        )
        print(f"refused={head.splitlines()[0]} word={word}")
        if not head.startswith("HTTP/1.1 403 ") or word != "not-dr-segment":
            sys.exit(f"expected 403 not-dr-segment: {head!r}")
        c.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--refused-dest", required=True)
    p.add_argument("--bytes", type=int, required=True)
    args = p.parse_args()
    asyncio.run(asyncio.wait_for(main(args), 30))
