//! DNS for the trigger tests: an authoritative server in process
//! (hickory-server on 127.0.0.1, UDP and TCP on one port) whose answer the
//! test swaps (records parsed from zone-file text, SERVFAIL, NXDOMAIN, or
//! silence); a DR trigger alone ([`Watcher`]); a log capture ([`Logs`]);
//! a long-running echo flow; `lifeboat dns-record` through the binary.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::{LowerName, Name, Record};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use lifeboat::config::{self, DnsSection, DrSection};
use lifeboat::dr::DrMode;
use lifeboat::metrics::Metrics;
use lifeboat::trust::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{eventually, DR_HOST};

/// The trigger record's name in every test.
pub const TRIGGER: &str = "_dr.example.test";

/// What the server answers to every query.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Records (from zone-file text): NOERROR with those matching the
    /// question, NOERROR/no data when only the name matches, else NXDOMAIN.
    Zone(Vec<Record>),
    ServFail,
    NxDomain,
    /// No answer at all (UDP dropped, TCP left hanging): the resolver times out.
    Silent,
}

/// Parse master-file text (absolute names) into records, with hickory's
/// own zone parser.
pub fn parse_zone(text: &str) -> Vec<Record> {
    let (_, sets) = Parser::new(text, None, Some(Name::root()))
        .parse()
        .unwrap_or_else(|e| panic!("zone text does not parse: {e}\n{text}"));
    sets.into_values()
        .flat_map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>())
        .collect()
}

struct Handler {
    answer: Arc<Mutex<Answer>>,
    queries: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let answer = self.answer.lock().expect("answer lock").clone();
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        let builder = MessageResponseBuilder::from_message_request(request);
        let sent = match answer {
            Answer::Silent => return header.into(),
            Answer::ServFail => {
                response
                    .send_response(builder.error_msg(request.header(), ResponseCode::ServFail))
                    .await
            }
            Answer::NxDomain => {
                header.set_response_code(ResponseCode::NXDomain);
                response
                    .send_response(builder.build_no_records(header))
                    .await
            }
            Answer::Zone(records) => {
                let Ok(info) = request.request_info() else {
                    return header.into();
                };
                let qname = info.query.name().clone();
                let qtype = info.query.query_type();
                let matching: Vec<&Record> = records
                    .iter()
                    .filter(|r| LowerName::from(r.name()) == qname && r.record_type() == qtype)
                    .collect();
                if matching.is_empty()
                    && !records.iter().any(|r| LowerName::from(r.name()) == qname)
                {
                    header.set_response_code(ResponseCode::NXDomain);
                }
                response
                    .send_response(builder.build(header, matching, [], [], []))
                    .await
            }
        };
        sent.unwrap_or_else(|_| header.into())
    }
}

/// An authoritative DNS server on 127.0.0.1 (UDP and TCP, same port).
pub struct DnsServer {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    queries: Arc<AtomicUsize>,
    _server: ServerFuture<Handler>,
}

impl DnsServer {
    pub async fn start() -> Self {
        let answer = Arc::new(Mutex::new(Answer::NxDomain));
        let queries = Arc::new(AtomicUsize::new(0));
        let mut server = ServerFuture::new(Handler {
            answer: Arc::clone(&answer),
            queries: Arc::clone(&queries),
        });
        // UDP on port 0, then TCP on the same port (retry if it is taken).
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
            let port = udp.local_addr().expect("addr").port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5));
        Self {
            addr,
            answer,
            queries,
            _server: server,
        }
    }

    pub fn set(&self, a: Answer) {
        *self.answer.lock().expect("answer lock") = a;
    }

    /// Serve the records of this master-file text.
    pub fn publish_zone(&self, zone: &str) {
        self.set(Answer::Zone(parse_zone(zone)));
    }

    /// Serve `text` as the trigger TXT record with a 1 s TTL, written by
    /// lifeboat's own zone-line writer.
    pub fn publish(&self, text: &str) {
        let line = lifeboat::dns_record::txt_line(TRIGGER, 1, text).expect("TXT line");
        self.publish_zone(&line);
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// `[dns]` pointing at this server.
    pub fn dns_section(&self) -> DnsSection {
        DnsSection {
            nameservers: vec![self.addr],
            ..DnsSection::default()
        }
    }
}

/// Parse `[dr]` keys (TOML text) the way the config loader does.
pub fn dr_section(toml: &str) -> DrSection {
    config::parse_str::<DrSection>(Path::new("dr.toml"), toml)
        .unwrap_or_else(|e| panic!("[dr] text: {e}\n{toml}"))
}

/// A DR trigger alone (no role), for tests of the trigger itself.
pub struct Watcher {
    pub mode: watch::Receiver<DrMode>,
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Watcher {
    /// `trigger = "dns:_dr.example.test"`, `poll_interval = "1s"`, `jitter = "0s"`
    /// plus `extra` `[dr]` lines, against `dns`.
    pub fn start(dns: &DnsServer, role: Role, extra: &str) -> Self {
        let text = format!(
            "trigger = \"dns:{TRIGGER}\"\npoll_interval = \"1s\"\njitter = \"0s\"\n{extra}"
        );
        Self::start_with(dns, role, &dr_section(&text))
    }

    pub fn start_with(dns: &DnsServer, role: Role, dr: &DrSection) -> Self {
        let metrics = Arc::new(Metrics::new(role.as_str()));
        let stop = CancellationToken::new();
        let mode = lifeboat::dr::trigger::start_for(
            role,
            dr,
            &dns.dns_section(),
            Arc::clone(&metrics),
            stop.clone(),
        )
        .expect("DR trigger starts");
        Self {
            mode,
            metrics,
            stop,
        }
    }

    pub fn mode(&self) -> DrMode {
        *self.mode.borrow()
    }

    pub fn lookups(&self, result: &str) -> u64 {
        self.metrics
            .dr_trigger_lookups
            .with_label_values(&[result])
            .get()
    }

    pub async fn wait_mode(&self, mode: DrMode, within: Duration) {
        let rx = self.mode.clone();
        eventually(&format!("DR mode {mode}"), within, || *rx.borrow() == mode).await;
    }

    /// Wait until `lookups_total{result}` grew by `n` from `from`.
    pub async fn wait_lookups(&self, result: &str, from: u64, n: u64) {
        let m = Arc::clone(&self.metrics);
        let r = result.to_string();
        eventually(
            &format!("{n} more `{result}` lookups"),
            Duration::from_secs(15),
            move || m.dr_trigger_lookups.with_label_values(&[&r]).get() >= from + n,
        )
        .await;
    }
}

/// Log lines captured for the current thread (tests run their roles on a
/// current-thread runtime, so every role's events land here).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let guard = tracing::subscriber::set_default(sub);
        (logs, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }

    /// Lines containing exactly `needle` as their message.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Self;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A long-running flow: `POST /echo` with a large body, fed a chunk at a time.
pub struct EchoFlow {
    s: TcpStream,
    seq: u8,
}

impl EchoFlow {
    pub async fn open(socks: SocketAddr, port: u16) -> Self {
        let mut s = lifeboat::demo::socks_client::connect(socks, DR_HOST, port)
            .await
            .expect("echo flow connects");
        let head =
            format!("POST /echo HTTP/1.1\r\nHost: {DR_HOST}\r\nContent-Length: 100000000\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("write head");
        let mut resp = Vec::new();
        let mut b = [0u8; 1];
        while !resp.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
                .await
                .expect("echo head in time")
                .expect("read echo head");
            assert_eq!(n, 1, "echo flow closed before its head");
            resp.push(b[0]);
        }
        assert!(resp.starts_with(b"HTTP/1.1 200"), "{resp:?}");
        Self { s, seq: 0 }
    }

    /// Send `len` bytes and check the same bytes come back.
    pub async fn ping(&mut self, len: usize) -> std::io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ self.seq)
            .collect();
        self.s.write_all(&data).await?;
        let mut back = vec![0u8; len];
        tokio::time::timeout(Duration::from_secs(10), self.s.read_exact(&mut back))
            .await
            .map_err(|_| std::io::Error::other("echo timed out"))??;
        assert_eq!(back, data, "echo not byte-exact");
        Ok(())
    }

    /// Whether the flow ends (EOF or reset) within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(within, self.s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

/// A TXT record's lines through `lifeboat dns-record` (the real binary).
pub fn dns_record_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("dns-record")
        .args(args)
        .output()
        .expect("run lifeboat dns-record");
    assert!(
        out.status.success(),
        "lifeboat dns-record {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Name of a TXT record in parsed zone records, joined character-strings.
pub fn txt_texts(records: &[Record], name: &str) -> Vec<String> {
    let want =
        LowerName::from(Name::from_str(&format!("{}.", name.trim_end_matches('.'))).expect("name"));
    records
        .iter()
        .filter(|r| LowerName::from(r.name()) == want)
        .filter_map(|r| match r.data() {
            hickory_server::proto::rr::RData::TXT(t) => {
                Some(String::from_utf8_lossy(&t.txt_data().concat()).into_owned())
            }
            _ => None,
        })
        .collect()
}
