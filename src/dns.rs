//! Resolver setup shared by the DR trigger and edge discovery: hickory
//! asking `[dns] nameservers` over UDP and TCP (or the system
//! configuration), with no cache and no hosts file -- both callers schedule
//! their lookups by TTL themselves.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolverBuilder, TokioResolver};

/// A builder for `nameservers` (each over UDP and TCP), or for the system
/// configuration when the list is empty.
pub fn builder(
    nameservers: &[SocketAddr],
) -> Result<ResolverBuilder<TokioConnectionProvider>, hickory_resolver::ResolveError> {
    if nameservers.is_empty() {
        return TokioResolver::builder_tokio();
    }
    let servers: Vec<NameServerConfig> = nameservers
        .iter()
        .flat_map(|a| {
            [
                NameServerConfig::new(*a, Protocol::Udp),
                NameServerConfig::new(*a, Protocol::Tcp),
            ]
        })
        .collect();
    Ok(TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], servers),
        TokioConnectionProvider::default(),
    ))
}

/// The options both callers need: bounded queries, no cache, no hosts file.
pub fn configure(builder: &mut ResolverBuilder<TokioConnectionProvider>, timeout: Duration) {
    let o = builder.options_mut();
    o.timeout = timeout;
    o.attempts = 2;
    o.cache_size = 0;
    o.use_hosts_file = ResolveHosts::Never;
    o.try_tcp_on_error = true;
}
