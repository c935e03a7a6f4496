//! Entry points for the fuzz targets in `fuzz/` and for
//! `tests/fuzz_corpus.rs`, which replays the committed corpora on stable.
//! Always compiled, hidden from the docs. Each function takes arbitrary
//! bytes, must never panic on them, and asserts what the parser promises:
//! round trips through the encoder, length accounting, agreement with the
//! reference matcher. A failed assertion is a bug the fuzzer found.

use std::path::Path;

use bytes::BytesMut;

use crate::config::{self, ClientConfig, ConnectorConfig, EdgeConfig};
use crate::dr::record::{self, Kind, Spec};
use crate::preamble::{self, Dest, Host};
use crate::segments::{reference, Lookup, Matcher, SegmentSpec};
use crate::wire;

/// The default preamble limit.
const LIMIT: usize = 8 * 1024;

/// `preamble`: CONNECT request and response heads.
pub fn preamble(data: &[u8]) {
    match preamble::parse_request(data, LIMIT) {
        Ok(Some((req, consumed))) => {
            assert!(consumed <= data.len() && consumed <= LIMIT);
            // The head alone parses the same; the rest is flow data.
            let again = preamble::parse_request(&data[..consumed], LIMIT);
            assert_eq!(again, Ok(Some((req.clone(), consumed))));
            // Our own encoding of the destination round-trips.
            let enc = preamble::encode_request(&req.dest);
            let back = preamble::parse_request(&enc, LIMIT);
            assert_eq!(back, Ok(Some((req.clone(), enc.len()))));
            assert_eq!(Dest::parse(&req.dest.to_string()), Ok(req.dest));
        }
        Ok(None) => assert!(data.len() < LIMIT, "need more at the limit"),
        Err(_) => {}
    }
    match preamble::parse_response(data, LIMIT) {
        Ok(Some((resp, consumed))) => {
            assert!(consumed <= data.len() && consumed <= LIMIT);
            if (200..300).contains(&resp.status) {
                assert_eq!(resp.content_length, 0);
            }
        }
        Ok(None) => assert!(data.len() < LIMIT, "need more at the limit"),
        Err(_) => {}
    }
}

/// `wire`: edge↔connector flow header and reply.
pub fn wire(data: &[u8]) {
    if let Ok(Some((h, consumed))) = wire::parse_flow_header(data) {
        assert!(consumed <= data.len() && consumed <= wire::MAX_HEADER);
        let mut out = BytesMut::new();
        wire::encode_flow_header(&h, &mut out).expect("a parsed header encodes");
        // Canonical but for the case of names, which the parser lowercases.
        assert_eq!(out.len(), consumed);
        assert_eq!(wire::parse_flow_header(&out), Ok(Some((h, consumed))));
        // Every proper prefix is "need more".
        for n in [0, 1, 2, consumed / 2, consumed - 1] {
            assert_eq!(wire::parse_flow_header(&data[..n]), Ok(None), "prefix {n}");
        }
    }
    if let Ok(Some((r, consumed))) = wire::parse_flow_reply(data) {
        assert!(consumed <= data.len());
        let mut out = BytesMut::new();
        wire::encode_flow_reply(&r, &mut out);
        assert_eq!(&out[..], &data[..consumed]);
        assert_eq!(wire::parse_flow_reply(&out), Ok(Some((r, consumed))));
    }
}

/// `record`: the DR trigger TXT record.
pub fn record(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rec) = record::parse(text) else {
        return;
    };
    for now in [0, 1, u64::MAX / 2, u64::MAX] {
        let _ = rec.mode_at(now);
    }
    let spec = Spec {
        mode: rec.mode,
        kind: Kind::All,
        start: rec.start,
        end: rec.end,
    };
    let back = record::parse(&record::encode(&spec, None)).expect("encode writes what parse reads");
    assert_eq!(
        (back.mode, back.start, back.end, back.signature),
        (rec.mode, rec.start, rec.end, None)
    );
    assert!(back.applies);
    if let Some((_, signed)) = &rec.signature {
        assert!(text.starts_with(signed.as_str()));
    }
}

/// `config`: TOML into the three role configs; an edge config that parses is
/// validated and compiled, with warnings. Errors must name a line inside the
/// text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/fuzz/edge.toml");
    let lines = text.lines().count() + 1;
    let check_line = |e: &config::ConfigError| {
        assert!(e.line.is_none_or(|l| (1..=lines).contains(&l)), "{e}");
    };
    match config::from_text::<EdgeConfig>(file, text) {
        Ok(cfg) => {
            let m = config::compile_segments(&cfg, file, text).expect("validated configs compile");
            assert_eq!(
                m.segments().len(),
                cfg.segments.iter().filter(|s| s.dr).count()
            );
            for w in config::edge_warnings(&cfg, &m, file, text) {
                assert!(w.line.is_none_or(|l| (1..=lines).contains(&l)), "{w}");
            }
        }
        Err(e) => check_line(&e),
    }
    for r in [
        config::from_text::<ConnectorConfig>(file, text).err(),
        config::from_text::<ClientConfig>(file, text).err(),
    ]
    .into_iter()
    .flatten()
    {
        check_line(&r);
    }
}

/// `segments`: compile and look up, checked against the linear reference.
///
/// Input: UTF-8 lines. `name|domains|cidrs|ports` (comma-separated lists)
/// defines a segment; `?host:port` or `?!raw-host:port` (a hand-built,
/// unnormalised name) is a destination to look up.
pub fn segments(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut specs = Vec::new();
    let mut probes = Vec::new();
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    for line in text.lines().take(256) {
        if let Some(raw) = line.strip_prefix("?!") {
            if let Some((host, port)) = raw.rsplit_once(':') {
                if let Ok(port) = port.parse() {
                    probes.push(Dest {
                        host: Host::Name(host.to_owned()),
                        port,
                    });
                }
            }
        } else if let Some(d) = line.strip_prefix('?') {
            if let Ok(d) = Dest::parse(d) {
                probes.push(d);
            }
        } else {
            let mut parts = line.split('|');
            let mut next = || parts.next().unwrap_or("");
            let (name, domains, cidrs, ports) = (next(), next(), next(), next());
            specs.push(SegmentSpec {
                name: name.to_owned(),
                domains: list(domains),
                cidrs: list(cidrs),
                tcp_ports: list(ports),
                connector_groups: vec!["g".into()],
            });
        }
    }
    let m = match Matcher::compile(&specs) {
        Ok(m) => m,
        Err(e) => {
            // The error names a segment that exists, and an entry in range.
            let (seg, key) = e.culprit();
            // Compilation stops at the first bad spec, before any later
            // spec of the same name: the culprit is the first of its name.
            let spec = specs
                .iter()
                .find(|s| Some(s.name.as_str()) == seg)
                .expect("culprit is a spec");
            let len = match key {
                "domains" => spec.domains.len(),
                "cidrs" => spec.cidrs.len(),
                "tcp_ports" => spec.tcp_ports.len(),
                _ => usize::MAX,
            };
            assert!(e.item().is_none_or(|i| i < len), "{e}");
            return;
        }
    };
    assert_eq!(m.segments().len(), specs.len());
    for d in &probes {
        let got = m.lookup(d);
        assert_eq!(got, reference::lookup(m.segments(), d), "dest {d}");
        let (explained, key) = m.explain(d);
        assert_eq!(explained, got);
        assert_eq!(key.is_some(), got != Lookup::Miss);
        if let Lookup::Hit(s) = got {
            assert!(s.ports.contains(d.port));
        }
    }
}

/// `dr_machine`: the DR mode machine driven by arbitrary records and
/// clocks. Input: lines; a line `@N` moves the clock N seconds (wrapping
/// the unix clock anywhere in u64), `restore:TEXT` restores a state file,
/// `timeout` fires the poll timer, anything else is one TXT record. The
/// machine must never panic, absurd `t=`/`x=` and clocks included.
pub fn dr_machine(data: &[u8]) {
    use std::time::{Duration, Instant};

    use crate::dr::machine::{Lookup, Machine, Now, Settings};

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let start = Instant::now();
    let mut now = Now {
        at: start,
        unix: Duration::from_secs(1_800_000_000),
    };
    let mut m = Machine::new(
        Settings {
            poll_interval: Duration::from_secs(30),
            key: None,
        },
        now,
    );
    for line in text.lines().take(64) {
        if let Some(n) = line.strip_prefix('@') {
            let secs: u64 = n.trim().parse().unwrap_or(0);
            // The monotonic clock moves at most a day a step.
            now.at += Duration::from_secs(secs % 86_400);
            now.unix = Duration::from_secs(secs);
            continue;
        }
        if let Some(state) = line.strip_prefix("restore:") {
            let _ = m.restore(now, state);
        } else if line == "timeout" {
            let _ = m.handle_timeout(now);
        } else {
            let _ = m.handle_lookup(
                now,
                Lookup::Found {
                    texts: vec![line.to_string()],
                    ttl: Some(Duration::from_secs(5)),
                },
            );
        }
        let _ = m.mode();
        let _ = m.poll_timeout();
        let _ = m.poll_edge();
    }
}

/// `limits`: arbitrary `[limits]` and `[dr]` values through the validation
/// `lifeboat check` and every role run (an edge and a connector config),
/// then through what the roles build from an accepted config at start (QUIC
/// transport parameters, semaphores, deadlines, the DR mode machine).
/// Input: UTF-8; the lines before a line `--` are the body of `[limits]`,
/// the rest the body of `[dr]` (after the trigger). Nothing may panic, an
/// error names a line of the text, and an accepted value lies within the
/// ranges the README documents (stated again here, on purpose: the fuzzer
/// holds the code to the documentation).
pub fn limits(data: &[u8]) {
    let _ = limits_accepted(data);
}

/// [`limits`], saying how many of the two role configs were accepted (so a
/// test proves the seeds reach past validation).
pub fn limits_accepted(data: &[u8]) -> usize {
    use std::time::{Duration, Instant};

    use crate::dr::machine::{Lookup, Machine, Now, Settings};
    use crate::trust::Role;

    let Ok(text) = std::str::from_utf8(data) else {
        return 0;
    };
    let (limits, dr) = text.split_once("\n--\n").unwrap_or((text, ""));
    let tail = format!("[dr]\ntrigger = \"dns:_dr.fuzz.test\"\n{dr}\n[limits]\n{limits}\n");
    let edge = format!(
        "trust_domain = \"fuzz.test\"\n[tls]\nca = \"ca.pem\"\ncert = \"e.pem\"\nkey = \"e.key\"\n\
         [listen]\nquic = \"127.0.0.1:0\"\n{tail}\
         [[connector_group]]\nname = \"g\"\ndr = true\n\
         [[server_group]]\nname = \"s\"\nconnector_groups = [\"g\"]\n\
         [[segment]]\nname = \"a\"\ndr = true\ndomains = [\"a.example\"]\ntcp_ports = [\"443\"]\nserver_groups = [\"s\"]\n"
    );
    let connector = format!(
        "trust_domain = \"fuzz.test\"\nedges = [\"127.0.0.1:443\"]\n\
         [tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n{tail}"
    );
    let file = Path::new("/fuzz/role.toml");
    let accepted =
        |text: &str, e: Result<(config::Limits, config::DrSection), config::ConfigError>| {
            let lines = text.lines().count() + 1;
            match e {
                Ok(x) => Some(x),
                Err(e) => {
                    assert!(e.line.is_none_or(|l| (1..=lines).contains(&l)), "{e}");
                    None
                }
            }
        };
    let roles = [
        (
            Role::Edge,
            accepted(
                &edge,
                config::from_text::<EdgeConfig>(file, &edge).map(|c| (c.limits, c.dr)),
            ),
        ),
        (
            Role::Connector,
            accepted(
                &connector,
                config::from_text::<ConnectorConfig>(file, &connector).map(|c| (c.limits, c.dr)),
            ),
        ),
    ];
    let mut accepted = 0;
    for (role, cfg) in roles {
        let Some((l, dr)) = cfg else { continue };
        accepted += 1;
        limits_documented(&l);
        let within = |d: Option<Duration>, least: u64, most: u64| {
            d.is_none_or(|d| (Duration::from_secs(least)..=Duration::from_secs(most)).contains(&d))
        };
        assert!(
            within(dr.poll_interval, 1, 86_400),
            "{:?}",
            dr.poll_interval
        );
        assert!(within(dr.jitter, 0, 3600), "{:?}", dr.jitter);
        assert!(within(dr.cert_grace, 0, 30 * 86_400), "{:?}", dr.cert_grace);

        // What the roles build from it.
        let _ = crate::transport::quic::transport_config(&l, l.max_flows_per_tunnel);
        assert!(l.keepalive() <= l.idle_timeout.max(Duration::from_millis(100)));
        assert!(l.effective_tunnel_window() >= u64::from(l.flow_window));
        for n in [l.max_flows, l.max_tunnels, l.max_handshakes_inflight] {
            assert!(n <= tokio::sync::Semaphore::MAX_PERMITS);
        }
        let now = Instant::now();
        for d in [
            l.preamble_timeout,
            l.handshake_timeout,
            l.client_hello_timeout,
            l.idle_timeout,
            l.flow_idle_timeout,
            l.connect_timeout,
            l.drain_timeout,
        ] {
            assert!(now.checked_add(d).is_some(), "{d:?} from now");
        }
        let poll_interval = dr
            .poll_interval
            .unwrap_or_else(|| crate::dr::trigger::default_poll_interval(role));
        let clock = Now {
            at: now,
            unix: Duration::from_secs(1_800_000_000),
        };
        let mut m = Machine::new(
            Settings {
                poll_interval,
                key: None,
            },
            clock,
        );
        for lookup in [Lookup::Timeout, Lookup::NxDomain] {
            let _ = m.handle_lookup(clock, lookup);
            assert!(m.poll_timeout() > now);
        }
    }
    accepted
}

/// An accepted `[limits]` lies within the README's ranges.
fn limits_documented(l: &config::Limits) {
    use std::time::Duration;
    const MIB: u64 = 1 << 20;
    let ms = Duration::from_millis;
    let counts = [
        (l.max_tunnels as u64, 1, 1_000_000),
        (l.max_flows as u64, 1, 10_000_000),
        (l.max_flows_per_tunnel.into(), 1, 100_000),
        (l.max_flows_per_connector_tunnel.into(), 1, 1_000_000),
        (l.max_tunnels_per_identity as u64, 1, 1_000_000),
        (l.max_flows_per_identity as u64, 1, 10_000_000),
        (l.max_handshakes_inflight as u64, 1, 100_000),
        (l.preamble_bytes as u64, 256, MIB),
        (l.flow_window.into(), 16_384, 256 * MIB),
        (l.memory_budget, 4 * MIB, 1 << 40),
    ];
    for (v, least, most) in counts {
        assert!((least..=most).contains(&v), "{l:?}");
    }
    let times = [
        (l.client_hello_timeout, ms(100), ms(600_000)),
        (l.preamble_timeout, ms(100), ms(600_000)),
        (l.handshake_timeout, ms(100), ms(600_000)),
        (l.idle_timeout, ms(300), ms(3_600_000)),
        (l.flow_idle_timeout, ms(0), ms(7 * 86_400_000)),
        (l.connect_timeout, ms(100), ms(600_000)),
        (l.drain_timeout, ms(0), ms(3_600_000)),
    ];
    for (v, least, most) in times {
        assert!((least..=most).contains(&v), "{l:?}");
    }
    let tw = u64::from(l.tunnel_window);
    assert!(
        tw == 0 || (u64::from(l.flow_window)..=1 << 30).contains(&tw),
        "{l:?}"
    );
}
