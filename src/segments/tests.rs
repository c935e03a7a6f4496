use std::net::IpAddr;

use proptest::prelude::*;

use super::spec::mask4;
use super::*;
use crate::preamble::{Dest, Host};

fn spec(name: &str, domains: &[&str], cidrs: &[&str], ports: &[&str]) -> SegmentSpec {
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
    SegmentSpec {
        name: name.into(),
        domains: v(domains),
        cidrs: v(cidrs),
        tcp_ports: v(ports),
        connector_groups: vec!["dc1-dr".into()],
    }
}

fn dest(s: &str) -> Dest {
    Dest::parse(s).unwrap()
}

/// `Some(name)` for a hit, `Some("!name")` for a wrong port, `None` for a miss.
fn look(m: &Matcher, d: &str) -> Option<String> {
    let d = dest(d);
    let got = lookup_both(m, &d);
    match got {
        Lookup::Hit(s) => Some(s.name.clone()),
        Lookup::WrongPort(s) => Some(format!("!{}", s.name)),
        Lookup::Miss => None,
    }
}

/// Looks up with the matcher and checks the reference agrees.
fn lookup_both<'a>(m: &'a Matcher, d: &Dest) -> Lookup<'a> {
    let got = m.lookup(d);
    assert_eq!(
        got,
        reference::lookup(m.segments(), d),
        "reference disagrees on {d}"
    );
    got
}

fn compile(specs: &[SegmentSpec]) -> Matcher {
    Matcher::compile(specs).unwrap()
}

fn design_example() -> Matcher {
    compile(&[
        spec(
            "payroll",
            &["payroll.corp.example", "*.hr.corp.example"],
            &["10.20.0.0/16", "fd00:20::/32"],
            &["443", "8000-8080"],
        ),
        spec("corp", &["*.corp.example"], &["10.0.0.0/8"], &["1-65535"]),
        spec(
            "deep",
            &["*.eu.hr.corp.example"],
            &["10.20.30.0/24"],
            &["22"],
        ),
    ])
}

#[test]
fn design_example_matches() {
    let m = design_example();
    assert_eq!(m.segments().len(), 3);
    for (i, s) in m.segments().iter().enumerate() {
        assert_eq!(s.index, i);
    }
    assert_eq!(
        look(&m, "payroll.corp.example:443").as_deref(),
        Some("payroll")
    );
    assert_eq!(
        look(&m, "payroll.corp.example:8080").as_deref(),
        Some("payroll")
    );
    assert_eq!(
        look(&m, "x.hr.corp.example:8000").as_deref(),
        Some("payroll")
    );
    assert_eq!(
        look(&m, "a.b.hr.corp.example:443").as_deref(),
        Some("payroll")
    );
    assert_eq!(look(&m, "10.20.1.2:443").as_deref(), Some("payroll"));
    assert_eq!(
        look(&m, "[fd00:20:ffff::1]:443").as_deref(),
        Some("payroll")
    );
    assert_eq!(look(&m, "[fd00:21::1]:443"), None);
    assert_eq!(look(&m, "10.21.0.1:3389").as_deref(), Some("corp"));
    assert_eq!(look(&m, "10.20.30.40:22").as_deref(), Some("deep"));
    assert_eq!(look(&m, "x.eu.hr.corp.example:22").as_deref(), Some("deep"));
    assert_eq!(look(&m, "11.0.0.1:443"), None);
    assert_eq!(look(&m, "example:443"), None);
    assert_eq!(
        look(&m, "corp.example:443"),
        None,
        "wildcard excludes its apex"
    );
}

#[test]
fn exact_beats_wildcard_and_no_fallback() {
    let m = design_example();
    // `hr.corp.example` is only under `*.corp.example`.
    assert_eq!(look(&m, "hr.corp.example:22").as_deref(), Some("corp"));
    // Exact entry, wrong port: WrongPort, not the broader `*.corp.example`.
    assert_eq!(
        look(&m, "payroll.corp.example:22").as_deref(),
        Some("!payroll")
    );
    // Longer wildcard, wrong port: no fallback either.
    assert_eq!(
        look(&m, "y.x.hr.corp.example:22").as_deref(),
        Some("!payroll")
    );
    assert_eq!(
        look(&m, "x.eu.hr.corp.example:443").as_deref(),
        Some("!deep")
    );
    // Longer prefix, wrong port.
    assert_eq!(look(&m, "10.20.30.1:443").as_deref(), Some("!deep"));
    assert_eq!(look(&m, "10.20.0.1:22").as_deref(), Some("!payroll"));
}

#[test]
fn case_and_trailing_dot() {
    let m = compile(&[spec(
        "s",
        &["PayRoll.Corp.Example.", "*.HR.example."],
        &[],
        &["443"],
    )]);
    assert_eq!(look(&m, "payroll.corp.example:443").as_deref(), Some("s"));
    assert_eq!(look(&m, "PAYROLL.CORP.EXAMPLE.:443").as_deref(), Some("s"));
    assert_eq!(look(&m, "a.hr.example.:443").as_deref(), Some("s"));
    // Robust to hand-built, unnormalised destinations too.
    let raw = |n: &str| Dest {
        host: Host::Name(n.into()),
        port: 443,
    };
    assert!(matches!(
        lookup_both(&m, &raw("A.HR.Example.")),
        Lookup::Hit(_)
    ));
    for bad in [
        "",
        ".",
        "a..hr.example",
        ".hr.example",
        "a hr.example",
        "\u{e9}.hr.example",
    ] {
        assert_eq!(lookup_both(&m, &raw(bad)), Lookup::Miss, "{bad:?}");
    }
    let long = format!("{}hr.example", "a.".repeat(200));
    assert_eq!(lookup_both(&m, &raw(&long)), Lookup::Miss, "over 253 bytes");
}

#[test]
fn ip_rules() {
    let m = compile(&[
        spec("v4", &[], &["10.0.0.0/8", "192.0.2.7"], &["80"]),
        spec("v6", &[], &["::/0"], &["80"]),
        spec("mapped", &[], &["::ffff:172.16.0.0/108"], &["80"]),
        spec("names", &["ten.example"], &[], &["80"]),
    ]);
    assert_eq!(look(&m, "10.1.2.3:80").as_deref(), Some("v4"));
    assert_eq!(look(&m, "192.0.2.7:80").as_deref(), Some("v4"));
    assert_eq!(look(&m, "192.0.2.8:80"), None);
    // IPv4-mapped destinations are IPv4: they match v4 prefixes, never ::/0.
    assert_eq!(look(&m, "[::ffff:10.1.2.3]:80").as_deref(), Some("v4"));
    assert_eq!(look(&m, "[::ffff:192.0.2.8]:80"), None);
    assert_eq!(look(&m, "[2001:db8::1]:80").as_deref(), Some("v6"));
    // An IPv4-mapped prefix in the config is compiled to IPv4.
    assert_eq!(m.segments()[2].cidrs[0].to_string(), "172.16.0.0/12");
    assert_eq!(look(&m, "172.31.0.1:80").as_deref(), Some("mapped"));
    assert_eq!(
        look(&m, "[::ffff:172.16.0.1]:80").as_deref(),
        Some("mapped")
    );
    // Names never match CIDRs and IPs never match domains.
    assert_eq!(look(&m, "ten.example:80").as_deref(), Some("names"));
    let m = compile(&[spec("all4", &[], &["0.0.0.0/0"], &["1-65535"])]);
    assert_eq!(look(&m, "255.255.255.255:1").as_deref(), Some("all4"));
    assert_eq!(look(&m, "[::1]:1"), None);
}

#[test]
fn port_edges() {
    let m = compile(&[
        spec("low", &["a.example"], &[], &["1", "3-4"]),
        spec(
            "high",
            &["b.example"],
            &[],
            &["65535", "100-200", "201-300", "250-260"],
        ),
    ]);
    assert_eq!(look(&m, "a.example:1").as_deref(), Some("low"));
    assert_eq!(look(&m, "a.example:2").as_deref(), Some("!low"));
    assert_eq!(look(&m, "a.example:4").as_deref(), Some("low"));
    assert_eq!(look(&m, "a.example:5").as_deref(), Some("!low"));
    assert_eq!(look(&m, "b.example:65535").as_deref(), Some("high"));
    assert_eq!(look(&m, "b.example:65534").as_deref(), Some("!high"));
    assert_eq!(look(&m, "b.example:99").as_deref(), Some("!high"));
    for p in [100, 200, 201, 300] {
        assert_eq!(look(&m, &format!("b.example:{p}")).as_deref(), Some("high"));
    }
    assert_eq!(look(&m, "b.example:301").as_deref(), Some("!high"));
    assert_eq!(
        m.segments()[1].ports.ranges(),
        &[(100, 300), (65535, 65535)]
    );
    assert_eq!(m.segments()[1].ports.to_string(), "100-300,65535");
    // Port 0 cannot come from the preamble, but a hand-built Dest is safe.
    let d = Dest {
        host: Host::Name("a.example".into()),
        port: 0,
    };
    assert!(matches!(lookup_both(&m, &d), Lookup::WrongPort(_)));
}

#[test]
fn same_key_split_by_port() {
    let m = compile(&[
        spec(
            "web",
            &["app.example", "*.svc.example"],
            &["10.0.0.0/24"],
            &["443"],
        ),
        spec(
            "ssh",
            &["app.example", "*.svc.example"],
            &["10.0.0.0/24"],
            &["22"],
        ),
        spec("broad", &["*.example"], &["10.0.0.0/16"], &["1-65535"]),
    ]);
    for host in ["app.example", "x.svc.example", "10.0.0.9"] {
        assert_eq!(look(&m, &format!("{host}:443")).as_deref(), Some("web"));
        assert_eq!(look(&m, &format!("{host}:22")).as_deref(), Some("ssh"));
        // Neither: WrongPort names the first claimant in config order.
        assert_eq!(look(&m, &format!("{host}:80")).as_deref(), Some("!web"));
    }
    assert_eq!(look(&m, "other.example:80").as_deref(), Some("broad"));
    assert_eq!(look(&m, "10.0.1.1:80").as_deref(), Some("broad"));
}

#[test]
fn duplicates_refused() {
    let cases: [(&[SegmentSpec], &str); 5] = [
        (
            &[
                spec("a", &["x.example"], &[], &["443"]),
                spec("b", &["X.example."], &[], &["400-500"]),
            ],
            "segments `a` and `b` both claim domain x.example on overlapping TCP ports",
        ),
        (
            &[
                spec("a", &["*.x.example"], &[], &["1-10"]),
                spec("b", &["*.x.example"], &[], &["10"]),
            ],
            "segments `a` and `b` both claim wildcard *.x.example on overlapping TCP ports",
        ),
        (
            &[
                spec("a", &[], &["10.0.0.0/8"], &["1"]),
                spec("b", &[], &["::ffff:10.0.0.0/104"], &["1"]),
            ],
            "segments `a` and `b` both claim prefix 10.0.0.0/8 on overlapping TCP ports",
        ),
        (
            &[
                spec("a", &[], &["fd00::/16"], &["1"]),
                spec("b", &[], &["FD00::/16"], &["1"]),
            ],
            "segments `a` and `b` both claim prefix fd00::/16 on overlapping TCP ports",
        ),
        (
            &[
                spec("a", &["x.example"], &[], &["1"]),
                spec("a", &["y.example"], &[], &["1"]),
            ],
            "segment `a` is defined twice",
        ),
    ];
    for (specs, msg) in cases {
        let e = Matcher::compile(specs).unwrap_err();
        assert_eq!(e.to_string(), msg);
    }
    let e = Matcher::compile(&[
        spec("a", &[], &["10.0.0.0/8"], &["1"]),
        spec("b", &[], &["10.0.0.0/8"], &["1"]),
    ])
    .unwrap_err();
    assert_eq!(e.culprit(), (Some("b"), "cidrs"));
    // Not duplicates: within one segment, or different keys, or touching ports.
    compile(&[
        spec(
            "a",
            &["x.example", "x.example."],
            &["10.0.0.0/8", "10.0.0.0/8"],
            &["1"],
        ),
        spec("b", &["*.x.example"], &["10.0.0.0/9"], &["1"]),
        spec("c", &["x.example"], &["10.0.0.0/8"], &["2"]),
    ]);
}

#[test]
fn bad_values_refused() {
    let bad = |domains: &[&str], cidrs: &[&str], ports: &[&str]| {
        Matcher::compile(&[spec("seg", domains, cidrs, ports)]).unwrap_err()
    };
    for d in [
        "*", "*.", "**.x", "a.*.x", "x*.y", "*x.y", ".x.y", "a..b", "10.0.0.1", "a_b c", "-a.b",
        "a.1",
    ] {
        let e = bad(&[d], &[], &["1"]);
        assert!(matches!(e, SegmentError::BadDomain { .. }), "{d}: {e}");
        assert_eq!(e.culprit(), (Some("seg"), "domains"));
        assert!(e.to_string().contains(d), "{e}");
    }
    for c in [
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.0/x",
        "10.0.0/8",
        "fd00::/129",
        "[::1]/128",
        "10.0.0.0/-1",
        "10.0.0.0/08x",
        "",
        "host.example",
    ] {
        let e = bad(&[], &[c], &["1"]);
        assert!(matches!(e, SegmentError::BadCidr { .. }), "{c}: {e}");
        assert_eq!(e.culprit(), (Some("seg"), "cidrs"));
    }
    let e = bad(&[], &["10.20.1.0/16"], &["1"]);
    assert_eq!(
        e.to_string(),
        "segment `seg`: CIDR `10.20.1.0/16` has host bits set (did you mean `10.20.0.0/16`?)"
    );
    let e = bad(&[], &["fd00:20::1/32"], &["1"]);
    assert!(e.to_string().contains("fd00:20::/32"), "{e}");
    for p in [
        "0",
        "65536",
        "99999999999",
        "10-5",
        "a",
        "",
        "-",
        "1-",
        "-5",
        "1-2-3",
        "+5",
        "0-10",
    ] {
        let e = bad(&["x.example"], &[], &[p]);
        assert!(matches!(e, SegmentError::BadPort { .. }), "{p:?}: {e}");
        assert_eq!(e.culprit(), (Some("seg"), "tcp_ports"));
    }
    let e = bad(&["x.example"], &[], &[]);
    assert_eq!(
        e,
        SegmentError::EmptyPorts {
            segment: "seg".into()
        }
    );
    let e = Matcher::compile(&[spec("", &[], &[], &["1"])]).unwrap_err();
    assert!(matches!(e, SegmentError::BadName { .. }));
    let e = Matcher::compile(&[spec(&"n".repeat(256), &[], &[], &["1"])]).unwrap_err();
    assert!(matches!(e, SegmentError::BadName { .. }));
    // Lenient where harmless: spaces around range parts, bare addresses.
    let m = compile(&[spec("ok", &[], &["10.0.0.1", "fd00::1"], &[" 1 - 2 ", "7"])]);
    let s = &m.segments()[0];
    assert_eq!(
        s.cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        ["10.0.0.1/32", "fd00::1/128"]
    );
    assert_eq!(s.ports.ranges(), &[(1, 2), (7, 7)]);
}

#[test]
fn empty_and_degenerate() {
    let m = Matcher::default();
    assert_eq!(m.lookup(&dest("a.b:1")), Lookup::Miss);
    assert_eq!(m.lookup(&dest("1.2.3.4:1")), Lookup::Miss);
    let m = compile(&[spec("nothing", &[], &[], &["1"])]);
    assert_eq!(look(&m, "a.b:1"), None);
    assert_eq!(m.get("nothing").map(|s| s.index), Some(0));
    assert!(m.get("other").is_none());
}

#[test]
fn ports_overlap() {
    let p = |r: &[(u16, u16)]| spec::merge_ports(r.to_vec()).unwrap();
    assert!(p(&[(1, 5)]).overlaps(&p(&[(5, 9)])));
    assert!(!p(&[(1, 4)]).overlaps(&p(&[(5, 9)])));
    assert!(p(&[(1, 1), (10, 20)]).overlaps(&p(&[(2, 3), (20, 30)])));
    assert!(!p(&[(1, 1), (10, 20)]).overlaps(&p(&[(2, 9), (21, 65535)])));
    assert!(p(&[(1, 65535)]).overlaps(&p(&[(65535, 65535)])));
}

#[test]
fn idn_names_compile_to_punycode() {
    let m = compile(&[spec(
        "idn",
        &["B\u{fc}cher.Example.", "*.\u{4f8b}\u{3048}.jp"],
        &[],
        &["443"],
    )]);
    let s = &m.segments()[0];
    assert_eq!(
        s.domains.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        ["xn--bcher-kva.example", "*.xn--r8jz45g.jp"]
    );
    // Destinations arrive in ASCII (punycode) form, any case.
    assert_eq!(
        look(&m, "xn--bcher-kva.example:443").as_deref(),
        Some("idn")
    );
    assert_eq!(
        look(&m, "XN--BCHER-KVA.example.:443").as_deref(),
        Some("idn")
    );
    assert_eq!(look(&m, "www.xn--r8jz45g.jp:443").as_deref(), Some("idn"));
    // The same name written in Unicode and in punycode is one key.
    let e = Matcher::compile(&[
        spec("a", &["b\u{fc}cher.example"], &[], &["1"]),
        spec("b", &["xn--bcher-kva.example"], &[], &["1"]),
    ])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "segments `a` and `b` both claim domain xn--bcher-kva.example on overlapping TCP ports"
    );
    for bad in [
        "b\u{fc}cher..example",
        "*.\u{fc}*.example",
        "\u{fc} x.example",
        ".\u{fc}.example",
    ] {
        let e = Matcher::compile(&[spec("s", &[bad], &[], &["1"])]).unwrap_err();
        assert!(matches!(e, SegmentError::BadDomain { .. }), "{bad}: {e}");
    }
    assert_eq!(
        normalize_idn("B\u{fc}cher.example."),
        Ok("xn--bcher-kva.example".into())
    );
    assert_eq!(normalize_idn("Plain.Example"), Ok("plain.example".into()));
}

#[test]
fn explain_names_the_deciding_key() {
    let m = design_example();
    let key = |d: &str| m.explain(&dest(d)).1.map(|k| k.to_string());
    assert_eq!(
        key("payroll.corp.example:443").as_deref(),
        Some("exact name payroll.corp.example")
    );
    assert_eq!(
        key("x.hr.corp.example:1").as_deref(),
        Some("wildcard *.hr.corp.example")
    );
    assert_eq!(
        key("10.20.30.1:22").as_deref(),
        Some("prefix 10.20.30.0/24")
    );
    assert_eq!(
        key("[fd00:20::1]:443").as_deref(),
        Some("prefix fd00:20::/32")
    );
    assert_eq!(key("nowhere.example:443"), None);
    for d in [
        "payroll.corp.example:22",
        "a.corp.example:1",
        "10.20.0.1:22",
    ] {
        assert_eq!(m.explain(&dest(d)).0, m.lookup(&dest(d)), "{d}");
    }
}

#[test]
fn errors_point_at_the_entry() {
    let e = Matcher::compile(&[spec("s", &["a.example", "b..example"], &[], &["1"])]).unwrap_err();
    assert_eq!(e.item(), Some(1));
    let e = Matcher::compile(&[spec("s", &[], &["10.0.0.0/8", "10.0.0.1/8"], &["1"])]).unwrap_err();
    assert_eq!((e.culprit(), e.item()), ((Some("s"), "cidrs"), Some(1)));
    let e = Matcher::compile(&[spec("s", &["a.example"], &[], &["1", "2", "9-3"])]).unwrap_err();
    assert_eq!((e.culprit(), e.item()), ((Some("s"), "tcp_ports"), Some(2)));
    // A duplicate names the later segment's entry as written, after
    // deduplication within the segment.
    let e = Matcher::compile(&[
        spec("a", &["*.x.example"], &[], &["1-100"]),
        spec(
            "b",
            &["y.example", "Y.example.", "*.X.example"],
            &[],
            &["50"],
        ),
    ])
    .unwrap_err();
    assert_eq!((e.culprit(), e.item()), ((Some("b"), "domains"), Some(2)));
    let e = Matcher::compile(&[spec("s", &["a.example"], &[], &[])]).unwrap_err();
    assert_eq!(e.item(), None);
}

#[test]
fn many_segments_share_a_key_by_port() {
    let specs: Vec<SegmentSpec> = (1..=40u16)
        .map(|p| {
            spec(
                &format!("p{p}"),
                &["svc.example", "*.svc.example"],
                &["10.9.0.0/16"],
                &[&p.to_string()],
            )
        })
        .collect();
    let m = compile(&specs);
    for p in 1..=40 {
        for h in ["svc.example", "a.svc.example", "10.9.1.1"] {
            assert_eq!(look(&m, &format!("{h}:{p}")), Some(format!("p{p}")));
        }
    }
    assert_eq!(look(&m, "svc.example:41").as_deref(), Some("!p1"));
    let mut dup = specs.clone();
    dup.push(spec("late", &[], &["10.9.0.0/16"], &["20-22"]));
    let e = Matcher::compile(&dup).unwrap_err();
    assert_eq!(
        e.to_string(),
        "segments `p20` and `late` both claim prefix 10.9.0.0/16 on overlapping TCP ports"
    );
}

#[test]
fn compile_is_linear_in_segments() {
    // 20k segments with distinct names: the duplicate-name check once was
    // quadratic. Generous bound for debug builds on slow machines.
    let specs: Vec<SegmentSpec> = (0..20_000)
        .map(|i| spec(&format!("s{i}"), &[&format!("h{i}.example")], &[], &["443"]))
        .collect();
    let t = std::time::Instant::now();
    let m = compile(&specs);
    assert_eq!(m.segments().len(), 20_000);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
}

// ---- property test: Matcher::lookup == reference::lookup ----

const DOMAINS: &[&str] = &[
    "a.x",
    "b.x",
    "a.b.x",
    "c.a.b.x",
    "*.x",
    "*.b.x",
    "*.a.b.x",
    "*.y",
    "z.y",
    "y",
    "*.c.a.b.x",
];
const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "0.0.0.0/0",
    "10.1.2.0/23",
    "fd00::/8",
    "fd00:1::/32",
    "::ffff:10.1.0.0/112",
    "::/0",
    "fd00:1::5/128",
];
const NAMES: &[&str] = &[
    "a.x",
    "b.x",
    "a.b.x",
    "c.a.b.x",
    "d.c.a.b.x",
    "e.d.c.a.b.x",
    "x",
    "y",
    "z.y",
    "q.z.y",
    "A.B.X.",
    "w.x",
    "b.x.x",
];
const IPS: &[&str] = &[
    "10.1.2.3",
    "10.1.2.4",
    "10.1.3.1",
    "10.1.9.9",
    "10.200.0.1",
    "11.0.0.1",
    "::ffff:10.1.2.3",
    "fd00:1::5",
    "fd00:1::6",
    "fd00:2::1",
    "::1",
    "2001:db8::1",
];

fn arb_spec(i: usize) -> impl Strategy<Value = SegmentSpec> {
    let ports = prop::collection::vec(
        // Own block 10*i+1..=10*i+9 mostly, sometimes a shared block (conflicts).
        (prop::bool::weighted(0.15), 0u16..9, 0u16..4).prop_map(move |(shared, lo, w)| {
            let base = if shared { 100 } else { 10 * i as u16 + 1 };
            let lo = base + lo;
            format!("{lo}-{}", lo + w)
        }),
        1..3,
    );
    (
        prop::collection::vec(prop::sample::select(DOMAINS), 0..4),
        prop::collection::vec(prop::sample::select(CIDRS), 0..4),
        ports,
    )
        .prop_map(move |(d, c, p)| SegmentSpec {
            name: format!("s{i}"),
            domains: d.into_iter().map(String::from).collect(),
            cidrs: c.into_iter().map(String::from).collect(),
            tcp_ports: p,
            connector_groups: vec![],
        })
}

fn arb_specs() -> impl Strategy<Value = Vec<SegmentSpec>> {
    (1usize..6).prop_flat_map(|n| (0..n).map(arb_spec).collect::<Vec<_>>())
}

fn arb_host() -> impl Strategy<Value = Host> {
    prop_oneof![
        prop::sample::select(NAMES).prop_map(|n| Dest::parse(&format!("{n}:1")).unwrap().host),
        prop::sample::select(IPS).prop_map(|a| Host::Ip(a.parse().unwrap())),
        any::<[u8; 2]>().prop_map(|o| Host::Ip(IpAddr::from([10, 1, o[0] % 4, o[1]]))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn matcher_agrees_with_reference(specs in arb_specs(), hosts in prop::collection::vec(arb_host(), 1..12)) {
        match Matcher::compile(&specs) {
            Ok(m) => {
                // Every interesting port for each host: each segment's own
                // block, the shared block, and the edges.
                let ports = (0u16..=60).chain(98..=115).chain([65535]);
                for port in ports {
                    for host in &hosts {
                        let d = Dest { host: host.clone(), port };
                        prop_assert_eq!(m.lookup(&d), reference::lookup(m.segments(), &d), "dest {}", d);
                    }
                }
            }
            Err(e) => prop_assert!(matches!(e, SegmentError::Duplicate { .. }), "{}", e),
        }
    }

    #[test]
    fn random_prefixes_agree(
        nets in prop::collection::vec((any::<u32>(), 0u8..=32, 1u16..4), 1..12),
        probes in prop::collection::vec((0usize..12, any::<u32>(), 0u32..=32, 1u16..4), 1..32),
    ) {
        let specs: Vec<SegmentSpec> = nets
            .iter()
            .enumerate()
            .map(|(i, &(a, len, port))| {
                let net = mask4(a, len);
                spec(&format!("n{i}"), &[], &[&format!("{}/{len}", std::net::Ipv4Addr::from(net))], &[&port.to_string()])
            })
            .collect();
        if let Ok(m) = Matcher::compile(&specs) {
            for &(i, noise, bits, port) in &probes {
                let (a, _, _) = nets[i % nets.len()];
                // Keep the top `bits` bits of a configured address, randomise the rest.
                let keep = mask4(u32::MAX, bits as u8);
                let ip = (a & keep) | (noise & !keep);
                let d = Dest { host: Host::Ip(IpAddr::from(ip.to_be_bytes())), port };
                prop_assert_eq!(m.lookup(&d), reference::lookup(m.segments(), &d));
            }
        }
    }
}
