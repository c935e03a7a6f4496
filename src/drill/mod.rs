//! `lifeboat drill`: the guide's DR test, automated. With a test user's
//! client config it opens one real flow per target through each edge
//! address (every address the configured `edges` resolve to: the DR A
//! record), and reports, per flow, the segment, the edge, the transport,
//! the setup time and the result word (`ok`, a `Lifeboat-Error` word, or
//! why the edge could not be reached). Run it in DR test mode, before the
//! outage, so readiness is known rather than hoped for.
//!
//! It owns only its own sockets: no listener, no DR trigger (it tests what
//! the edges decide, whatever this host's view of the mode is), no retries
//! (a drill that retries hides the failure it exists to find).
//!
//! `plan` picks the targets, `probe` opens the flows, `render` prints the
//! report (table, JSON, Prometheus textfile).

mod plan;
mod probe;
mod render;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, ClientConfig, TransportChoice};
use crate::preamble::Dest;
use crate::transport::resolve_edges;

pub use plan::{plan, targets_from_edge};
pub use probe::run_drill;
pub use render::{render_json, render_table, render_textfile};

/// `lifeboat drill` flags (kept here so `main` stays one match arm).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A test user's client config: its certificate, CA and `edges` are used.
    #[arg(short, long)]
    pub config: PathBuf,
    /// A destination to test, `HOST:PORT` (repeatable).
    #[arg(long = "target", value_name = "HOST:PORT", value_parser = parse_target)]
    pub targets: Vec<Dest>,
    /// Take targets from an edge config: every exact name of its DR
    /// segments, with each segment's ports (the first of a range); also
    /// names the segment of every target.
    #[arg(long, value_name = "FILE")]
    pub edge_config: Option<PathBuf>,
    /// Transport to use instead of the config's: auto, quic or tls.
    #[arg(long, value_parser = parse_transport)]
    pub transport: Option<TransportChoice>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the results as Prometheus text to FILE (for node_exporter's
    /// textfile collector), replacing it atomically.
    #[arg(long, value_name = "FILE")]
    pub textfile: Option<PathBuf>,
    /// Print the targets and edge addresses and exit without opening anything.
    #[arg(long)]
    pub list: bool,
}

fn parse_target(s: &str) -> Result<Dest, String> {
    Dest::parse(s).map_err(|e| format!("`{s}` is not HOST:PORT ({e})"))
}

fn parse_transport(s: &str) -> Result<TransportChoice, String> {
    match s {
        "auto" => Ok(TransportChoice::Auto),
        "quic" => Ok(TransportChoice::Quic),
        "tls" => Ok(TransportChoice::Tls),
        _ => Err(format!("`{s}` is not a transport: auto, quic or tls")),
    }
}

/// One destination to test, with its segment when an edge config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub dest: Dest,
    pub segment: Option<String>,
}

/// What happened to one flow.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: Target,
    /// The edge address, or the `edges` entry that did not resolve.
    pub edge: String,
    /// `quic` or `tls`; `None` when no tunnel came up.
    pub transport: Option<&'static str>,
    /// Tunnel handshake time (QUIC: once per edge; TLS: this flow's own).
    pub handshake: Option<Duration>,
    /// From the first byte of the CONNECT preamble to the edge's answer (TLS:
    /// including this flow's handshake).
    pub setup: Option<Duration>,
    /// `ok`, a `Lifeboat-Error` word, a handshake reason, `no-address`,
    /// `no-answer` or `broken`.
    pub result: String,
    /// The edge's one-line reason or the local error.
    pub detail: String,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.result == "ok"
    }
}

/// Every outcome of one drill.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// True when there was something to test and every flow was established.
    pub fn passed(&self) -> bool {
        !self.outcomes.is_empty() && self.outcomes.iter().all(Outcome::passed)
    }
}

/// `lifeboat drill`: print the report; `Ok(true)` only if every target passed.
pub async fn run(args: &Args) -> anyhow::Result<bool> {
    let cfg = config::load::<ClientConfig>(&args.config)?;
    let (targets, notes) = plan(args)?;
    for n in &notes {
        eprintln!("note: {n}");
    }
    if args.list {
        let (edges, unresolved) = resolve_edges(&cfg.edges).await;
        for t in &targets {
            println!(
                "target {} segment {}",
                t.dest,
                t.segment.as_deref().unwrap_or("-")
            );
        }
        for e in &edges {
            println!("edge {} ({})", e.addr, e.server_name);
        }
        for e in &unresolved {
            println!("edge {e}");
        }
        return Ok(true);
    }
    let transport = args.transport.unwrap_or(cfg.transport);
    let report = run_drill(&cfg, &args.config, transport, &targets).await?;
    if args.json {
        print!("{}", render_json(&report));
    } else {
        print!("{}", render_table(&report));
    }
    if let Some(path) = &args.textfile {
        let now = crate::dr::trigger::unix_now();
        render::write_atomically(path, &render_textfile(&report, now))?;
    }
    Ok(report.passed())
}

#[cfg(test)]
mod tests;
