#!/usr/bin/env python3
"""A third-party TLS 1.3 client (tlslite-ng, pure Python) that offers only
the hybrid post-quantum group X25519MLKEM768, against the edge's TLS
listener used as an HTTPS proxy.

Run by tests/tls_edge.rs. Presents a client certificate, offers ALPN
`http/1.1` and exactly one key-exchange group (`x25519mlkem768`, with its
key share), sends `CONNECT <dest> HTTP/1.1`, then `GET /bytes/N` to the app
and checks the body pattern (byte i == i % 251). A handshake can only
complete if the edge agreed to X25519MLKEM768: the client offers nothing
else. Prints `key=value` lines; exits 1 on a handshake failure (printing
`handshake=failed`) and 2 on any other mismatch.
"""

import argparse
import socket
import sys

from tlslite import HandshakeSettings, TLSConnection, X509CertChain
from tlslite.utils.keyfactory import parsePEMKey


def read_head(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.read(max=4096, min=1)
        if not chunk:
            break
        head += chunk
    return head.partition(b"\r\n\r\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--bytes", type=int, default=4096)
    a = p.parse_args()

    chain = X509CertChain()
    with open(a.cert) as f:
        chain.parsePemList(f.read())
    with open(a.key) as f:
        key = parsePEMKey(f.read(), private=True)

    settings = HandshakeSettings()
    settings.minVersion = (3, 4)
    settings.maxVersion = (3, 4)
    settings.eccCurves = ["x25519mlkem768"]
    settings.keyShares = ["x25519mlkem768"]
    settings.dhGroups = []
    # tlslite-ng 0.8.2 compresses the client's Certificate whenever its own
    # ClientHello offered compression, even if the server's
    # CertificateRequest did not (RFC 8879 section 3): send it plain.
    settings.certificate_compression_send = []

    sock = socket.create_connection((a.host, a.port), timeout=20)
    conn = TLSConnection(sock)
    try:
        conn.handshakeClientCert(chain, key, settings=settings, alpn=[b"http/1.1"])
    except Exception as e:  # the edge refused the only group offered
        print(f"handshake=failed error={type(e).__name__}: {e}")
        return 1
    print("handshake=ok group=x25519mlkem768")
    print(f"version={conn.version} alpn={conn.next_proto.decode() if conn.next_proto else ''}")

    conn.write(f"CONNECT {a.dest} HTTP/1.1\r\nHost: {a.dest}\r\n\r\n".encode())
    head, _, _ = read_head(conn)
    answer = head.split(b"\r\n", 1)[0].decode(errors="replace")
    print(f"answer={answer}")
    if " 200 " not in answer + " ":
        return 2
    conn.write(f"GET /bytes/{a.bytes} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode())
    head, _, body = read_head(conn)
    while True:
        chunk = conn.read(max=65536, min=1)
        if not chunk:
            break
        body += chunk
    ok = len(body) == a.bytes and all(b == i % 251 for i, b in enumerate(body))
    print(f"app_body={len(body)} pattern={'ok' if ok else 'bad'}")
    conn.close()
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
