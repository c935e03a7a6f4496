//! The one topology builder: an app, an edge (DR from a fixed mode, a file
//! or a DNS server), connectors and clients, started from the parts of a
//! [`Rig`] with the options a test asks for.

use std::net::SocketAddr;
use std::time::Duration;

use lifeboat::config::{self, EdgeConfig};
use lifeboat::dr::{DrMode, Trigger};
use lifeboat::trust::Role;

use super::{
    Ca, CertFiles, DnsServer, EdgeSpec, Rig, RigEdge, Topology, ALICE, FOREIGN_TD, TRIGGER,
};

/// What connectors and clients dial with: their `transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `quic`.
    Quic,
    /// `tls`: a single TLS connection (a connector) or an HTTP/2 tunnel (a client).
    Tls,
    /// `auto`, the product's default: QUIC first, TLS where UDP is not served.
    Auto,
}

impl Transport {
    /// Its word in a config's `transport`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tls => "tls",
            Self::Auto => "auto",
        }
    }
}

/// Which listeners each edge has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// QUIC only.
    Quic,
    /// TLS only.
    Tls,
    /// QUIC and TLS, on one port number (the edge binds both on one port 0),
    /// as `auto` expects.
    Both,
}

impl Listen {
    /// The listeners a transport needs: `auto` finds TLS on QUIC's port.
    fn for_transport(t: Transport) -> Self {
        match t {
            Transport::Quic => Self::Quic,
            Transport::Tls => Self::Tls,
            Transport::Auto => Self::Both,
        }
    }

    /// The body of the edge's `[listen]`.
    fn lines(self) -> &'static str {
        match self {
            Self::Quic => "quic = \"127.0.0.1:0\"",
            Self::Tls => "tls = \"127.0.0.1:0\"",
            Self::Both => "quic = \"127.0.0.1:0\"\ntls = \"127.0.0.1:0\"",
        }
    }
}

/// Where the edge's DR mode comes from.
#[derive(Debug, Clone)]
pub enum Dr {
    /// `static:on|test|off`.
    Static(DrMode),
    /// `file:PATH`, the file first holding this record text.
    File(String),
    /// `dns:_dr.example.test` asked of `nameserver` every second, with
    /// `extra` lines added to `[dr]`.
    Dns {
        nameserver: SocketAddr,
        extra: String,
    },
}

/// Which certificate a client presents.
#[derive(Debug, Clone)]
pub enum ClientCert {
    /// `client/<user>` from the deployment's CA.
    User(String),
    /// `client/eve` from another CA of the same trust domain (the client
    /// itself pins both CAs, so it trusts the edge and only the edge refuses).
    ForeignCa,
    /// `client/carol`, expired yesterday.
    Expired,
    /// `client/mallory`, listed in the CA's CRL (the builder revoked it and
    /// configured the edge's `[tls] crl`; see [`Builder::revoked_user`]).
    Revoked,
    /// The first connector's certificate, used by a client.
    ConnectorCert,
    /// These files, of the deployment's CA (issued by the test).
    Files(CertFiles),
}

impl ClientCert {
    pub fn user(u: &str) -> Self {
        Self::User(u.into())
    }
}

/// Chooses what a [`Topology`] runs.
#[derive(Debug, Clone)]
pub struct Builder {
    dr: Dr,
    test_users: Vec<String>,
    connectors: usize,
    client: Option<ClientCert>,
    more_users: Vec<String>,
    segment_ports: Vec<u16>,
    crl: bool,
    revoked: Vec<String>,
    foreign_td_pinned: bool,
    access_log: bool,
    transport: Transport,
    listen: Option<Listen>,
    edges: usize,
    edge_limits: String,
    connector_limits: String,
    any_port: bool,
    dr_extra: String,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            dr: Dr::Static(DrMode::On),
            test_users: vec![ALICE.into()],
            connectors: 1,
            client: Some(ClientCert::user(ALICE)),
            more_users: Vec::new(),
            segment_ports: Vec::new(),
            crl: false,
            revoked: Vec::new(),
            foreign_td_pinned: false,
            access_log: false,
            transport: Transport::Auto,
            listen: None,
            edges: 1,
            edge_limits: String::new(),
            connector_limits: String::new(),
            any_port: false,
            dr_extra: String::new(),
        }
    }
}

impl Builder {
    /// The product's defaults: `transport = "auto"`, DR on, one edge, one
    /// connector, alice's client.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`Builder::new`] with the transport pinned to QUIC (edges listening
    /// on QUIC only).
    pub fn quic() -> Self {
        Self::new().transport(Transport::Quic)
    }

    pub fn dr(mut self, dr: Dr) -> Self {
        self.dr = dr;
        self
    }

    /// DR from a file trigger holding `text` (rewrite it with [`Topology::set_dr`]).
    pub fn dr_file(self, text: &str) -> Self {
        self.dr(Dr::File(text.into()))
    }

    /// DR from the TXT record [`TRIGGER`] that `dns` serves, polled every
    /// second; `extra_dr` is added to the edge's `[dr]`.
    pub fn dns(self, dns: &DnsServer, extra_dr: &str) -> Self {
        self.dr(Dr::Dns {
            nameserver: dns.addr,
            extra: extra_dr.into(),
        })
    }

    /// Lines added to the edge's `[dr]` after `test_users` (`cert_grace`, ...).
    pub fn dr_extra(mut self, lines: &str) -> Self {
        self.dr_extra = lines.into();
        self
    }

    pub fn test_users(mut self, users: &[&str]) -> Self {
        self.test_users = users.iter().map(|u| (*u).to_string()).collect();
        self
    }

    /// How many connectors (all of group `dc1-dr`) run.
    pub fn connectors(mut self, n: usize) -> Self {
        self.connectors = n;
        self
    }

    /// The default client's certificate; `None` starts no client.
    pub fn client(mut self, cert: Option<ClientCert>) -> Self {
        self.client = cert;
        self
    }

    /// Another client, presenting `client/<user>` (see [`Topology::user`]).
    pub fn also_client(mut self, user: &str) -> Self {
        self.more_users.push(user.into());
        self
    }

    /// Another TCP port in the DR segment `payroll` (besides the app's).
    pub fn segment_port(mut self, port: u16) -> Self {
        self.segment_ports.push(port);
        self
    }

    /// Issue `client/<user>` and revoke it before the edge starts; turns on
    /// the edge's `[tls] crl`.
    pub fn revoked_user(mut self, user: &str) -> Self {
        self.revoked.push(user.into());
        self.crl = true;
        self
    }

    /// Configure the edge's `[tls] crl` (the CA's empty CRL from `pki init`).
    pub fn crl(mut self) -> Self {
        self.crl = true;
        self
    }

    /// Make a second CA, of trust domain [`FOREIGN_TD`], and append its
    /// certificate to the edge's pinned CA file.
    pub fn edge_pins_foreign_trust_domain(mut self) -> Self {
        self.foreign_td_pinned = true;
        self
    }

    pub fn access_log(mut self) -> Self {
        self.access_log = true;
        self
    }

    /// What the connectors and clients dial with (default: `auto`, as in
    /// the product). Unless [`Builder::listen`] says otherwise, each edge
    /// listens as the transport needs: QUIC, TLS, or both on one port number.
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }

    /// Which listeners each edge has.
    pub fn listen(mut self, l: Listen) -> Self {
        self.listen = Some(l);
        self
    }

    /// How many edges run (alike but for their addresses); connectors and
    /// clients list them all.
    pub fn edges(mut self, n: usize) -> Self {
        assert!(n >= 1, "a topology has at least one edge");
        self.edges = n;
        self
    }

    /// Lines added to each edge's `[limits]`.
    pub fn edge_limits(mut self, lines: &str) -> Self {
        self.edge_limits = lines.into();
        self
    }

    /// Lines added to each connector's `[limits]`.
    pub fn connector_limits(mut self, lines: &str) -> Self {
        self.connector_limits = lines.into();
        self
    }

    /// Both segments take every TCP port (`1-65535`), not only the app's.
    pub fn any_port(mut self) -> Self {
        self.any_port = true;
        self
    }

    /// Start it all and wait until it is ready: every connector registered
    /// and every client's tunnel up (when those run and can come up).
    pub async fn start(self) -> Topology {
        let t = self.start_unready().await;
        t.wait_ready().await;
        t
    }

    /// Start it all without waiting for connectors or the client tunnels.
    pub async fn start_unready(mut self) -> Topology {
        if matches!(self.client, Some(ClientCert::Revoked))
            && !self.revoked.iter().any(|u| u == "mallory")
        {
            self = self.revoked_user("mallory");
        }
        let rig = Rig::new().await;
        let d = rig.dir.path().to_path_buf();
        let connector_certs: Vec<CertFiles> = (0..self.connectors.max(1))
            .map(|i| rig.connector_cert(i))
            .collect();
        for u in &self.revoked {
            let c = rig.ca.issue(Role::Client, u, None);
            rig.ca.revoke(&c);
        }
        let foreign_td = self
            .foreign_td_pinned
            .then(|| Ca::init(&d.join("foreign-td"), FOREIGN_TD));
        let mut edge_ca = rig.ca.pem();
        if let Some(f) = &foreign_td {
            edge_ca = d.join("edge-ca.pem");
            let mut both = std::fs::read(rig.ca.pem()).expect("read ca");
            both.extend(std::fs::read(f.pem()).expect("read foreign ca"));
            std::fs::write(&edge_ca, both).expect("write edge ca");
        }
        let dr_file = d.join("dr.txt");
        let listen = self
            .listen
            .unwrap_or_else(|| Listen::for_transport(self.transport));
        let dr = self.dr_lines(&dr_file);
        let ports = self.ports(rig.app.port());
        let edge_text = |listen: &str| {
            rig.edge_config(&EdgeSpec {
                ca: &edge_ca,
                crl: self.crl.then(|| rig.ca.crl()).as_deref(),
                listen,
                dr: &dr,
                nameserver: match &self.dr {
                    Dr::Dns { nameserver, .. } => Some(*nameserver),
                    Dr::Static(_) | Dr::File(_) => None,
                },
                limits: &self.edge_limits,
                access_log: self.access_log,
                ports: &ports,
            })
        };
        let first = edge_text(listen.lines());
        if let Dr::File(_) = &self.dr {
            let cfg: EdgeConfig = config::from_text(&d.join("edge.toml"), &first)
                .unwrap_or_else(|e| panic!("edge config: {e}\n{first}"));
            assert_eq!(cfg.dr.trigger, Some(Trigger::File(dr_file.clone())));
        }
        let mut edges = vec![rig.start_edge(&first)];
        for i in 2..=self.edges {
            edges.push(rig.start_edge_as(&format!("edge{i}"), &edge_text(listen.lines())));
        }
        let dial = edges
            .iter()
            .map(|e| match self.transport {
                Transport::Quic => e.quic.expect("edge QUIC address"),
                Transport::Tls => e.tls.expect("edge TLS address"),
                Transport::Auto => e.quic.or(e.tls).expect("edge address"),
            })
            .collect();
        let RigEdge {
            state,
            metrics,
            mode,
            quic,
            tls,
            task,
            config,
        } = edges.remove(0);
        let mut t = Topology {
            quic,
            tls,
            edge_config: config,
            transport: self.transport,
            connector_limits: self.connector_limits,
            dial,
            more_edges: edges,
            edge: state,
            edge_mode: mode,
            edge_metrics: metrics,
            mode_wait: match self.dr {
                Dr::Dns { .. } => Duration::from_secs(10),
                Dr::Static(_) | Dr::File(_) => Duration::from_secs(5),
            },
            connectors: Vec::new(),
            connector_certs,
            client: None,
            client_user: None,
            more_clients: Vec::new(),
            foreign_td,
            dr_file,
            tasks: vec![("edge", task)],
            rig,
        };
        for i in 0..self.connectors {
            let (m, task) = t.start_connector(i);
            t.connectors.push(m);
            t.tasks.push(("connector", task));
        }
        if let Some(cert) = self.client {
            if let ClientCert::User(u) = &cert {
                t.client_user = Some(u.clone());
            }
            t.client = Some(t.start_client(cert).await);
        }
        for u in self.more_users {
            let c = t.start_client(ClientCert::User(u.clone())).await;
            t.more_clients.push((u, c));
        }
        t
    }

    /// The body of the edge's `[dr]`; a file trigger's file is written.
    fn dr_lines(&self, dr_file: &std::path::Path) -> String {
        let trigger = match &self.dr {
            Dr::Static(m) => format!("static:{}", m.as_str()),
            Dr::File(text) => {
                std::fs::write(dr_file, text).expect("write DR file");
                format!("file:{}", dr_file.display())
            }
            Dr::Dns { .. } => format!("dns:{TRIGGER}"),
        };
        let users = self
            .test_users
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut lines = format!("trigger = {trigger:?}\ntest_users = [{users}]\n");
        if let Dr::Dns { extra, .. } = &self.dr {
            lines.push_str(&format!("poll_interval = \"1s\"\n{extra}\n"));
        }
        if !self.dr_extra.is_empty() {
            lines.push_str(&format!("{}\n", self.dr_extra));
        }
        lines
    }

    /// The segments' `tcp_ports`: the app's port and the extra ones.
    fn ports(&self, app_port: u16) -> String {
        if self.any_port {
            return "\"1-65535\"".into();
        }
        let mut ports = vec![app_port.to_string()];
        ports.extend(self.segment_ports.iter().map(u16::to_string));
        ports
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
