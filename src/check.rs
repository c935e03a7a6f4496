//! `lifeboat check -c FILE [--match HOST:PORT]...`: load, validate and
//! compile a config and report what is reachable in DR (and, for what is
//! not, why); with `--match`, which segment a destination hits and why.
//!
//! Errors are [`ConfigError`]s (through `anyhow`, so `main` exits 2);
//! warnings are printed and do not change the exit status. Builds the
//! report as a string: no I/O beyond reading the file.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::{
    self, ClientConfig, ConfigError, ConfigWarning, ConnectorConfig, EdgeConfig, RoleConfig,
    Validity, WarningKind,
};
use crate::preamble::{Dest, Host};
use crate::segments::{normalize_idn, Lookup, MatchKey, Matcher, SegmentSpec};

/// Which role a config file is for, told from its keys.
fn role_of(path: &Path, text: &str) -> Result<&'static str, ConfigError> {
    let v: toml::Table = config::parse_str(path, text)?;
    let listen = v.get("listen").and_then(|l| l.as_table());
    let has = |k: &str| listen.is_some_and(|l| l.contains_key(k));
    let edge_keys = ["segment", "server_group", "connector_group"];
    if edge_keys.iter().any(|k| v.contains_key(*k)) || has("quic") || has("tls") {
        Ok("edge")
    } else if has("socks") || has("http") || v.contains_key("forward") {
        Ok("client")
    } else if v.contains_key("edges") {
        Ok("connector")
    } else {
        Err(ConfigError::new(
            path,
            "",
            "cannot tell the role: an edge config has [listen] quic/tls and [[segment]]s, \
             a connector or client config has `edges`",
        ))
    }
}

/// Parses a `--match` argument: `host:port`, `1.2.3.4:port`, `[v6]:port`;
/// a non-ASCII name is converted to punycode as the config's names are.
pub fn parse_match(arg: &str) -> Result<Dest, String> {
    let ascii;
    let arg = if arg.is_ascii() {
        arg
    } else {
        let (host, port) = arg
            .rsplit_once(':')
            .ok_or_else(|| format!("`{arg}` is not HOST:PORT"))?;
        let host = normalize_idn(host).map_err(|e| format!("`{host}`: {e}"))?;
        ascii = format!("{host}:{port}");
        &ascii
    };
    Dest::parse(arg).map_err(|e| format!("`{arg}` is not HOST:PORT: {e}"))
}

/// Validate `path` and return the report to print.
pub fn run(path: &Path) -> anyhow::Result<String> {
    run_with(path, &[])
}

/// [`run`], also saying where each of `probes` goes (edge configs only).
pub fn run_with(path: &Path, probes: &[Dest]) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "", format!("cannot read: {e}")))?;
    let mut out = String::new();
    let role = role_of(path, &text)?;
    if role != "edge" && !probes.is_empty() {
        return Err(ConfigError::new(
            path,
            "",
            format!("--match needs an edge config (this is a {role} config)"),
        )
        .into());
    }
    match role {
        "edge" => {
            let cfg: EdgeConfig = config::from_text(path, &text)?;
            let files = files_report(&cfg, path, &text)?;
            let matcher = config::compile_segments(&cfg, path, &text)?;
            let warnings = config::edge_warnings(&cfg, &matcher, path, &text);
            edge_report(&mut out, path, &cfg, &matcher, &warnings);
            out.push_str(&files);
            for d in probes {
                match_report(&mut out, &cfg, &matcher, d);
            }
        }
        "connector" => {
            let cfg: ConnectorConfig = config::from_text(path, &text)?;
            let files = files_report(&cfg, path, &text)?;
            let _ = writeln!(
                out,
                "{}: valid connector config; trust domain {}; edges {}; transport {}",
                path.display(),
                cfg.trust_domain,
                cfg.edges.join(", "),
                cfg.transport.as_str()
            );
            out.push_str(&files);
        }
        _ => {
            let cfg: ClientConfig = config::from_text(path, &text)?;
            let files = files_report(&cfg, path, &text)?;
            let mut listeners = Vec::new();
            if let Some(a) = cfg.listen.socks {
                listeners.push(format!("socks {a}"));
            }
            if let Some(a) = cfg.listen.http {
                listeners.push(format!("http {a}"));
            }
            for f in &cfg.forwards {
                listeners.push(format!("forward {} -> {}", f.listen, f.to));
            }
            let _ = writeln!(
                out,
                "{}: valid client config; trust domain {}; edges {}; listeners: {}",
                path.display(),
                cfg.trust_domain,
                cfg.edges.join(", "),
                if listeners.is_empty() {
                    "none".to_owned()
                } else {
                    listeners.join(", ")
                }
            );
            out.push_str(&files);
        }
    }
    Ok(out)
}

/// Loads every file the config names, as the role will
/// ([`config::check_files`]); an expired certificate is an error here.
/// Returns the report lines: what was loaded, then any warnings.
fn files_report<T: RoleConfig>(cfg: &T, path: &Path, text: &str) -> Result<String, ConfigError> {
    let files = cfg.files();
    let warnings = config::check_files(&files, path, text, Validity::Enforce)?;
    let mut out = format!(
        "  certificate {} ({} identity), key, CA{} loaded and consistent\n",
        files.tls.cert.display(),
        files.role,
        if files.tls.crl.is_some() { ", CRL" } else { "" }
    );
    for w in warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    Ok(out)
}

fn edge_report(
    out: &mut String,
    path: &Path,
    cfg: &EdgeConfig,
    matcher: &Matcher,
    warnings: &[ConfigWarning],
) {
    let dr = matcher.segments();
    let _ = writeln!(
        out,
        "{}: valid edge config: {}, {} compiled",
        path.display(),
        plural(cfg.segments.len(), "segment"),
        plural(dr.len(), "DR segment")
    );
    let rows: Vec<[String; 4]> = dr
        .iter()
        .map(|s| {
            let what: Vec<String> = s
                .domains
                .iter()
                .map(ToString::to_string)
                .chain(s.cidrs.iter().map(ToString::to_string))
                .collect();
            [
                s.name.clone(),
                if what.is_empty() {
                    "(nothing)".to_owned()
                } else {
                    what.join(", ")
                },
                s.ports.to_string(),
                s.connector_groups.join(", "),
            ]
        })
        .collect();
    let header = [
        "DR segment",
        "matches",
        "tcp ports",
        "served by DR connector groups",
    ];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |out: &mut String, cells: [&str; 4]| {
        let _ = writeln!(
            out,
            "  {:<w0$}  {:<w1$}  {:<w2$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2]
        );
    };
    if rows.is_empty() {
        let _ = writeln!(out, "  no DR segments: every flow is refused in DR");
    } else {
        line(out, header);
        for r in &rows {
            line(out, [&r[0], &r[1], &r[2], &r[3]]);
        }
    }
    let (unreachable, other): (Vec<&ConfigWarning>, Vec<&ConfigWarning>) = warnings
        .iter()
        .partition(|w| w.kind == WarningKind::Unreachable);
    if !unreachable.is_empty() {
        let _ = writeln!(out, "not reachable in DR ({}):", unreachable.len());
        for w in unreachable {
            let _ = writeln!(out, "  {}: {w}", w.segment);
        }
    }
    for w in other {
        let _ = writeln!(out, "warning: {w}");
    }
}

/// `1 segment`, `2 segments`.
fn plural(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Which segment `dest` hits and why; for a miss, whether a non-DR segment
/// would have matched.
fn match_report(out: &mut String, cfg: &EdgeConfig, matcher: &Matcher, dest: &Dest) {
    let (found, key) = matcher.explain(dest);
    let _ = match (found, key) {
        (Lookup::Hit(s), Some(k)) => writeln!(
            out,
            "{dest}: DR segment `{}` by {k}, port {} in {}; served by DR connector groups {}",
            s.name,
            dest.port,
            s.ports,
            s.connector_groups.join(", ")
        ),
        (Lookup::WrongPort(s), Some(k)) => writeln!(
            out,
            "{dest}: no segment (refused 403 not-dr-segment): the most specific key, {k}, \
             belongs to DR segment `{}`, but port {} is not in its ports {}; \
             less specific segments are not tried",
            s.name, dest.port, s.ports
        ),
        _ => {
            let why = match &dest.host {
                Host::Name(_) => "no DR segment's domains match this name",
                Host::Ip(_) => "no DR segment's cidrs contain this address",
            };
            let mut line = format!("{dest}: no segment (refused 403 not-dr-segment): {why}");
            if let Some((s, k, port_ok)) = non_dr_match(cfg, dest) {
                let _ = write!(
                    line,
                    "; non-DR segment `{s}` has it ({k}{}), but it is `dr = false`",
                    if port_ok { "" } else { ", not on this port" }
                );
            }
            writeln!(out, "{line}")
        }
    };
}

/// The most specific non-DR segment matching `dest`'s host: its name, the
/// key, and whether the port is in its ports. Segments that would not
/// compile are skipped.
fn non_dr_match(cfg: &EdgeConfig, dest: &Dest) -> Option<(String, String, bool)> {
    let mut best: Option<(Rank, String, String, bool)> = None;
    for seg in cfg.segments.iter().filter(|s| !s.dr) {
        let spec = SegmentSpec {
            name: seg.name.clone(),
            domains: seg.domains.clone(),
            cidrs: seg.cidrs.clone(),
            tcp_ports: seg.tcp_ports.clone(),
            connector_groups: Vec::new(),
        };
        let Ok(m) = Matcher::compile(std::slice::from_ref(&spec)) else {
            continue;
        };
        let (found, Some(key)) = m.explain(dest) else {
            continue;
        };
        let port_ok = matches!(found, Lookup::Hit(_));
        let rank = Rank::of(key);
        if best.as_ref().is_none_or(|b| rank > b.0) {
            best = Some((rank, seg.name.clone(), key.to_string(), port_ok));
        }
    }
    best.map(|(_, s, k, p)| (s, k, p))
}

/// Specificity of a key, as the matcher orders them.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Prefix(u8),
    Wildcard(usize),
    Exact,
}

impl Rank {
    fn of(k: MatchKey<'_>) -> Self {
        match k {
            MatchKey::Exact(_) => Self::Exact,
            MatchKey::Wildcard(s) => Self::Wildcard(s.len()),
            MatchKey::Prefix(c) => Self::Prefix(c.prefix_len()),
        }
    }
}
