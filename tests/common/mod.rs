//! Shared harness for the integration tests: a whole DR topology (app, edge,
//! connectors, clients) on 127.0.0.1 with port 0 everywhere, certificates
//! from `lifeboat::pki` in a tempdir, configs written as TOML text and
//! loaded with `lifeboat::config::from_text`, each role with its own
//! `Metrics` so tests assert on counters.
//!
//! Start one with the [`Builder`] (DR from a fixed mode, a file or the DNS
//! server of [`DnsServer`]; the transport; edges, connectors, clients), or
//! part by part with a [`Rig`] (any `[listen]`, restarts, agents started
//! before their edge); the real binary
//! with [`Proc`] (`proc`). Wait on conditions with [`eventually`], never
//! bare sleeps. Everything stops by itself: dropping a [`Topology`] or a
//! [`Rig`] cancels its drain token, every role bounds its drain by
//! `drain_timeout`, and the test's runtime ends the rest.
//!
//! - `certs`: the CA and its certificates;
//! - `parts`: the [`Rig`], config text and roles started from it;
//! - `builder`: the [`Builder`], the one way to start a [`Topology`];
//! - `topology`: a running topology, its waits and counters;
//! - `dns`: the DNS server, a lone DR trigger, log capture, an echo flow;
//! - `flows`: requests and flows through a client;
//! - `proc`: the real binary.
#![allow(dead_code)] // each test binary uses a different part of the harness

mod builder;
mod certs;
mod dns;
mod flows;
mod parts;
pub mod proc;
mod topology;

use std::path::Path;
use std::time::{Duration, Instant};

use lifeboat::metrics::Metrics;

// Not every test binary uses every part.
#[allow(unused_imports)]
pub use builder::{Builder, ClientCert, Dr, Listen, Transport};
#[allow(unused_imports)]
pub use certs::{Ca, CertFiles};
#[allow(unused_imports)]
pub use dns::*;
#[allow(unused_imports)]
pub use flows::*;
#[allow(unused_imports)]
pub use parts::{free_port, run_client, run_connector, ClientHandle, EdgeSpec, Rig, RigEdge};
#[allow(unused_imports)]
pub use proc::{get as admin_get, Proc, BIN};
#[allow(unused_imports)]
pub use topology::Topology;

/// The deployment's trust domain.
pub const TD: &str = "dr.lifeboat.test";
/// Another deployment's trust domain.
pub const FOREIGN_TD: &str = "other.example";
/// The DR segment's exact name.
pub const DR_HOST: &str = "payroll.corp.example";
/// A name under the DR segment's wildcard `*.hr.corp.example`.
pub const WILDCARD_HOST: &str = "benefits.hr.corp.example";
/// A name of the segment that is not designated for DR (`dr = false`).
pub const NON_DR_HOST: &str = "wiki.corp.example";
/// A name in no segment at all.
pub const UNKNOWN_HOST: &str = "nowhere.corp.example";
/// The connector group every harness connector belongs to.
pub const GROUP: &str = "dc1-dr";
/// Test users the default edge config lists in `[dr] test_users`.
pub const ALICE: &str = "alice";
pub const BOB: &str = "bob";

/// [`eventually`] for a condition that has to await (a request).
pub async fn eventually_async<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {within:?}: {what}");
}

/// Poll `cond` every 10 ms until it holds; panic naming `what` after `within`.
pub async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TOML basic string holding `p`.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// `[limits]` of every role: short enough for tests, long enough for 2 cores.
pub const LIMITS: &str = r#"handshake_timeout = "5s"
connect_timeout = "3s"
drain_timeout = "2s"
"#;

/// `tunnels_active{role,transport}` of `m`.
pub fn tunnels_of(m: &Metrics, role: &str, transport: &str) -> i64 {
    m.tunnels_active.with_label_values(&[role, transport]).get()
}

/// `handshakes_total{role,transport,result}` of `m`.
pub fn handshakes_of(m: &Metrics, role: &str, transport: &str, result: &str) -> u64 {
    m.handshakes
        .with_label_values(&[role, transport, result])
        .get()
}

/// `transport_fallbacks_total{role}` of `m`.
pub fn fallbacks_of(m: &Metrics, role: &str) -> u64 {
    m.transport_fallbacks.with_label_values(&[role]).get()
}

/// `lifeboat_connectors_connected{group="dc1-dr"}` of an edge.
pub fn connectors_connected(m: &Metrics) -> i64 {
    m.connectors_connected.with_label_values(&[GROUP]).get()
}
