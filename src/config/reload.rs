//! What a reload can apply live and what needs a restart, per role: pure
//! comparisons of the running config with the new one. The shells (edge
//! `reload`, `process`) log the keys listed here as "needs a restart".
//!
//! Live everywhere: certificate, key, CA and CRL *contents* (re-read at every
//! reload). Live at the edge: segments, server and connector groups,
//! `[dr] test_users`, `[log]`, and the `[limits]` read per flow
//! (`preamble_bytes`, `preamble_timeout`, `handshake_timeout`,
//! `connect_timeout`, `drain_timeout`). Everything bound at start-up
//! (listeners, transport, trigger, resolver, semaphores, windows) needs a
//! restart; connector and client state is fixed at start-up, so for them
//! every change but the certificates does.

use super::{ClientConfig, ConnectorConfig, EdgeConfig, Limits};

/// Keys whose change a reload cannot apply, in config order.
pub trait RestartNeeded {
    fn restart_needed(&self, new: &Self) -> Vec<&'static str>;
}

fn changed(out: &mut Vec<&'static str>, key: &'static str, differs: bool) {
    if differs {
        out.push(key);
    }
}

/// `[limits]` keys fixed when the role was bound.
fn bound_limits(out: &mut Vec<&'static str>, old: &Limits, new: &Limits) {
    changed(
        out,
        "limits.max_tunnels",
        old.max_tunnels != new.max_tunnels,
    );
    changed(out, "limits.max_flows", old.max_flows != new.max_flows);
    changed(
        out,
        "limits.max_flows_per_tunnel",
        old.max_flows_per_tunnel != new.max_flows_per_tunnel,
    );
    changed(
        out,
        "limits.max_handshakes_inflight",
        old.max_handshakes_inflight != new.max_handshakes_inflight,
    );
    changed(
        out,
        "limits.idle_timeout",
        old.idle_timeout != new.idle_timeout,
    );
    changed(
        out,
        "limits.flow_window",
        old.flow_window != new.flow_window,
    );
    changed(
        out,
        "limits.tunnel_window",
        old.tunnel_window != new.tunnel_window,
    );
}

impl RestartNeeded for EdgeConfig {
    fn restart_needed(&self, new: &Self) -> Vec<&'static str> {
        let mut out = Vec::new();
        changed(
            &mut out,
            "trust_domain",
            self.trust_domain != new.trust_domain,
        );
        changed(&mut out, "tls", self.tls != new.tls);
        changed(&mut out, "listen", self.listen != new.listen);
        let (a, b) = (&self.dr, &new.dr);
        let dr_bound = a.trigger != b.trigger
            || a.poll_interval != b.poll_interval
            || a.signing_key != b.signing_key
            || a.state_file != b.state_file
            || a.cert_grace != b.cert_grace
            || a.jitter != b.jitter;
        changed(&mut out, "dr (all but test_users)", dr_bound);
        changed(&mut out, "dns", self.dns != new.dns);
        bound_limits(&mut out, &self.limits, &new.limits);
        out
    }
}

/// Push the name of every listed field that differs between `$a` and `$b`.
macro_rules! changed_fields {
    ($out:expr, $a:expr, $b:expr, [$($field:ident => $name:literal),* $(,)?]) => {
        $( changed($out, $name, $a.$field != $b.$field); )*
    };
}

/// Connector and client state is fixed at start-up: every change needs a
/// restart (certificate files are re-read on their own; see `trust::watch`).
impl RestartNeeded for ConnectorConfig {
    fn restart_needed(&self, new: &Self) -> Vec<&'static str> {
        let mut out = Vec::new();
        changed_fields!(&mut out, self, new, [
            trust_domain => "trust_domain", tls => "tls", edges => "edges",
            transport => "transport", listen => "listen", dr => "dr", dns => "dns",
            limits => "limits", log => "log",
        ]);
        out
    }
}

impl RestartNeeded for ClientConfig {
    fn restart_needed(&self, new: &Self) -> Vec<&'static str> {
        let mut out = Vec::new();
        // Listeners and forwards need a rebind.
        changed_fields!(&mut out, self, new, [
            trust_domain => "trust_domain", tls => "tls", edges => "edges",
            transport => "transport", listen => "listen", forwards => "forward",
            dr => "dr", dns => "dns", limits => "limits", log => "log",
        ]);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::RestartNeeded;
    use crate::config::{from_text, ClientConfig, EdgeConfig};

    const EDGE: &str = r#"trust_domain = "dr.example.com"
[tls]
ca = "ca.pem"
cert = "e.pem"
key = "e.key"
[listen]
quic = "127.0.0.1:0"
[dr]
trigger = "static:on"
test_users = ["alice"]
[[connector_group]]
name = "g"
dr = true
[[server_group]]
name = "s"
connector_groups = ["g"]
[[segment]]
name = "a"
dr = true
domains = ["a.example"]
tcp_ports = ["443"]
server_groups = ["s"]
"#;

    fn edge(text: &str) -> EdgeConfig {
        from_text(Path::new("/etc/lifeboat/edge.toml"), text).unwrap()
    }

    #[test]
    fn edge_policy_is_live_bindings_are_not() {
        let old = edge(EDGE);
        let live = edge(
            &EDGE
                .replace("a.example", "b.example")
                .replace("[\"alice\"]", "[\"bob\"]")
                .replace("[listen]", "[limits]\npreamble_timeout = \"3s\"\n[listen]"),
        );
        assert!(old.restart_needed(&live).is_empty());
        let bound = edge(
            &EDGE
                .replace("127.0.0.1:0", "127.0.0.1:8443")
                .replace("static:on", "static:test")
                .replace("e.pem", "e2.pem")
                .replace("[listen]", "[limits]\nmax_flows = 5\n[listen]"),
        );
        assert_eq!(
            old.restart_needed(&bound),
            [
                "tls",
                "listen",
                "dr (all but test_users)",
                "limits.max_flows"
            ]
        );
    }

    #[test]
    fn client_listeners_need_a_restart() {
        let text = "trust_domain = \"x.example\"\nedges = [\"e.example:443\"]\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[listen]\nsocks = \"127.0.0.1:1080\"\n";
        let c = |t: &str| from_text::<ClientConfig>(Path::new("/c.toml"), t).unwrap();
        let old = c(text);
        assert!(old.restart_needed(&c(text)).is_empty());
        let new = c(&format!(
            "{}\n[[forward]]\nlisten = \"127.0.0.1:2222\"\nto = \"git.example:22\"\n",
            text.replace("1080", "1081")
        ));
        assert_eq!(old.restart_needed(&new), ["listen", "forward"]);
    }
}
