//! Full mutual-TLS 1.3 handshakes between a client and an edge built from
//! the same `Trust` configs the processes use (pinned CA, SPIFFE checks,
//! CRL), in memory, with each `[tls] key_exchange`: `hybrid`
//! (X25519MLKEM768, the default) next to `classical` (X25519), in the same
//! run. This is the CPU one handshake costs both sides together; the bytes
//! on the wire are printed once (the hybrid ClientHello spans two QUIC
//! Initial packets).
//!
//! `cargo bench --bench handshake`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use lifeboat::pki::{self, IssueOptions};
use lifeboat::trust::{KeyExchange, Role, TlsFiles, Trust};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

const TD: &str = "lifeboat.test";
const ALPN: &[&[u8]] = &[b"lifeboat/1"];

fn trust(dir: &Path, role: Role, name: &str, key_exchange: KeyExchange) -> Arc<Trust> {
    let (cert, key) = pki::issue(&IssueOptions::new(dir, role, name)).expect("issue");
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert,
        key,
        crl: Some(dir.join("ca.crl")),
        key_exchange,
    };
    Trust::load(files, TD).expect("trust")
}

/// One full handshake; returns the bytes the client and the server sent.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> (usize, usize) {
    let name = ServerName::try_from("edge.invalid").expect("name");
    let mut c = ClientConnection::new(Arc::clone(client), name).expect("client");
    let mut s = ServerConnection::new(Arc::clone(server)).expect("server");
    let (mut sent_c, mut sent_s) = (0, 0);
    let mut buf = Vec::with_capacity(8192);
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        sent_c += buf.len();
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).expect("server read");
            s.process_new_packets().expect("server handshake");
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        sent_s += buf.len();
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).expect("client read");
            c.process_new_packets().expect("client handshake");
        }
    }
    (sent_c, sent_s)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    pki::init(dir.path(), TD, 365).expect("pki init");
    let mut g = c.benchmark_group("full_mtls_handshake");
    for kx in [KeyExchange::Classical, KeyExchange::Hybrid] {
        let edge = trust(dir.path(), Role::Edge, "edge-1", kx);
        let server = Arc::new(edge.server_config(&[Role::Client], ALPN));
        let mut client = trust(dir.path(), Role::Client, "alice", kx).client_config(ALPN);
        // Full handshakes only: no session to resume.
        client.resumption = rustls::client::Resumption::disabled();
        let client = Arc::new(client);
        let (to_edge, from_edge) = handshake(&client, &server);
        eprintln!(
            "{}: client sends {to_edge} bytes, edge sends {from_edge} bytes",
            kx.as_str()
        );
        g.bench_function(kx.as_str(), |b| {
            b.iter(|| black_box(handshake(&client, &server)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
