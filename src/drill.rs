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

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{self, ClientConfig, ConfigError, EdgeConfig, Limits, TransportChoice};
use crate::head::{self, HeadError};
use crate::preamble::{self, Dest};
use crate::segments::{Lookup, Matcher};
use crate::splice::{RecvHalf, SendHalf, Side};
use crate::transport::dial::{Dialed, Dialer, HEAD_START};
use crate::transport::{quic, resolve_edges, stream_code, tls, EdgeAddr, TunnelError, ALPN_CLIENT};
use crate::trust::Trust;

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

/// The first port of each `tcp_ports` entry (`"443"`, `"8000-8080"`).
fn first_ports(entries: &[String]) -> Vec<u16> {
    let mut out = Vec::new();
    for e in entries {
        let low = e.split('-').next().unwrap_or("").trim();
        if let Ok(p) = low.parse::<u16>() {
            if p != 0 && !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Targets from an edge config: each exact (not wildcard) name of each DR
/// segment, with each of its ports. Segments matched only by address or
/// wildcard give none; they are named in the returned notes.
pub fn targets_from_edge(cfg: &EdgeConfig) -> (Vec<Dest>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for seg in cfg.segments.iter().filter(|s| s.dr) {
        let ports = first_ports(&seg.tcp_ports);
        let mut any = false;
        for name in seg.domains.iter().filter(|d| !d.starts_with('*')) {
            for &port in &ports {
                if let Ok(d) = Dest::parse(&format!("{name}:{port}")) {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                    any = true;
                }
            }
        }
        if !any {
            notes.push(format!(
                "segment `{}` has no exact name to test; give it a --target",
                seg.name
            ));
        }
    }
    (out, notes)
}

/// The segment an edge config's matcher gives `dest`, if any.
fn segment_of(matcher: Option<&Matcher>, dest: &Dest) -> Option<String> {
    match matcher?.lookup(dest) {
        Lookup::Hit(s) => Some(s.name.clone()),
        Lookup::WrongPort(_) | Lookup::Miss => None,
    }
}

/// The targets of a drill: `--target`s, then the edge config's, each once,
/// with segments named by the edge config when given.
pub fn plan(args: &Args) -> anyhow::Result<(Vec<Target>, Vec<String>)> {
    let mut dests = args.targets.clone();
    let mut notes = Vec::new();
    let mut matcher = None;
    if let Some(path) = &args.edge_config {
        let (cfg, text) = config::load_with_text::<EdgeConfig>(path)?;
        matcher = Some(config::compile_segments(&cfg, path, &text)?);
        let (more, n) = targets_from_edge(&cfg);
        notes.extend(n);
        for d in more {
            if !dests.contains(&d) {
                dests.push(d);
            }
        }
    }
    if dests.is_empty() {
        return Err(ConfigError {
            file: args.edge_config.clone().unwrap_or_else(|| args.config.clone()),
            key: String::new(),
            line: None,
            message: "nothing to test: give --target HOST:PORT or --edge-config with DR segments that have exact names".into(),
        }
        .into());
    }
    let targets = dests
        .into_iter()
        .map(|dest| Target {
            segment: segment_of(matcher.as_ref(), &dest),
            dest,
        })
        .collect();
    Ok((targets, notes))
}

/// Open one flow to every target through every edge address of `cfg`.
pub async fn run_drill(
    cfg: &ClientConfig,
    file: &Path,
    transport: TransportChoice,
    targets: &[Target],
) -> anyhow::Result<Report> {
    let trust = Trust::load(cfg.tls.files(), &cfg.trust_domain)
        .with_context(|| format!("loading [tls] of {}", file.display()))?;
    let (edges, unresolved) = resolve_edges(&cfg.edges).await;
    let bind: SocketAddr = if edges.iter().any(|e| e.addr.is_ipv6()) {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let dialer = Dialer {
        choice: transport,
        quic: quic::client_endpoint(bind, &trust, ALPN_CLIENT, &cfg.limits, 0)?,
        tls: tls::connector(&trust, ALPN_CLIENT),
        timeout: cfg.limits.handshake_timeout,
        head_start: HEAD_START,
    };
    let mut report = Report::default();
    for e in &unresolved {
        for t in targets {
            report.outcomes.push(Outcome {
                target: t.clone(),
                edge: match e {
                    TunnelError::NoAddress(entry) => entry.clone(),
                    other => other.to_string(),
                },
                transport: None,
                handshake: None,
                setup: None,
                result: "no-address".into(),
                detail: e.to_string(),
            });
        }
    }
    for edge in &edges {
        drill_edge(&dialer, edge, &cfg.limits, targets, &mut report).await;
    }
    dialer.quic.close(0u32.into(), b"drill done");
    let _ = tokio::time::timeout(Duration::from_secs(1), dialer.quic.wait_idle()).await;
    Ok(report)
}

async fn drill_edge(
    dialer: &Dialer,
    edge: &EdgeAddr,
    limits: &Limits,
    targets: &[Target],
    report: &mut Report,
) {
    let started = Instant::now();
    let dialed = dialer.dial(edge, false).await;
    let handshake = started.elapsed();
    let row = |t: &Target| Outcome {
        target: t.clone(),
        edge: edge.addr.to_string(),
        transport: None,
        handshake: None,
        setup: None,
        result: String::new(),
        detail: String::new(),
    };
    let conn = match dialed {
        Err(e) => {
            for t in targets {
                report.outcomes.push(Outcome {
                    result: dial_word(&e),
                    detail: format!("tunnel to the edge: {e}"),
                    ..row(t)
                });
            }
            return;
        }
        Ok(Dialed::Quic(c)) => Some(c),
        // A TLS client flow is its own connection: each target dials anew.
        Ok(Dialed::Tls(_)) => None,
    };
    for t in targets {
        let mut out = row(t);
        let t0 = Instant::now();
        let side = match &conn {
            Some(c) => {
                out.transport = Some("quic");
                out.handshake = Some(handshake);
                c.open_bi()
                    .await
                    .map(|(send, recv)| Side {
                        recv: RecvHalf::Quic(recv),
                        send: SendHalf::Quic(send),
                    })
                    .map_err(|e| {
                        let word = word_of(crate::trust::classify_quic(&e));
                        (word, format!("opening a stream: {e}"))
                    })
            }
            None => {
                out.transport = Some("tls");
                match dialer.dial_tls(edge).await {
                    Ok(s) => {
                        out.handshake = Some(t0.elapsed());
                        let (r, w) = tokio::io::split(s);
                        Ok(Side {
                            recv: RecvHalf::io(Box::new(r)),
                            send: SendHalf::Io(Box::new(w)),
                        })
                    }
                    Err(e) => Err((dial_word(&e), format!("TLS to the edge: {e}"))),
                }
            }
        };
        let (result, detail) = match side {
            Ok(mut side) => {
                let r = open_flow(&mut side, &t.dest, limits).await;
                if r.0 == "ok" {
                    out.setup = Some(t0.elapsed());
                    let _ = side.send.finish().await;
                } else {
                    side.send.abort(stream_code::ABORTED);
                }
                side.recv.abort(stream_code::ABORTED);
                r
            }
            Err(e) => e,
        };
        out.result = result;
        out.detail = detail;
        report.outcomes.push(out);
    }
    if let Some(c) = conn {
        c.close(0u32.into(), b"drill done");
    }
}

/// Send the CONNECT preamble and read the edge's answer: `("ok", "")` or
/// the refusal word and reason.
async fn open_flow(side: &mut Side, dest: &Dest, limits: &Limits) -> (String, String) {
    if let Err(e) = side.send.write(preamble::encode_request(dest)).await {
        return (failure_word(&e), format!("sending the preamble: {e}"));
    }
    // The edge answers within its connect timeout plus margin.
    let wait = limits.connect_timeout + Duration::from_secs(5);
    match tokio::time::timeout(wait, read_answer(&mut side.recv, limits.preamble_bytes)).await {
        Err(_) => ("no-answer".into(), format!("no answer within {wait:?}")),
        Ok(Err(e)) => e,
        Ok(Ok((200, _, _))) => ("ok".into(), String::new()),
        Ok(Ok((status, word, reason))) => {
            (word.unwrap_or_else(|| format!("http-{status}")), reason)
        }
    }
}

/// The status, `Lifeboat-Error` word and one-line reason of the edge's answer.
async fn read_answer(
    recv: &mut RecvHalf,
    limit: usize,
) -> Result<(u16, Option<String>, String), (String, String)> {
    match head::read_answer(recv, limit).await {
        Ok((resp, rest)) => {
            let reason = String::from_utf8_lossy(&rest).trim().to_string();
            let word = resp.error.map(|r| r.word().to_string());
            Ok((resp.status, word, reason))
        }
        Err(HeadError::Cut { reset: None, .. }) => {
            let why = "the edge closed the flow without an answer";
            Err(("broken".into(), why.into()))
        }
        Err(HeadError::Cut { reset: Some(e), .. }) => {
            Err((failure_word(&e), format!("the edge reset the flow: {e}")))
        }
        Err(e @ (HeadError::Parse(_) | HeadError::TooLarge)) => {
            Err(("broken".into(), format!("bad answer from the edge: {e}")))
        }
    }
}

/// The result word of an I/O error on a flow: what the TLS alert or the
/// QUIC close that ended it says (a revoked or wrong-role certificate is
/// refused after a TLS 1.3 client thinks its handshake is done, so it
/// shows up here, on the first read), else `broken`.
fn failure_word(e: &std::io::Error) -> String {
    let Some(inner) = e.get_ref() else {
        return "broken".into();
    };
    let conn = |c: &quinn::ConnectionError| crate::trust::classify_quic(c);
    let word = if let Some(r) = inner.downcast_ref::<rustls::Error>() {
        crate::trust::classify(r)
    } else if let Some(quinn::ReadError::ConnectionLost(c)) = inner.downcast_ref() {
        conn(c)
    } else if let Some(quinn::WriteError::ConnectionLost(c)) = inner.downcast_ref() {
        conn(c)
    } else if let Some(c) = inner.downcast_ref::<quinn::ConnectionError>() {
        conn(c)
    } else {
        "other"
    };
    match word {
        "other" => "broken".into(),
        w => word_of(w),
    }
}

/// The result word of a failed dial. The edge refuses some tunnels after
/// the QUIC handshake, with an application close code that says why.
fn dial_word(e: &TunnelError) -> String {
    use crate::transport::close_code as code;
    use quinn::ConnectionError as C;
    // The code, and the reason text as a fallback: a close sent while the
    // handshake is still in progress reaches us as a transport close.
    let (code, reason) = match e {
        TunnelError::Connection(C::ApplicationClosed(c)) => {
            (u32::try_from(c.error_code.into_inner()).ok(), &c.reason)
        }
        TunnelError::Connection(C::ConnectionClosed(c)) => (None, &c.reason),
        _ => return word_of(e.reason()),
    };
    let by_code = code.and_then(|c| code::word(c.into()));
    const WORDS: [&str; 4] = ["wrong-role", "shed", "going-away", "quota"];
    let by_reason = std::str::from_utf8(reason)
        .ok()
        .and_then(|r| WORDS.into_iter().find(|w| r == *w));
    by_code
        .or(by_reason)
        .map_or_else(|| word_of(e.reason()), str::to_owned)
}

/// A handshake word in DESIGN's result vocabulary.
fn word_of(handshake_word: &str) -> String {
    match handshake_word {
        "foreign-trust-domain" => "wrong-trust-domain",
        w => w,
    }
    .to_owned()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
    )
}

/// The report as a table, one line per flow, then a summary line.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let w_target = r
        .outcomes
        .iter()
        .map(|o| o.target.dest.to_string().len())
        .max()
        .unwrap_or(6)
        .max(6);
    let w_edge = r
        .outcomes
        .iter()
        .map(|o| o.edge.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<w_target$}  {:<16}  {:<w_edge$}  {:<9}  {:>10}  RESULT",
        "TARGET", "SEGMENT", "EDGE", "TRANSPORT", "SETUP"
    );
    for o in &r.outcomes {
        let _ = write!(
            out,
            "{:<w_target$}  {:<16}  {:<w_edge$}  {:<9}  {:>10}  {}",
            o.target.dest.to_string(),
            o.target.segment.as_deref().unwrap_or("-"),
            o.edge,
            o.transport.unwrap_or("-"),
            ms(o.setup),
            o.result
        );
        if !o.detail.is_empty() {
            let _ = write!(out, " ({})", o.detail);
        }
        out.push('\n');
    }
    let ok = r.outcomes.iter().filter(|o| o.passed()).count();
    let _ = writeln!(
        out,
        "drill {}: {ok}/{} flows established",
        if r.passed() { "passed" } else { "FAILED" },
        r.outcomes.len()
    );
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "null".into(),
        |d| format!("{:.3}", d.as_secs_f64() * 1e3),
    )
}

/// The report as one JSON object: `passed` and one entry per flow.
pub fn render_json(r: &Report) -> String {
    let mut out = format!("{{\"passed\":{},\"results\":[", r.passed());
    for (i, o) in r.outcomes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"target\":{},\"segment\":{},\"edge\":{},\"transport\":{},\"handshake_ms\":{},\"setup_ms\":{},\"result\":{},\"detail\":{}}}",
            json_str(&o.target.dest.to_string()),
            o.target.segment.as_deref().map_or_else(|| "null".into(), json_str),
            json_str(&o.edge),
            o.transport.map_or_else(|| "null".into(), json_str),
            json_ms(o.handshake),
            json_ms(o.setup),
            json_str(&o.result),
            json_str(&o.detail),
        );
    }
    out.push_str("]}\n");
    out
}

/// The report as Prometheus text for node_exporter's textfile collector.
/// Labels are the result word and the segment (config names), never a
/// target or an address.
pub fn render_textfile(r: &Report, now_unix: u64) -> String {
    let mut out = String::new();
    out.push_str("# HELP lifeboat_drill_success 1 when every flow of the last drill was established\n# TYPE lifeboat_drill_success gauge\n");
    let _ = writeln!(out, "lifeboat_drill_success {}", u8::from(r.passed()));
    out.push_str("# HELP lifeboat_drill_last_run_timestamp_seconds Unix time of the last drill\n# TYPE lifeboat_drill_last_run_timestamp_seconds gauge\n");
    let _ = writeln!(out, "lifeboat_drill_last_run_timestamp_seconds {now_unix}");
    out.push_str("# HELP lifeboat_drill_flows Flows of the last drill by segment and result\n# TYPE lifeboat_drill_flows gauge\n");
    let mut counts: Vec<(String, String, u64)> = Vec::new();
    for o in &r.outcomes {
        let seg = o.target.segment.clone().unwrap_or_else(|| "-".into());
        match counts
            .iter_mut()
            .find(|(s, res, _)| *s == seg && *res == o.result)
        {
            Some(c) => c.2 += 1,
            None => counts.push((seg, o.result.clone(), 1)),
        }
    }
    counts.sort();
    for (seg, res, n) in counts {
        let _ = writeln!(
            out,
            "lifeboat_drill_flows{{segment={},result={}}} {n}",
            json_str(&seg),
            json_str(&res)
        );
    }
    out
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.write_all(text.as_bytes())?;
    // node_exporter runs as another user: the file must be world-readable.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path)
        .map_err(|e| anyhow::Error::from(e.error))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
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
        write_atomically(path, &render_textfile(&report, now))?;
    }
    Ok(report.passed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(target: &str, segment: Option<&str>, result: &str) -> Outcome {
        Outcome {
            target: Target {
                dest: Dest::parse(target).expect("literal"),
                segment: segment.map(Into::into),
            },
            edge: "203.0.113.10:443".into(),
            transport: Some("quic"),
            handshake: Some(Duration::from_millis(3)),
            setup: (result == "ok").then(|| Duration::from_micros(1500)),
            result: result.into(),
            detail: if result == "ok" { "" } else { "say \"why\"\n" }.into(),
        }
    }

    #[test]
    fn first_ports_takes_the_low_end_of_ranges_once() {
        let e = ["443", "8000-8080", "443", "x", "0"].map(String::from);
        assert_eq!(first_ports(&e), vec![443, 8000]);
    }

    #[test]
    fn report_passes_only_when_every_flow_did_and_there_was_one() {
        assert!(!Report::default().passed());
        let mut r = Report {
            outcomes: vec![outcome("a.example:443", Some("a"), "ok")],
        };
        assert!(r.passed());
        r.outcomes
            .push(outcome("b.example:443", None, "no-connector"));
        assert!(!r.passed());
    }

    #[test]
    fn renderings_carry_every_column_and_escape_json() {
        let r = Report {
            outcomes: vec![
                outcome("a.example:443", Some("payroll"), "ok"),
                outcome("b.example:8443", None, "not-dr-segment"),
            ],
        };
        let t = render_table(&r);
        assert!(t.starts_with("TARGET"), "{t}");
        assert!(t.contains("a.example:443") && t.contains("payroll") && t.contains("1.5 ms"));
        assert!(t.contains("not-dr-segment"));
        assert!(t.contains("drill FAILED: 1/2"), "{t}");
        let j = render_json(&r);
        assert!(j.starts_with("{\"passed\":false,\"results\":[{"), "{j}");
        assert!(j.contains("\"segment\":null") && j.contains("\"setup_ms\":1.500"));
        assert!(j.contains(r#""detail":"say \"why\"\n""#), "{j}");
        let p = render_textfile(&r, 1_700_000_000);
        assert!(p.contains("lifeboat_drill_success 0\n"));
        assert!(p.contains("lifeboat_drill_flows{segment=\"payroll\",result=\"ok\"} 1\n"));
        assert!(p.contains("lifeboat_drill_flows{segment=\"-\",result=\"not-dr-segment\"} 1\n"));
        assert!(!p.contains("a.example"), "no target in a label: {p}");
    }
}
