//! Where the record text comes from: a file, or a TXT record asked afresh
//! at every poll (the shell schedules by TTL itself).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, ResolveErrorKind, TokioResolver};

use crate::config::DnsSection;
use crate::dr::machine::Lookup;

/// The resolver's per-query timeout is the poll interval within these bounds.
const QUERY_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const QUERY_TIMEOUT_MAX: Duration = Duration::from_secs(5);

/// `dns:NAME` as an absolute name, so no search domain is ever appended.
fn fqdn(name: &str) -> anyhow::Result<Name> {
    // Checked when the config was parsed (`Trigger::from_str`).
    let mut n = Name::from_str(name)
        .map_err(|e| anyhow::anyhow!("[dr] trigger `dns:{name}`: not a DNS name: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

fn query_timeout(poll: Duration) -> Duration {
    poll.clamp(QUERY_TIMEOUT_MIN, QUERY_TIMEOUT_MAX)
}

/// A resolver that asks afresh every time (we schedule by TTL ourselves):
/// `[dns] nameservers` over UDP and TCP, or the system's configuration.
fn resolver(dns: &DnsSection, poll: Duration) -> anyhow::Result<TokioResolver> {
    let mut builder = crate::dns::builder(&dns.nameservers).map_err(|e| {
        anyhow::anyhow!("[dr] trigger: cannot read the system resolver configuration ({e}); set [dns] nameservers")
    })?;
    crate::dns::configure(&mut builder, query_timeout(poll));
    Ok(builder.build())
}

/// Where the record text comes from.
pub(super) enum Source {
    Dns {
        resolver: Box<TokioResolver>,
        name: Name,
        /// Bound on one whole lookup (all servers, both transports).
        timeout: Duration,
    },
    File(PathBuf),
}

impl Source {
    /// `dns:NAME` through `[dns]`; one whole lookup is bounded by three
    /// query timeouts.
    pub(super) fn dns(name: &str, dns: &DnsSection, poll: Duration) -> anyhow::Result<Self> {
        Ok(Self::Dns {
            name: fqdn(name)?,
            resolver: Box::new(resolver(dns, poll)?),
            timeout: query_timeout(poll) * 3,
        })
    }

    pub(super) async fn lookup(&self) -> Lookup {
        match self {
            Self::File(p) => read_file(p),
            Self::Dns {
                resolver,
                name,
                timeout,
            } => {
                resolver.clear_cache();
                match tokio::time::timeout(*timeout, resolver.txt_lookup(name.clone())).await {
                    Err(_) => Lookup::Timeout,
                    Ok(Ok(answer)) => {
                        let mut texts = Vec::new();
                        let mut ttl = u32::MAX;
                        for r in answer.as_lookup().record_iter() {
                            if let RData::TXT(txt) = r.data() {
                                let joined: Vec<u8> = txt.txt_data().concat();
                                texts.push(String::from_utf8_lossy(&joined).into_owned());
                                ttl = ttl.min(r.ttl());
                            }
                        }
                        if texts.is_empty() {
                            return Lookup::NoData;
                        }
                        Lookup::Found {
                            texts,
                            ttl: Some(Duration::from_secs(ttl.into())),
                        }
                    }
                    Ok(Err(e)) => lookup_error(&e),
                }
            }
        }
    }
}

fn lookup_error(e: &ResolveError) -> Lookup {
    let ResolveErrorKind::Proto(p) = e.kind() else {
        return Lookup::Failed(e.to_string());
    };
    match p.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain => Lookup::NxDomain,
            ResponseCode::NoError => Lookup::NoData,
            ResponseCode::ServFail => Lookup::ServFail,
            other => Lookup::Failed(format!("the server answered {other}")),
        },
        ProtoErrorKind::Timeout => Lookup::Timeout,
        ProtoErrorKind::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => Lookup::Timeout,
        _ => Lookup::Failed(e.to_string()),
    }
}

pub(super) fn read_file(path: &Path) -> Lookup {
    match std::fs::read_to_string(path) {
        Err(e) => Lookup::Failed(format!("{}: {e}", path.display())),
        // The record text (`lifeboat dns-record --txt`), or a zone line pasted
        // as it is published (`lifeboat dns-record`).
        Ok(text) => Lookup::Found {
            texts: vec![crate::dr::record::from_zone_line(&text)
                .unwrap_or_else(|| text.trim_end_matches(['\r', '\n']).to_string())],
            ttl: None,
        },
    }
}
