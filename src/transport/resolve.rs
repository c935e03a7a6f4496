//! Edge discovery: the `edges` entries of a connector or client config (IP
//! literals, or names whose every A and AAAA address is an edge) kept
//! current. [`EdgeBook`] is the pure core: it takes lookup answers and
//! instants, says which names are due, and holds the last good address set
//! of each name. [`EdgeWatch`] is the shell: it owns the resolver (hickory
//! on `[dns] nameservers`, UDP and TCP, as the DR trigger; the system
//! resolver otherwise), the clock and the log, and publishes the set on a
//! `watch` channel. A failed lookup never shrinks the set: only a good
//! answer replaces a name's addresses.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::LookupIpStrategy;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, ResolveErrorKind, TokioResolver};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::{EdgeAddr, TunnelError};
use crate::config::DnsSection;
use crate::preamble::{Dest, Host};

/// Re-resolution interval with the system resolver, which reports no TTL.
pub const SYSTEM_REFRESH: Duration = Duration::from_secs(30);
/// Never re-resolve a name more often than this (a 0 s TTL included).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Nor less often than this, whatever the TTL: a change of DR edges is seen
/// within it even behind a long TTL.
pub const MAX_REFRESH: Duration = Duration::from_secs(30);
/// Bound on one lookup (both families, every server, both transports).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// hickory's per-query timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// One `edges` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeEntry {
    /// An IP literal: an edge as it stands, never resolved.
    Literal(EdgeAddr),
    /// A name: every A and AAAA address of it, at `port`, is an edge.
    Name { host: String, port: u16 },
}

impl EdgeEntry {
    /// Parse `host:port`, `1.2.3.4:port` or `[v6]:port`.
    pub fn parse(entry: &str) -> Result<Self, TunnelError> {
        let d = Dest::parse(entry).map_err(|_| TunnelError::NoAddress(entry.into()))?;
        Ok(match d.host {
            Host::Ip(ip) => Self::Literal(EdgeAddr {
                addr: SocketAddr::new(ip, d.port),
                server_name: ip.to_string(),
            }),
            Host::Name(host) => Self::Name { host, port: d.port },
        })
    }
}

/// What one lookup of a name gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Addresses, and the smallest TTL among their records (`None`: the
    /// resolver does not say, as the system's).
    Found {
        ips: Vec<IpAddr>,
        ttl: Option<Duration>,
    },
    /// No usable answer (timeout, SERVFAIL, NXDOMAIN, no records): a short,
    /// stable description, compared to log a condition once.
    Failed(String),
}

/// A change of a name's lookup condition, for the shell to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Lookups of `host` fail (newly, or in a new way); `kept` addresses stay.
    Failing {
        host: String,
        error: String,
        kept: usize,
    },
    /// `host` answers again.
    Recovered { host: String },
}

#[derive(Debug)]
struct NameState {
    host: String,
    port: u16,
    /// The last good answer's addresses, sorted.
    addrs: Vec<SocketAddr>,
    due: Instant,
    last_lookup: Option<Instant>,
    failures: u32,
    /// The interval the last good answer set: failures never retry slower.
    interval: Duration,
    failing: Option<String>,
}

/// The edge set and the re-resolution schedule. Pure: no clock, no I/O.
#[derive(Debug)]
pub struct EdgeBook {
    literals: Vec<EdgeAddr>,
    names: Vec<NameState>,
}

impl EdgeBook {
    /// Every name is due at `now`.
    pub fn new(entries: &[EdgeEntry], now: Instant) -> Self {
        let mut literals = Vec::new();
        let mut names = Vec::new();
        for e in entries {
            match e {
                EdgeEntry::Literal(a) => literals.push(a.clone()),
                EdgeEntry::Name { host, port } => names.push(NameState {
                    host: host.clone(),
                    port: *port,
                    addrs: Vec::new(),
                    due: now,
                    last_lookup: None,
                    failures: 0,
                    interval: MAX_REFRESH,
                    failing: None,
                }),
            }
        }
        Self { literals, names }
    }

    /// Whether any entry is a name (otherwise the set never changes).
    pub fn has_names(&self) -> bool {
        !self.names.is_empty()
    }

    /// Name `i` and its port.
    pub fn name(&self, i: usize) -> Option<(&str, u16)> {
        self.names.get(i).map(|n| (n.host.as_str(), n.port))
    }

    /// The names whose lookup is due at `now`.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        (0..self.names.len())
            .filter(|&i| self.names[i].due <= now)
            .collect()
    }

    /// When the next lookup is due (`None`: no names).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.names.iter().map(|n| n.due).min()
    }

    /// Look every name up again soon: now, or a [`MIN_REFRESH`] after its
    /// last lookup (a client that lost its edge asks for fresh addresses).
    pub fn refresh_soon(&mut self, now: Instant) {
        for n in &mut self.names {
            let floor = n.last_lookup.map_or(now, |l| l + MIN_REFRESH);
            n.due = n.due.min(floor.max(now));
        }
    }

    /// Feed the answer of a lookup of name `i` started at `now`. A good
    /// answer replaces the name's addresses and is due again at its TTL
    /// (within [`MIN_REFRESH`]..[`MAX_REFRESH`]); a failure keeps them and
    /// retries at 1 s doubling up to that interval (a short TTL asked for
    /// prompt changes: a failing server does not slow them down).
    pub fn handle_answer(&mut self, i: usize, now: Instant, answer: Answer) -> Option<Note> {
        let n = self.names.get_mut(i)?;
        n.last_lookup = Some(now);
        let found = match answer {
            Answer::Found { ips, ttl } if !ips.is_empty() => Some((ips, ttl)),
            Answer::Found { .. } => None,
            Answer::Failed(e) => {
                return n.fail(now, e);
            }
        };
        let Some((ips, ttl)) = found else {
            return n.fail(now, "no A or AAAA record".into());
        };
        let mut addrs: Vec<SocketAddr> =
            ips.iter().map(|ip| SocketAddr::new(*ip, n.port)).collect();
        addrs.sort_unstable();
        addrs.dedup();
        n.addrs = addrs;
        n.failures = 0;
        n.interval = ttl
            .unwrap_or(SYSTEM_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH);
        n.due = now + n.interval;
        n.failing.take().map(|_| Note::Recovered {
            host: n.host.clone(),
        })
    }

    /// Every edge address: literals and each name's last good answer, one
    /// entry per socket address (the first entry naming it gives the SNI),
    /// sorted so that the order does not follow DNS rotation.
    pub fn addrs(&self) -> Vec<EdgeAddr> {
        let mut out: Vec<EdgeAddr> = self.literals.clone();
        for n in &self.names {
            out.extend(n.addrs.iter().map(|a| EdgeAddr {
                addr: *a,
                server_name: n.host.clone(),
            }));
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|a| seen.insert(a.addr));
        out.sort_by_key(|a| a.addr);
        out
    }
}

impl NameState {
    fn fail(&mut self, now: Instant, error: String) -> Option<Note> {
        let step = MIN_REFRESH.saturating_mul(1u32 << self.failures.min(5));
        self.failures = self.failures.saturating_add(1);
        self.due = now + step.min(self.interval);
        if self.failing.as_deref() == Some(error.as_str()) {
            return None;
        }
        self.failing = Some(error.clone());
        Some(Note::Failing {
            host: self.host.clone(),
            error,
            kept: self.addrs.len(),
        })
    }
}

/// The order in which a client tries `addrs` (sorted, as [`EdgeBook::addrs`]
/// gives them): from a random start, so clients spread over the edges; an
/// address that just failed or was lost (`last`) goes last, so the client
/// moves to another edge at once.
pub fn failover_order(
    addrs: &[EdgeAddr],
    last: Option<SocketAddr>,
    random: usize,
) -> Vec<EdgeAddr> {
    let (mut others, lost): (Vec<EdgeAddr>, Vec<EdgeAddr>) =
        addrs.iter().cloned().partition(|a| Some(a.addr) != last);
    if !others.is_empty() {
        let start = random % others.len();
        others.rotate_left(start);
    }
    others.extend(lost);
    others
}

/// Resolve `edges` entries once with the system resolver (`host:port`;
/// every address of a name is an edge). Entries that do not resolve are
/// skipped and returned as errors beside the addresses.
pub async fn resolve_edges(edges: &[String]) -> (Vec<EdgeAddr>, Vec<TunnelError>) {
    let mut out: Vec<EdgeAddr> = Vec::new();
    let mut errs = Vec::new();
    for e in edges {
        match EdgeEntry::parse(e) {
            Ok(EdgeEntry::Literal(a)) => {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            Ok(EdgeEntry::Name { host, port }) => match system_lookup(&host, port).await {
                Answer::Found { ips, .. } if !ips.is_empty() => {
                    for ip in ips {
                        let a = EdgeAddr {
                            addr: SocketAddr::new(ip, port),
                            server_name: host.clone(),
                        };
                        if !out.contains(&a) {
                            out.push(a);
                        }
                    }
                }
                _ => errs.push(TunnelError::NoAddress(e.clone())),
            },
            Err(err) => errs.push(err),
        }
    }
    (out, errs)
}

async fn system_lookup(host: &str, port: u16) -> Answer {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Err(_) => Answer::Failed("timed out".into()),
        Ok(Err(e)) => Answer::Failed(e.to_string()),
        Ok(Ok(addrs)) => Answer::Found {
            ips: addrs.map(|a| a.ip()).collect(),
            ttl: None,
        },
    }
}

/// Where lookups go.
enum Resolver {
    /// `[dns] nameservers`: TTLs known.
    Hickory(Box<TokioResolver>),
    /// getaddrinfo (hosts file, nsswitch, resolv.conf): no TTL.
    System,
}

impl Resolver {
    fn new(dns: &DnsSection) -> Self {
        if dns.nameservers.is_empty() {
            return Self::System;
        }
        // The same setup as the DR trigger.
        let Ok(mut builder) = crate::dns::builder(&dns.nameservers) else {
            return Self::System;
        };
        crate::dns::configure(&mut builder, QUERY_TIMEOUT);
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Self::Hickory(Box::new(builder.build()))
    }

    async fn lookup(&self, host: &str, port: u16) -> Answer {
        let r = match self {
            Self::System => return system_lookup(host, port).await,
            Self::Hickory(r) => r,
        };
        // Absolute, so no search domain is ever appended.
        let mut name = match Name::from_str(host) {
            Ok(n) => n,
            Err(e) => return Answer::Failed(format!("not a DNS name: {e}")),
        };
        name.set_fqdn(true);
        r.clear_cache();
        match tokio::time::timeout(LOOKUP_TIMEOUT, r.lookup_ip(name)).await {
            Err(_) => Answer::Failed("timed out".into()),
            Ok(Err(e)) => Answer::Failed(describe(&e)),
            Ok(Ok(found)) => {
                let ttl = found.as_lookup().record_iter().map(|r| r.ttl()).min();
                Answer::Found {
                    ips: found.iter().collect(),
                    ttl: ttl.map(|s| Duration::from_secs(s.into())),
                }
            }
        }
    }
}

/// A stable description of a failed lookup (no query ids or timings), so a
/// condition is logged once, not on every retry.
fn describe(e: &ResolveError) -> String {
    let ResolveErrorKind::Proto(p) = e.kind() else {
        return e.to_string();
    };
    match p.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain => "NXDOMAIN".into(),
            ResponseCode::NoError => "no A or AAAA record".into(),
            ResponseCode::ServFail => "SERVFAIL".into(),
            other => format!("the server answered {other}"),
        },
        ProtoErrorKind::Timeout => "timed out".into(),
        _ => e.to_string(),
    }
}

/// The current edge set of a config's `edges`, re-resolved in the
/// background for as long as the watch (or a receiver from
/// [`EdgeWatch::subscribe`]) lives.
pub struct EdgeWatch {
    rx: watch::Receiver<Vec<EdgeAddr>>,
    nudge: Arc<Notify>,
    /// Held when nothing needs resolving, so receivers never see the channel close.
    _fixed: Option<watch::Sender<Vec<EdgeAddr>>>,
}

impl EdgeWatch {
    /// Parse `edges` (bad entries are logged and skipped; the config check
    /// refuses them first) and start resolving. `ipv6 = false` drops IPv6
    /// answers (an IPv4-bound endpoint cannot reach them). Needs a runtime.
    pub fn start(edges: &[String], dns: &DnsSection, ipv6: bool) -> Self {
        let mut entries = Vec::new();
        for e in edges {
            match EdgeEntry::parse(e) {
                Ok(x) => entries.push(x),
                Err(err) => warn!("edges entry `{e}` skipped: {err}"),
            }
        }
        let book = EdgeBook::new(&entries, Instant::now());
        let (tx, rx) = watch::channel(book.addrs());
        let nudge = Arc::new(Notify::new());
        let fixed = if book.has_names() {
            let resolver = Resolver::new(dns);
            tokio::spawn(follow(book, resolver, ipv6, tx, Arc::clone(&nudge)));
            None
        } else {
            Some(tx)
        };
        Self {
            rx,
            nudge,
            _fixed: fixed,
        }
    }

    /// The edge addresses known now (sorted; empty until a name resolves).
    pub fn current(&self) -> Vec<EdgeAddr> {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every change of the set.
    pub fn subscribe(&self) -> watch::Receiver<Vec<EdgeAddr>> {
        self.rx.clone()
    }

    /// Ask for fresh answers now (at most one lookup per name per second).
    pub fn refresh(&self) {
        self.nudge.notify_one();
    }
}

/// The resolving loop: lookups when due, publishes changes, ends when the
/// last receiver is gone.
async fn follow(
    mut book: EdgeBook,
    resolver: Resolver,
    ipv6: bool,
    tx: watch::Sender<Vec<EdgeAddr>>,
    nudge: Arc<Notify>,
) {
    let mut empty_logged = false;
    loop {
        for i in book.due(Instant::now()) {
            let Some((host, port)) = book.name(i).map(|(h, p)| (h.to_string(), p)) else {
                continue;
            };
            let started = Instant::now();
            let mut answer = tokio::select! {
                a = resolver.lookup(&host, port) => a,
                _ = tx.closed() => return,
            };
            if let Answer::Found { ips, .. } = &mut answer {
                let before = ips.len();
                ips.retain(|ip| ipv6 || ip.is_ipv4());
                if ips.is_empty() && before > 0 {
                    answer = Answer::Failed("only IPv6 addresses, and the endpoint is IPv4".into());
                }
            }
            match book.handle_answer(i, started, answer) {
                Some(Note::Failing { host, error, kept }) => {
                    warn!(edge = %host, kept, "edge name does not resolve: {error}; keeping the last good addresses");
                }
                Some(Note::Recovered { host }) => info!(edge = %host, "edge name resolves again"),
                None => {}
            }
        }
        let new = book.addrs();
        let old = tx.borrow().clone();
        if new != old {
            let added: Vec<String> = new
                .iter()
                .filter(|a| !old.contains(a))
                .map(|a| a.addr.to_string())
                .collect();
            let removed: Vec<String> = old
                .iter()
                .filter(|a| !new.contains(a))
                .map(|a| a.addr.to_string())
                .collect();
            info!(
                ?added,
                ?removed,
                count = new.len(),
                "edge addresses changed"
            );
            empty_logged = false;
            tx.send_replace(new);
        } else if new.is_empty() && !empty_logged {
            warn!("no edge address resolved yet; retrying");
            empty_logged = true;
        }
        let sleep = async {
            match book.poll_timeout() {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = nudge.notified() => book.refresh_soon(Instant::now()),
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests;
