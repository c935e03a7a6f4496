//! `lifeboat check` as a process: every validation error with its exit code
//! (2), key and line; a valid config's table, unreachable segments and
//! warnings (exit 0); `--match`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::proc::pki;
use lifeboat::pki::IssueOptions;
use lifeboat::trust::Role;

const HEAD: &str = r#"trust_domain = "dr.example.com"
[tls]
ca = "ca.pem"
cert = "edge1.pem"
key = "edge1.key"
[listen]
quic = "127.0.0.1:0"
[dr]
trigger = "static:on"

[[connector_group]]
name = "dc1-dr"
dr = true
[[connector_group]]
name = "dc1-app"
[[server_group]]
name = "dc1"
connector_groups = ["dc1-dr"]
[[server_group]]
name = "dc1-normal"
connector_groups = ["dc1-app"]
"#;

const PAYROLL: &str = r#"
[[segment]]
name = "payroll"
dr = true
domains = ["payroll.corp.example", "*.hr.corp.example"]
cidrs = ["10.20.0.0/16", "fd00:20::/32"]
tcp_ports = ["443", "8000-8080"]
server_groups = ["dc1"]
"#;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    text: String,
    _dir: tempfile::TempDir,
}

impl Run {
    /// 1-based line of the only line of the config containing `needle`,
    /// counting from the `nth` (0-based) occurrence.
    fn line(&self, needle: &str, nth: usize) -> usize {
        self.text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .nth(nth)
            .map(|(i, _)| i + 1)
            .unwrap_or_else(|| panic!("{needle:?} not in config"))
    }

    /// Asserts exit 2 and an error at `key` on `line` whose message has `msg`.
    fn error(&self, key: &str, line: usize, msg: &str) {
        let want = format!("edge.toml:{line}: key `{key}`: ");
        assert_eq!(self.code, 2, "stderr: {}", self.stderr);
        assert!(
            self.stderr.contains(&want) && self.stderr.contains(msg),
            "want {want:?} and {msg:?} in stderr: {}",
            self.stderr
        );
        assert!(self.stdout.is_empty(), "{}", self.stdout);
    }
}

fn check(text: &str, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    run_in(dir, "check", text, args)
}

/// `lifeboat <cmd> -c DIR/edge.toml ARGS` with `text` as the config.
fn run_in(dir: tempfile::TempDir, cmd: &str, text: &str, args: &[&str]) -> Run {
    let path: PathBuf = dir.path().join("edge.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg(cmd)
        .arg("-c")
        .arg(&path)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        text: text.to_owned(),
        _dir: dir,
    }
}

fn edge(segments: &str) -> String {
    format!("{HEAD}{PAYROLL}{segments}")
}

#[test]
fn valid_config_prints_table_unreachable_and_warnings() {
    let text = edge(
        r#"
[[segment]]
name = "corp"
dr = true
domains = ["*.corp.example", "B\u00fccher.example"]
tcp_ports = ["1-65535"]
server_groups = ["dc1"]

[[segment]]
name = "wiki"
domains = ["wiki.corp.example"]
tcp_ports = ["443"]
server_groups = ["dc1"]

[[segment]]
name = "legacy"
dr = false
domains = ["legacy.example"]
server_groups = ["dc1-normal"]

[[segment]]
name = "empty"
dr = true
tcp_ports = ["1"]
server_groups = ["dc1"]
"#,
    );
    let r = check(&text, &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(
        out.contains("valid edge config: 5 segments, 3 DR segments compiled"),
        "{out}"
    );
    let row = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {out}"))
            .to_owned()
    };
    let payroll = row("payroll");
    for part in [
        "payroll.corp.example, *.hr.corp.example, 10.20.0.0/16, fd00:20::/32",
        "443,8000-8080",
        "dc1-dr",
    ] {
        assert!(payroll.contains(part), "{payroll}");
    }
    // IDN compiled to punycode.
    assert!(row("corp").contains("xn--bcher-kva.example"), "{out}");
    assert!(row("empty").contains("(nothing)"), "{out}");
    // Unreachable segments, each with why, file and line.
    let wiki = r.line("name = \"wiki\"", 0) - 1;
    let legacy_dr = r.line("dr = false", 0);
    let empty = r.line("name = \"empty\"", 0) - 1;
    assert!(out.contains("not reachable in DR (3):"), "{out}");
    for want in [
        "  wiki: ".into(),
        format!("edge.toml:{wiki}: key `segment[2].dr`: segment `wiki` is not a DR segment (`dr = false`)"),
        "set `dr = true` to serve it in DR".into(),
        format!("edge.toml:{legacy_dr}: key `segment[3].dr`: segment `legacy` is not a DR segment"),
        "its server groups reach no DR connector group either; as a DR segment it would be refused: segment `legacy` has no TCP ports".into(),
        format!("edge.toml:{empty}: key `segment[4]`: DR segment `empty` has no domains and no cidrs: it matches nothing"),
    ] {
        assert!(out.contains(&want), "want {want:?} in:\n{out}");
    }
    // A non-DR name reachable anyway through a DR wildcard.
    let wiki_dom = r.line("domains = [\"wiki.corp.example\"]", 0);
    let want = format!(
        "edge.toml:{wiki_dom}: key `segment[2].domains[0]`: non-DR segment `wiki`: this entry is reachable in DR through broader DR segments: wiki.corp.example via DR segment `corp` (wildcard *.corp.example, ports 1-65535)"
    );
    let warning = out.lines().find(|l| l.contains(&want));
    assert!(
        warning.is_some_and(|l| l.starts_with("warning: ")),
        "want {want:?} in:\n{out}"
    );
}

#[test]
fn match_says_which_segment_and_why() {
    let text = edge(
        r#"
[[segment]]
name = "wiki"
domains = ["wiki.example"]
cidrs = ["192.0.2.0/24"]
tcp_ports = ["80"]
server_groups = ["dc1"]
"#,
    );
    let probes = [
        "payroll.corp.example:443",
        "PAYROLL.corp.example.:8080",
        "a.b.hr.corp.example:8000",
        "[fd00:20::9]:443",
        "10.20.3.4:22",
        "nowhere.example:443",
        "wiki.example:80",
        "192.0.2.1:81",
    ];
    let mut args = Vec::new();
    for p in probes {
        args.extend(["--match", p]);
    }
    let r = check(&text, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for want in [
        "payroll.corp.example:443: DR segment `payroll` by exact name payroll.corp.example, port 443 in 443,8000-8080; served by DR connector groups dc1-dr",
        "payroll.corp.example:8080: DR segment `payroll` by exact name",
        "a.b.hr.corp.example:8000: DR segment `payroll` by wildcard *.hr.corp.example",
        "[fd00:20::9]:443: DR segment `payroll` by prefix fd00:20::/32",
        "10.20.3.4:22: no segment (refused 403 not-dr-segment): the most specific key, prefix 10.20.0.0/16, belongs to DR segment `payroll`, but port 22 is not in its ports 443,8000-8080",
        "nowhere.example:443: no segment (refused 403 not-dr-segment): no DR segment's domains match this name",
        "wiki.example:80: no segment (refused 403 not-dr-segment): no DR segment's domains match this name; non-DR segment `wiki` has it (exact name wiki.example), but it is `dr = false`",
        "192.0.2.1:81: no segment (refused 403 not-dr-segment): no DR segment's cidrs contain this address; non-DR segment `wiki` has it (prefix 192.0.2.0/24, not on this port), but it is `dr = false`",
    ] {
        assert!(r.stdout.contains(want), "want {want:?} in:\n{}", r.stdout);
    }
    // A bad argument is a usage error.
    let r = check(&text, &["--match", "no-port.example"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--match"), "{}", r.stderr);
}

#[test]
fn match_accepts_unicode_names() {
    let text = edge(
        r#"
[[segment]]
name = "books"
dr = true
domains = ["*.b\u00fccher.example"]
tcp_ports = ["443"]
server_groups = ["dc1"]
"#,
    );
    let r = check(&text, &["--match", "www.b\u{fc}cher.example:443"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(
            "www.xn--bcher-kva.example:443: DR segment `books` by wildcard *.xn--bcher-kva.example"
        ),
        "{}",
        r.stdout
    );
}

#[test]
fn reference_errors() {
    // Segment naming a missing server group.
    let r = check(
        &edge("").replace("server_groups = [\"dc1\"]", "server_groups = [\"dc9\"]"),
        &[],
    );
    r.error(
        "segment[0].server_groups",
        r.line("server_groups = [\"dc9\"]", 0),
        "segment `payroll` names server group `dc9`, which is not defined",
    );
    // Server group naming a missing connector group.
    let r = check(&edge("").replace("[\"dc1-app\"]", "[\"dc1-gone\"]"), &[]);
    r.error(
        "server_group[1].connector_groups",
        r.line("[\"dc1-gone\"]", 0),
        "server group `dc1-normal` names connector group `dc1-gone`, which is not defined",
    );
    // DR segment reaching only non-DR connector groups.
    let r = check(
        &edge("").replace(
            "server_groups = [\"dc1\"]",
            "server_groups = [\"dc1-normal\"]",
        ),
        &[],
    );
    r.error(
        "segment[0].server_groups",
        r.line("server_groups = [\"dc1-normal\"]", 0),
        "DR segment `payroll` reaches no DR connector group through its server groups: server group `dc1-normal` reaches `dc1-app` (not `dr = true`)",
    );
    // DR segment without server groups: the error stands at its header.
    let r = check(&edge("").replace("server_groups = [\"dc1\"]\n", ""), &[]);
    r.error(
        "segment[0].server_groups",
        r.line("[[segment]]", 0),
        "it has no server groups",
    );
    // Duplicate definitions.
    let r = check(&edge(&PAYROLL.replace("10.20", "10.30")), &[]);
    r.error(
        "segment[1].name",
        r.line("name = \"payroll\"", 1),
        "segment `payroll` is defined twice",
    );
    let r = check(
        &format!("{HEAD}\n[[server_group]]\nname = \"dc1\"\n{PAYROLL}"),
        &[],
    );
    r.error(
        "server_group[2].name",
        r.line("name = \"dc1\"", 1),
        "server group `dc1` is defined twice",
    );
}

#[test]
fn duplicate_claims_name_both_segments() {
    let other = |domains: &str, cidrs: &str, ports: &str| {
        edge(&format!(
            "\n[[segment]]\nname = \"other\"\ndr = true\ndomains = [{domains}]\ncidrs = [{cidrs}]\ntcp_ports = [{ports}]\nserver_groups = [\"dc1\"]\n"
        ))
    };
    let first = |r: &Run| {
        format!(
            "`payroll` is segment[0] at line {}",
            r.line("[[segment]]", 0)
        )
    };
    // Same exact name (case and trailing dot do not matter), overlapping ports.
    let r = check(
        &other(
            "\"a.example\", \"Payroll.Corp.Example.\"",
            "",
            "\"8080-9000\"",
        ),
        &[],
    );
    r.error(
        "segment[1].domains[1]",
        r.line("Payroll.Corp.Example.", 0),
        "segments `payroll` and `other` both claim domain payroll.corp.example on overlapping TCP ports",
    );
    assert!(r.stderr.contains(&first(&r)), "{}", r.stderr);
    // Same wildcard.
    let r = check(&other("\"*.hr.corp.example\"", "", "\"443\""), &[]);
    r.error(
        "segment[1].domains[0]",
        r.line("domains = [\"*.hr.corp.example\"]", 0),
        "both claim wildcard *.hr.corp.example on overlapping TCP ports",
    );
    // Same prefix, written differently.
    let r = check(
        &other("", "\"10.1.0.0/16\",\n  \"FD00:20:0::/32\"", "\"1-500\""),
        &[],
    );
    r.error(
        "segment[1].cidrs[1]",
        r.line("FD00:20:0::/32", 0),
        "both claim prefix fd00:20::/32 on overlapping TCP ports",
    );
    // Disjoint ports, or a non-DR segment: fine.
    let r = check(
        &other("\"payroll.corp.example\"", "\"10.20.0.0/16\"", "\"22\""),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = check(
        &other("\"payroll.corp.example\"", "", "\"443\"")
            .replace("dr = true\ndomains = [\"payroll", "domains = [\"payroll"),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn bad_values_name_the_entry() {
    let seg = |domains: &str, cidrs: &str, ports: &str| {
        edge(&format!(
            "\n[[segment]]\nname = \"bad\"\ndr = true\ndomains = [{domains}]\ncidrs = [{cidrs}]\ntcp_ports = [{ports}]\nserver_groups = [\"dc1\"]\n"
        ))
    };
    let cases: &[(&str, &str, &str, &str, &str, &str)] = &[
        // (domains, cidrs, ports, key, needle for the line, message part)
        (
            "",
            "",
            "",
            "segment[1].tcp_ports",
            "tcp_ports = []",
            "segment `bad` has no TCP ports (tcp_ports is empty)",
        ),
        (
            "",
            "",
            "\"443\", \"0\"",
            "segment[1].tcp_ports[1]",
            "\"443\", \"0\"",
            "bad TCP port `0`: port 0 is not a TCP port",
        ),
        (
            "",
            "",
            "\"65536\"",
            "segment[1].tcp_ports[0]",
            "\"65536\"",
            "bad TCP port `65536`: port above 65535",
        ),
        (
            "",
            "",
            "\"1\", \"9000-8000\"",
            "segment[1].tcp_ports[1]",
            "9000-8000",
            "bad TCP port `9000-8000`: range is reversed",
        ),
        (
            "",
            "",
            "\"http\"",
            "segment[1].tcp_ports[0]",
            "\"http\"",
            "bad TCP port `http`: not a port number or range",
        ),
        (
            "\"a..example\"",
            "",
            "\"1\"",
            "segment[1].domains[0]",
            "a..example",
            "bad domain `a..example`",
        ),
        (
            "\"ok.example\", \"*.*.example\"",
            "",
            "\"1\"",
            "segment[1].domains[1]",
            "*.*.example",
            "'*' is allowed only as the whole leftmost label",
        ),
        (
            "\"x*.example\"",
            "",
            "\"1\"",
            "segment[1].domains[0]",
            "x*.example",
            "bad domain `x*.example`",
        ),
        (
            "\"10.0.0.1\"",
            "",
            "\"1\"",
            "segment[1].domains[0]",
            "\"10.0.0.1\"",
            "an IP address; list it under cidrs",
        ),
        (
            "",
            "\"10.0.0.0/33\"",
            "\"1\"",
            "segment[1].cidrs[0]",
            "10.0.0.0/33",
            "bad CIDR `10.0.0.0/33`: prefix length out of range",
        ),
        (
            "",
            "\"corp.example/8\"",
            "\"1\"",
            "segment[1].cidrs[0]",
            "corp.example/8",
            "bad CIDR `corp.example/8`: not an IP address or prefix",
        ),
        (
            "",
            "\"10.20.1.0/16\"",
            "\"1\"",
            "segment[1].cidrs[0]",
            "10.20.1.0/16",
            "has host bits set (did you mean `10.20.0.0/16`?)",
        ),
    ];
    for &(d, c, p, key, needle, msg) in cases {
        let r = check(&seg(d, c, p), &[]);
        r.error(key, r.line(needle, 0), msg);
    }
}

#[test]
fn parse_errors_name_key_and_line() {
    // Unknown key.
    let r = check(&edge("").replace("tcp_ports = [", "tcp_port = ["), &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let want = format!("edge.toml:{}: key `segment[0]", r.line("tcp_port = [", 0));
    assert!(
        r.stderr.contains(&want) && r.stderr.contains("tcp_port"),
        "{want} in {}",
        r.stderr
    );
    // Bad duration.
    let r = check(
        &format!("{}\n[limits]\nidle_timeout = \"soon\"\n", edge("")),
        &[],
    );
    r.error(
        "limits.idle_timeout",
        r.line("idle_timeout", 0),
        "`soon` is not a duration",
    );
    // Wrong type.
    let r = check(
        &edge("").replace("dr = true\ndomains", "dr = \"yes\"\ndomains"),
        &[],
    );
    r.error("segment[0].dr", r.line("dr = \"yes\"", 0), "");
    // Not TOML at all.
    let r = check("trust_domain = [\n", &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("edge.toml:"), "{}", r.stderr);
}

#[test]
fn unreadable_or_unknown_role_is_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .args(["check", "-c", "/nonexistent/edge.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let r = check("trust_domain = \"x\"\n", &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cannot tell the role"), "{}", r.stderr);
    // --match needs an edge config.
    let r = check(
        "trust_domain = \"x\"\nedges = [\"e:443\"]\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
        &["--match", "a.example:1"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--match needs an edge config"),
        "{}",
        r.stderr
    );
}

#[test]
fn connector_and_client_configs_check() {
    let r = check(
        "trust_domain = \"dr.example.com\"\nedges = [\"edge.example:443\"]\n[tls]\nca = \"ca.pem\"\ncert = \"dc1-a.pem\"\nkey = \"dc1-a.key\"\n",
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("valid connector config"), "{}", r.stdout);
    let r = check(
        "trust_domain = \"dr.example.com\"\nedges = [\"edge.example:443\"]\n[tls]\nca = \"ca.pem\"\ncert = \"alice.pem\"\nkey = \"alice.key\"\n[listen]\nsocks = \"127.0.0.1:1080\"\n[[forward]]\nlisten = \"127.0.0.1:2222\"\nto = \"git:22\"\n",
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("valid client config")
            && r.stdout.contains("forward 127.0.0.1:2222 -> git:22"),
        "{}",
        r.stdout
    );
    let r = check(
        "trust_domain = \"dr.example.com\"\nedges = []\n[tls]\nca = \"ca.pem\"\ncert = \"alice.pem\"\nkey = \"alice.key\"\n[listen]\nsocks = \"127.0.0.1:1080\"\n",
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(":2: key `edges`: at least one edge address is required"),
        "{}",
        r.stderr
    );
}

#[test]
fn out_of_range_durations_and_sizes_exit_2_naming_key_and_line() {
    // Before they were bounded, the first panicked every QUIC accept task and
    // the second made the edge exit 101 at start; `check` called both valid.
    let cases = [
        (
            "[limits]\nhandshake_timeout = \"500000000000y\"\n",
            "limits.handshake_timeout",
            "handshake_timeout =",
            "out of range: 100ms to 10m",
        ),
        (
            "[limits]\nidle_timeout = \"100ms\"\n",
            "limits.idle_timeout",
            "idle_timeout =",
            "100ms is out of range: 300ms to 1h",
        ),
        (
            "[limits]\nidle_timeout = \"2days\"\n",
            "limits.idle_timeout",
            "idle_timeout =",
            "2days is out of range: 300ms to 1h",
        ),
        (
            "[limits]\nflow_window = 4294967295\n",
            "limits.flow_window",
            "flow_window =",
            "4294967295 is out of range: 16384 to 268435456",
        ),
        (
            "[limits]\nmax_tunnels = 0\n",
            "limits.max_tunnels",
            "max_tunnels =",
            "0 is out of range: 1 to 1000000",
        ),
    ];
    for (extra, key, needle, msg) in cases {
        let r = check(&format!("{}{extra}", edge("")), &[]);
        r.error(key, r.line(needle, 0), msg);
    }
    let text = edge("").replace(
        "trigger = \"static:on\"\n",
        "trigger = \"static:on\"\npoll_interval = \"500000000000y\"\n",
    );
    let r = check(&text, &[]);
    r.error(
        "dr.poll_interval",
        r.line("poll_interval =", 0),
        "out of range: 1s to 1day",
    );
}

/// What stops a role, found by `check` and by the role itself, both exit 2
/// naming the key and its line (the cause once).
#[test]
fn files_that_stop_a_role_are_refused_by_check_and_by_the_role() {
    let base = edge("").replace(
        "key = \"edge1.key\"\n",
        "key = \"edge1.key\"\ncrl = \"ca.crl\"\n",
    );
    // (what, config edit, file edit in the dir, key, message)
    type Edit = fn(&Path);
    let cases: [(&str, String, Edit, &str, &str); 7] = [
        (
            "missing certificate",
            base.replace("edge1.pem", "nope.pem"),
            |_| {},
            "tls.cert",
            "nope.pem: cannot read: No such file or directory (os error 2)",
        ),
        (
            "missing CRL",
            base.replace("ca.crl", "gone.crl"),
            |_| {},
            "tls.crl",
            "gone.crl: cannot read: No such file or directory",
        ),
        (
            "CRL without a CRL number",
            base.clone(),
            |d| lifeboat::pki::write_flawed_crl(d, lifeboat::trust::CrlFlaw::NoNumber).unwrap(),
            "tls.crl",
            "ca.crl: CRL refused: it has no CRL number extension",
        ),
        (
            "missing CA",
            base.clone(),
            |d| std::fs::remove_file(d.join("ca.pem")).unwrap(),
            "tls.ca",
            "ca.pem: cannot read: No such file or directory",
        ),
        (
            "key of another certificate",
            base.replace("edge1.key", "alice.key"),
            |_| {},
            "tls.key",
            "alice.key: private key does not match the certificate",
        ),
        (
            "client certificate for the edge",
            base.replace("edge1.pem", "alice.pem")
                .replace("edge1.key", "alice.key"),
            |_| {},
            "tls.cert",
            "alice.pem: is a client certificate (spiffe://dr.example.com/client/alice); \
             an edge needs an edge certificate",
        ),
        (
            "key readable by others",
            base.clone(),
            |d| {
                use std::os::unix::fs::PermissionsExt as _;
                let p = std::fs::Permissions::from_mode(0o644);
                std::fs::set_permissions(d.join("edge1.key"), p).unwrap();
            },
            "tls.key",
            "private key is accessible by others (mode 0644): run `chmod 600",
        ),
    ];
    for (what, text, edit, key, msg) in cases {
        let needle = format!("{} =", key.trim_start_matches("tls."));
        for cmd in ["check", "edge"] {
            let dir = tempfile::tempdir().unwrap();
            pki(dir.path());
            edit(dir.path());
            let r = run_in(dir, cmd, &text, &[]);
            let line = r.line(&needle, 0);
            let want = format!("edge.toml:{line}: key `{key}`: ");
            assert_eq!(r.code, 2, "{what}: lifeboat {cmd}: {}", r.stderr);
            assert!(
                r.stderr.contains(&want) && r.stderr.contains(msg),
                "{what}: lifeboat {cmd}: want {want:?} and {msg:?} in: {}",
                r.stderr
            );
            assert_eq!(
                r.stderr.matches("No such file").count(),
                usize::from(msg.contains("No such file")),
                "{what}: the cause once: {}",
                r.stderr
            );
        }
    }
}

#[test]
fn expired_certificate_is_refused_by_check_and_one_expiring_soon_warned() {
    let day = time::Duration::days(1);
    let now = time::OffsetDateTime::now_utc();
    for (not_after, code, msg) in [
        (now - day, 2, "certificate expired at"),
        (now + 10 * day, 0, "certificate expires at"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        pki(dir.path());
        let mut o = IssueOptions::new(dir.path(), Role::Edge, "edge1");
        o.not_before = Some(now - 30 * day);
        o.not_after = Some(not_after);
        lifeboat::pki::issue(&o).unwrap();
        let r = run_in(dir, "check", &edge(""), &[]);
        assert_eq!(r.code, code, "{}{}", r.stdout, r.stderr);
        let line = r.line("cert =", 0);
        let out = format!("{}{}", r.stdout, r.stderr);
        assert!(
            out.contains(&format!("edge.toml:{line}: key `tls.cert`: ")) && out.contains(msg),
            "want {msg:?} at line {line}: {out}"
        );
    }
}

#[test]
fn two_listeners_on_one_address_are_refused() {
    let client = "trust_domain = \"dr.example.com\"\nedges = [\"edge.example:443\"]\n[tls]\n\
                  ca = \"ca.pem\"\ncert = \"alice.pem\"\nkey = \"alice.key\"\n[listen]\n\
                  socks = \"127.0.0.1:1080\"\nhttp = \"127.0.0.1:1080\"\n";
    for cmd in ["check", "client"] {
        let dir = tempfile::tempdir().unwrap();
        pki(dir.path());
        let r = run_in(dir, cmd, client, &[]);
        assert_eq!(r.code, 2, "lifeboat {cmd}: {}", r.stderr);
        assert!(
            r.stderr.contains(":9: key `listen.http`: `127.0.0.1:1080` clashes with `listen.socks = \"127.0.0.1:1080\"` (line 8)"),
            "lifeboat {cmd}: {}",
            r.stderr
        );
    }
    // TCP and UDP may share a port; an unspecified address clashes with any.
    let r = check(
        &edge("").replace(
            "quic = \"127.0.0.1:0\"\n",
            "quic = \"127.0.0.1:4433\"\ntls = \"127.0.0.1:4433\"\nadmin = \"0.0.0.0:4433\"\n",
        ),
        &[],
    );
    r.error(
        "listen.admin",
        r.line("admin =", 0),
        "`0.0.0.0:4433` clashes with `listen.tls = \"127.0.0.1:4433\"`",
    );
}

#[test]
fn a_more_specific_segment_hiding_ports_of_a_broader_one_is_warned() {
    let r = check(
        &edge(
            r#"
[[segment]]
name = "payroll-db"
dr = true
domains = ["db.hr.corp.example"]
cidrs = ["10.20.5.0/24"]
tcp_ports = ["443"]
server_groups = ["dc1"]
[[segment]]
name = "payroll-api"
dr = true
cidrs = ["10.20.6.0/24"]
tcp_ports = ["443", "8000-8080"]
server_groups = ["dc1"]
"#,
        ),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let payroll = r.line("\"10.20.0.0/16\"", 0);
    let wild = r.line("\"*.hr.corp.example\"", 0);
    let cidr = r.line("\"10.20.5.0/24\"", 0);
    let name = r.line("\"db.hr.corp.example\"", 0);
    for want in [
        format!(
            "edge.toml:{cidr}: key `segment[1].cidrs[0]`: 10.20.5.0/24 of DR segment \
             `payroll-db` hides port(s) 8000-8080 that DR segment `payroll` serves for \
             10.20.0.0/16 at line {payroll}"
        ),
        format!(
            "edge.toml:{name}: key `segment[1].domains[0]`: db.hr.corp.example of DR \
             segment `payroll-db` hides port(s) 8000-8080 that DR segment `payroll` serves for \
             *.hr.corp.example at line {wild}"
        ),
    ] {
        assert!(r.stdout.contains(&want), "want {want:?} in:\n{}", r.stdout);
    }
    // 10.20.6.0/24 serves every port its parent does: nothing hidden.
    assert!(!r.stdout.contains("10.20.6.0/24 of DR"), "{}", r.stdout);
}

/// A DNS trigger without `signing_key` is legal but a warning: one forged
/// DNS answer could switch DR.
#[test]
fn an_unsigned_dns_trigger_is_a_warning() {
    let text = edge("").replace(
        "trigger = \"static:on\"",
        "trigger = \"dns:_lifeboat-dr.example.com\"",
    );
    let r = check(&text, &[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("key `dr.trigger`"))
        .unwrap_or_else(|| panic!("no warning for dr.trigger:\n{}", r.stdout));
    assert!(
        line.starts_with("warning: ") && line.contains("not signed"),
        "{line}"
    );
    let signed = check(&edge(""), &[]);
    assert!(
        !signed.stdout.contains("key `dr.trigger`"),
        "{}",
        signed.stdout
    );
}
