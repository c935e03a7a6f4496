//! The deploy kit is tested as shipped: the example configs (and the ones
//! inside the Kubernetes ConfigMaps) pass `lifeboat check`; `promtool`
//! accepts the scrape config and the alert rules and runs their unit tests;
//! alerts and dashboard name only metrics lifeboat exposes; the systemd
//! units are hardened, pass `systemd-analyze verify`, and their command
//! lines parse; the zone file carries the trigger and edge names the
//! configs use. `lifeboat drill` runs against a real loopback topology.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use lifeboat::config::{self, ClientConfig, ConnectorConfig, EdgeConfig};
use lifeboat::demo::{self, Topology};
use lifeboat::metrics::Metrics;
use lifeboat::pki::IssueOptions;
use lifeboat::trust::Role;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn lifeboat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run lifeboat")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tool on PATH, or `None` after saying the test skipped; with `require`
/// set in the environment (CI), a failure instead.
fn tool(name: &str, require: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os(require).is_none(),
            "`{name}` not found on PATH and {require} is set"
        );
        eprintln!("SKIPPED: `{name}` not found on PATH (.ci/run installs it)");
    }
    found
}

/// `lifeboat check -c path`, which must accept it, and its report. `check`
/// loads the certificate files a config names, so the config is checked
/// as a copy in a scratch folder next to a fresh PKI holding them (the
/// Kubernetes mount point `/etc/lifeboat/pki/` becomes `pki/` there), with
/// a certificate of the role the file is for.
fn check_accepts(path: &Path) -> String {
    let config = std::fs::read_to_string(path).expect("read config");
    let config = config.replace("\"/etc/lifeboat/pki/", "\"pki/");
    let table: toml::Table = config.parse().expect("TOML");
    let tls = table["tls"].as_table().expect("[tls]");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).expect("mkdir");
    lifeboat::pki::init(
        &pki,
        table["trust_domain"].as_str().expect("trust_domain"),
        30,
    )
    .expect("pki init");
    let file = |k: &str| {
        let rel = tls[k].as_str().expect("a path");
        assert!(
            rel.starts_with("pki/"),
            "{}: [tls] {k} = {rel}",
            path.display()
        );
        dir.path().join(rel)
    };
    let (cert, key) = (file("cert"), file("key"));
    let name = cert.file_stem().and_then(|s| s.to_str()).expect("name");
    let mut o = if table.contains_key("segment") || table.contains_key("connector_group") {
        IssueOptions::new(&pki, Role::Edge, name)
    } else if table
        .get("listen")
        .and_then(|l| l.get("socks").or_else(|| l.get("http")))
        .is_some()
        || path
            .file_name()
            .is_some_and(|n| n == "drill.toml" || n == "client.toml")
    {
        IssueOptions::new(&pki, Role::Client, name)
    } else {
        let mut o = IssueOptions::new(&pki, Role::Connector, name);
        o.group = Some("dc1-dr".into());
        o
    };
    o.days = 365;
    let (issued_cert, issued_key) = lifeboat::pki::issue(&o).expect("pki issue");
    assert_eq!(
        (issued_cert, issued_key),
        (cert, key),
        "cert and key names pair up"
    );
    assert_eq!(file("ca"), pki.join("ca.pem"));
    if tls.contains_key("crl") {
        assert_eq!(file("crl"), pki.join("ca.crl"));
    }
    let copy = dir.path().join(path.file_name().expect("file name"));
    std::fs::write(&copy, config).expect("write copy");
    let o = lifeboat(&["check", "-c", copy.to_str().expect("utf-8 path")]);
    assert!(
        o.status.success(),
        "lifeboat check -c {} (as {}):\n{}",
        path.display(),
        copy.display(),
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

// ---------------------------------------------------------------- configs

#[test]
fn example_configs_pass_lifeboat_check_as_the_role_they_are_for() {
    let dir = root().join("deploy/config");
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/config") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        let report = check_accepts(&path);
        let role = match name.as_str() {
            "edge.toml" => {
                config::load::<EdgeConfig>(&path).expect("edge config");
                "edge"
            }
            "connector.toml" => {
                config::load::<ConnectorConfig>(&path).expect("connector config");
                "connector"
            }
            _ => {
                config::load::<ClientConfig>(&path).expect("client config");
                "client"
            }
        };
        assert!(
            report.contains(&format!("valid {role} config")),
            "{name}: check should see a {role} config:\n{report}"
        );
        seen.insert(name);
    }
    let want: BTreeSet<String> = ["client.toml", "connector.toml", "drill.toml", "edge.toml"]
        .map(String::from)
        .into();
    assert_eq!(seen, want);

    // What the edge example promises in its comments.
    let edge = config::load::<EdgeConfig>(&dir.join("edge.toml")).expect("edge");
    assert!(
        edge.dr.test_users.iter().any(|u| u == "drill"),
        "the daily drill's user is a test user"
    );
    let report = check_accepts(&dir.join("edge.toml"));
    assert!(
        report.contains("payroll") && report.contains("erp"),
        "{report}"
    );
    assert!(
        report.contains("wiki"),
        "the non-DR segment is reported: {report}"
    );
}

/// The text of `key: |` blocks in a YAML file (the ConfigMaps' files).
fn yaml_blocks(yaml: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(indent) = l.find(&format!("{key}: |")) else {
            continue;
        };
        if !l[..indent].trim().is_empty() {
            continue;
        }
        let mut block = String::new();
        while let Some(n) = lines.peek() {
            let body_indent = n.len() - n.trim_start().len();
            if !n.trim().is_empty() && body_indent <= indent {
                break;
            }
            block.push_str(n.get(indent + 2..).unwrap_or(""));
            block.push('\n');
            lines.next();
        }
        out.push(block);
    }
    out
}

#[test]
fn kubernetes_manifests_carry_valid_configs_and_expose_udp_and_tcp_443() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    for f in [
        "namespace.yaml",
        "edge.yaml",
        "connector.yaml",
        "drill-cronjob.yaml",
    ] {
        assert!(
            kustomization.contains(&format!("- {f}")),
            "kustomization lists {f}"
        );
        assert!(root().join("deploy/kubernetes").join(f).is_file());
    }
    for (file, key) in [
        ("edge.yaml", "edge.toml"),
        ("connector.yaml", "connector.toml"),
        ("drill-cronjob.yaml", "drill.toml"),
    ] {
        let yaml = read(&format!("deploy/kubernetes/{file}"));
        let blocks = yaml_blocks(&yaml, key);
        assert_eq!(blocks.len(), 1, "{file} has one {key}");
        let path = dir.path().join(key);
        std::fs::write(&path, &blocks[0]).expect("write");
        check_accepts(&path);
        // The container runs the file the ConfigMap provides, where it is mounted.
        assert!(
            yaml.contains(&format!("\"-c\", \"/etc/lifeboat/config/{key}\"")),
            "{file}"
        );
        assert!(yaml.contains("mountPath: /etc/lifeboat/config"));
        assert!(yaml.contains("mountPath: /etc/lifeboat/pki"));
        // Every certificate file the config names is a key of the Secret.
        for line in blocks[0].lines() {
            if let Some(p) = line
                .split('"')
                .nth(1)
                .and_then(|p| p.strip_prefix("/etc/lifeboat/pki/"))
            {
                assert!(
                    yaml.contains(&format!("  {p}: \"REPLACE")),
                    "{file}: Secret lacks {p}"
                );
            }
        }
        // Long-running roles are probed; the drill is a Job that exits.
        let probed = yaml.contains("kind: Deployment");
        assert!(
            !probed || (yaml.contains("path: /readyz") && yaml.contains("path: /healthz")),
            "{file} probes"
        );
        assert!(probed || yaml.contains("kind: CronJob"), "{file}");
        assert!(
            yaml.contains("runAsNonRoot: true") && yaml.contains("readOnlyRootFilesystem: true")
        );
    }
    let edge = read("deploy/kubernetes/edge.yaml");
    assert!(edge.contains("kind: Deployment") && edge.contains("kind: Service"));
    assert!(edge.contains("type: LoadBalancer"));
    let ports = edge.split("kind: Service").nth(1).expect("Service");
    for proto in ["UDP", "TCP"] {
        assert!(
            ports.contains(&format!("protocol: {proto}\n      port: 443")),
            "the Service exposes {proto} 443:\n{ports}"
        );
    }
    // The pod listens where the Service sends it.
    let cfg = &yaml_blocks(&edge, "edge.toml")[0];
    let cfg: EdgeConfig = config::from_text(&dir.path().join("edge.toml"), cfg).expect("edge");
    assert_eq!(cfg.listen.quic.map(|a| a.port()), Some(8443));
    assert_eq!(cfg.listen.tls.map(|a| a.port()), Some(8443));
    assert!(edge.contains("containerPort: 8443\n              protocol: UDP"));
    assert!(edge.contains("containerPort: 8443\n              protocol: TCP"));
    assert_eq!(cfg.listen.admin.map(|a| a.port()), Some(9443));
    assert!(edge.contains("containerPort: 9443"));
    // SIGTERM drains for drain_timeout; Kubernetes must wait longer.
    let grace: u64 = edge
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .and_then(|v| v.parse().ok())
        .expect("terminationGracePeriodSeconds");
    assert!(grace > cfg.limits.drain_timeout.as_secs(), "grace {grace}s");
}

// ------------------------------------------------------------- Prometheus

#[test]
fn promtool_accepts_the_scrape_config_the_rules_and_their_unit_tests() {
    let Some(promtool) = tool("promtool", "LIFEBOAT_REQUIRE_PROMETHEUS") else {
        return;
    };
    let dir = root().join("deploy/prometheus");
    for args in [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "lifeboat-alerts.yml"],
        ["test", "rules", "lifeboat-alerts.test.yml"],
    ] {
        let o = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            o.status.success(),
            "promtool {}:\n{}",
            args.join(" "),
            text(&o)
        );
    }
}

/// `lifeboat_...` names in `text` (PromQL or JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("lifeboat_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let part_of_a_word =
            before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/');
        // `lifeboat_` alone is the prefix, spoken of, not a metric.
        if !part_of_a_word && end > "lifeboat_".len() {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Every series name lifeboat and its drill expose.
fn exposed_names() -> BTreeSet<String> {
    let m = Metrics::new("edge");
    let _ = m.segment("payroll");
    m.init_connector_groups(["dc1-dr"]);
    // Set when the role has loaded its certificates.
    m.cert_expiry.with_label_values(&["local"]).set(1.0);
    let mut text = m.encode();
    text.push_str(&lifeboat::drill::render_textfile(&Default::default(), 0));
    text.push_str("lifeboat_drill_flows{segment=\"-\",result=\"ok\"} 1\n");
    // Series names, and family names (a histogram's, in descriptions).
    let mut names = BTreeSet::new();
    for l in text.lines().filter(|l| !l.is_empty()) {
        let name = match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        };
        names.extend(name.map(String::from));
    }
    names
}

#[test]
fn alerts_and_dashboard_name_only_metrics_lifeboat_exposes() {
    let exposed = exposed_names();
    let rules = read("deploy/prometheus/lifeboat-alerts.yml");
    let dashboard = read("deploy/grafana/lifeboat-dashboard.json");
    for (what, body) in [("alert rules", &rules), ("dashboard", &dashboard)] {
        let used = metric_names(body);
        assert!(used.len() >= 10, "{what} use lifeboat metrics: {used:?}");
        for name in &used {
            assert!(
                exposed.contains(name),
                "{what} name `{name}`, which nothing exposes"
            );
        }
    }
    // The alerts issue 6 asks for.
    for alert in [
        "LifeboatDrActivated",
        "LifeboatDrModeChanged",
        "LifeboatDrConnectorGroupEmpty",
        "LifeboatHandshakeFailureRatioHigh",
        "LifeboatDrTriggerLookupsFailing",
        "LifeboatEdgeNotReady",
    ] {
        assert!(
            rules.contains(&format!("- alert: {alert}\n")),
            "missing alert {alert}"
        );
    }
    // The dashboard is importable: JSON, a uid, a templated data source, unique panel ids.
    let v: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert_eq!(v["uid"], "lifeboat-dr");
    let panels = v["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            !p["targets"].as_array().expect("targets").is_empty(),
            "{}",
            p["title"]
        );
    }
    let vars: Vec<&str> = v["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);
    // Every alert and panel is about a job the scrape config defines.
    let scrape = read("deploy/prometheus/prometheus.yml");
    for job in ["lifeboat-edge", "lifeboat-connector", "lifeboat-drill"] {
        assert!(scrape.contains(&format!("job_name: {job}")), "{job}");
        assert!(rules.contains(job), "rules use {job}");
    }
}

// ---------------------------------------------------------------- systemd

fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn directive<'a>(d: &'a [(String, String)], key: &str) -> Option<&'a str> {
    d.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn systemd_units_are_hardened_and_pass_systemd_analyze_verify() {
    for (unit, role) in [
        ("lifeboat-edge.service", "edge"),
        ("lifeboat-connector.service", "connector"),
    ] {
        let d = directives(&read(&format!("deploy/systemd/{unit}")));
        for (k, v) in [
            ("User", "lifeboat"),
            ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
            ("ProtectSystem", "strict"),
            ("NoNewPrivileges", "yes"),
            ("Restart", "on-failure"),
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
            ("RestartPreventExitStatus", "2"),
        ] {
            assert_eq!(directive(&d, k), Some(v), "{unit}: {k}");
        }
        let nofile: u64 = directive(&d, "LimitNOFILE")
            .and_then(|v| v.parse().ok())
            .expect("LimitNOFILE");
        assert!(nofile >= 65536, "{unit}: LimitNOFILE {nofile}");
        let config = format!("/etc/lifeboat/{role}.toml");
        assert_eq!(
            directive(&d, "ExecStart"),
            Some(format!("/usr/local/bin/lifeboat {role} -c {config}").as_str())
        );
        assert_eq!(
            directive(&d, "ExecStartPre"),
            Some(format!("/usr/local/bin/lifeboat check -c {config}").as_str())
        );
        // The example it runs exists, and systemd waits longer than it drains.
        let cfg = root().join(format!("deploy/config/{role}.toml"));
        let drain = match role {
            "edge" => {
                config::load::<EdgeConfig>(&cfg)
                    .expect("edge")
                    .limits
                    .drain_timeout
            }
            _ => {
                config::load::<ConnectorConfig>(&cfg)
                    .expect("connector")
                    .limits
                    .drain_timeout
            }
        };
        let stop = directive(&d, "TimeoutStopSec")
            .and_then(|v| humantime::parse_duration(v).ok())
            .expect("TimeoutStopSec");
        assert!(
            stop > drain,
            "{unit}: TimeoutStopSec {stop:?} <= drain_timeout {drain:?}"
        );
    }
    let drill = directives(&read("deploy/systemd/lifeboat-drill.service"));
    assert_eq!(directive(&drill, "Type"), Some("oneshot"));
    assert_eq!(directive(&drill, "User"), Some("lifeboat"));
    assert!(directive(&drill, "ExecStart").is_some_and(
        |e| e.starts_with("/usr/local/bin/lifeboat drill -c /etc/lifeboat/drill.toml")
    ));
    let timer = directives(&read("deploy/systemd/lifeboat-drill.timer"));
    assert_eq!(directive(&timer, "Unit"), Some("lifeboat-drill.service"));
    assert!(
        directive(&timer, "OnCalendar").is_some()
            && directive(&timer, "Persistent") == Some("true")
    );
    // The client runs as a user service on the user's machine.
    let client = directives(&read("deploy/systemd/lifeboat-client.service"));
    let config = "%h/.config/lifeboat/client.toml";
    for (k, v) in [
        (
            "ExecStart",
            format!("/usr/local/bin/lifeboat client -c {config}"),
        ),
        (
            "ExecStartPre",
            format!("/usr/local/bin/lifeboat check -c {config}"),
        ),
        ("RestartPreventExitStatus", "2".into()),
        ("Restart", "on-failure".into()),
        ("WantedBy", "default.target".into()),
    ] {
        assert_eq!(directive(&client, k), Some(v.as_str()), "client unit: {k}");
    }
    assert_eq!(
        directive(&client, "User"),
        None,
        "a user unit runs as its user"
    );
    // Every unit's Documentation= is a file the runbook's install steps
    // (or the image) put there.
    let runbook = read("docs/runbook.md");
    let dockerfile = read("Dockerfile");
    for f in std::fs::read_dir(root().join("deploy/systemd")).expect("deploy/systemd") {
        let path = f.expect("entry").path();
        let unit = std::fs::read_to_string(&path).expect("unit");
        if !unit.contains("[Unit]") {
            continue;
        }
        let d = directives(&unit);
        let doc = directive(&d, "Documentation").expect("Documentation=");
        let file = doc.strip_prefix("file://").expect("a file:// URL");
        let src = "docs/runbook.md";
        assert!(
            runbook.contains(&format!("install -D -m 0644 {src} {file}"))
                && dockerfile.contains(&format!("COPY {src} {file}")),
            "{}: {doc} is installed by the runbook and the image",
            path.display()
        );
    }
    let sysusers = read("deploy/systemd/lifeboat.sysusers.conf");
    assert!(sysusers.lines().any(|l| l.starts_with("u lifeboat ")));

    let Some(analyze) = tool("systemd-analyze", "LIFEBOAT_REQUIRE_SYSTEMD") else {
        return;
    };
    // verify checks the binaries exist: point the units at the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut units = Vec::new();
    for f in std::fs::read_dir(root().join("deploy/systemd")).expect("deploy/systemd") {
        let path = f.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        if !(name.ends_with(".service") || name.ends_with(".timer")) {
            continue;
        }
        let unit = std::fs::read_to_string(&path)
            .expect("unit")
            .replace("/usr/local/bin/lifeboat", env!("CARGO_BIN_EXE_lifeboat"));
        let out = dir.path().join(&name);
        std::fs::write(&out, unit).expect("write unit");
        units.push(out);
    }
    assert_eq!(
        units.len(),
        5,
        "edge, connector, client (user), drill service and timer"
    );
    let o = Command::new(analyze)
        .arg("verify")
        .arg("--man=no")
        .args(&units)
        .current_dir(dir.path())
        .output()
        .expect("run systemd-analyze");
    let said = String::from_utf8_lossy(&o.stderr);
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("lifeboat")).collect();
    assert!(
        o.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{}",
        text(&o)
    );
}

// -------------------------------------------------------------- packaging

/// The Dockerfile passes hadolint (no container builder or base image can
/// be fetched here, so it is linted instead of built).
#[test]
fn dockerfile_passes_hadolint() {
    let Some(hadolint) = tool("hadolint", "LIFEBOAT_REQUIRE_HADOLINT") else {
        return;
    };
    let out = Command::new(hadolint)
        .arg(root().join("Dockerfile"))
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image: built in two stages, the binary as the entrypoint on a
/// runtime image without a compiler, as the UID the manifests run it as.
#[test]
fn dockerfile_builds_the_binary_and_runs_it_non_root() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(froms[0].ends_with(" AS build"), "{froms:?}");
    assert!(
        lines.contains(&"COPY --from=build /src/target/release/lifeboat /usr/local/bin/lifeboat")
    );
    assert!(lines.contains(&"ENTRYPOINT [\"/usr/local/bin/lifeboat\"]"));
    // What the build stage copies is what `cargo build` needs: the
    // manifest, the lock file and every target path Cargo.toml names.
    let cargo: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    for bench in cargo["bench"].as_array().expect("[[bench]]") {
        let name = bench["name"].as_str().expect("bench name");
        assert!(root().join("benches").join(format!("{name}.rs")).is_file());
    }
    for need in [
        "COPY Cargo.toml Cargo.lock ./",
        "COPY src ./src",
        "COPY benches ./benches",
    ] {
        assert!(lines.contains(&need), "Dockerfile lacks `{need}`");
    }
    assert!(lines
        .iter()
        .any(|l| l.starts_with("RUN cargo build --release --locked")));
    // The runtime user is the one the manifests run as, not root.
    let user = lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    assert_eq!(user, "65532:65532");
    for f in ["edge.yaml", "connector.yaml", "drill-cronjob.yaml"] {
        let yaml = read(&format!("deploy/kubernetes/{f}"));
        assert!(
            yaml.contains("runAsUser: 65532") && yaml.contains("runAsGroup: 65532"),
            "{f}"
        );
        assert!(
            yaml.contains("image: registry.example.com/lifeboat:0.1.0"),
            "{f}"
        );
    }
    assert!(dockerfile.contains("docker build -t registry.example.com/lifeboat:0.1.0 ."));
    assert!(read("LICENSE").contains("Apache License") && read("LICENSE").contains("Version 2.0"));
    assert_eq!(cargo["package"]["license"].as_str(), Some("Apache-2.0"));
}

// -------------------------------------------------------------------- DNS

/// `(owner, ttl, type, rdata)` of the records of a zone file with `$ORIGIN`.
fn zone_records(zone: &str) -> Vec<(String, u32, String, String)> {
    let mut origin = String::new();
    let mut out = Vec::new();
    for l in zone.lines() {
        // A comment starts at a `;` outside quotes (TXT text has `;` in it).
        let mut quoted = false;
        let end = l
            .char_indices()
            .find(|&(_, c)| {
                quoted ^= c == '"';
                c == ';' && !quoted
            })
            .map_or(l.len(), |(i, _)| i);
        let l = l[..end].trim_end();
        if let Some(o) = l.strip_prefix("$ORIGIN ") {
            origin = o.trim().to_string();
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if l.starts_with(char::is_whitespace) || f.len() < 5 {
            continue;
        }
        let (Ok(ttl), "IN") = (f[1].parse::<u32>(), f[2]) else {
            continue;
        };
        let owner = format!("{}.{origin}", f[0]);
        let rdata = f[4..].join(" ");
        out.push((owner, ttl, f[3].to_string(), rdata));
    }
    out
}

#[test]
fn zone_file_publishes_the_trigger_and_edge_names_the_configs_use() {
    let zone = read("deploy/dns/example.com.zone");
    let records = zone_records(&zone);
    let trigger_name = {
        let edge =
            config::load::<EdgeConfig>(&root().join("deploy/config/edge.toml")).expect("edge");
        match edge.dr.trigger {
            Some(lifeboat::dr::Trigger::Dns(n)) => format!("{n}."),
            other => panic!("the example edge polls DNS: {other:?}"),
        }
    };
    let txt: Vec<_> = records
        .iter()
        .filter(|(o, _, t, _)| *o == trigger_name && t == "TXT")
        .collect();
    assert_eq!(
        txt.len(),
        1,
        "one trigger TXT at {trigger_name}: {records:?}"
    );
    assert_eq!(txt[0].1, 30, "the guide's 30 s TTL");
    let record = txt[0].3.trim_matches('"');
    let rec = lifeboat::dr::record::parse(record).unwrap_or_else(|e| panic!("{record}: {e}"));
    assert_eq!(rec.mode, lifeboat::dr::DrMode::Off, "standby by default");
    for other in ["v=1; b=test; k=zpa", "v=1; b=on; k=zpa"] {
        assert!(zone.contains(other), "the zone shows how to write {other}");
        lifeboat::dr::record::parse(other).expect("documented records parse");
    }

    // Every config's `edges` names the A/AAAA record.
    let mut edge_hosts = BTreeSet::new();
    for f in ["connector.toml", "client.toml", "drill.toml"] {
        let cfg = config::load::<ClientConfig>(&root().join("deploy/config").join(f)).expect(f);
        for e in cfg.edges {
            edge_hosts.insert(format!("{}.", e.rsplit_once(':').expect("host:port").0));
        }
    }
    assert_eq!(edge_hosts.len(), 1, "{edge_hosts:?}");
    let edge_name = edge_hosts.into_iter().next().expect("one");
    let addrs: Vec<String> = records
        .iter()
        .filter(|(o, _, t, _)| *o == edge_name && (t == "A" || t == "AAAA"))
        .map(|(_, ttl, _, a)| {
            assert_eq!(*ttl, 30);
            a.parse::<std::net::IpAddr>().expect("an address");
            a.clone()
        })
        .collect();
    assert!(addrs.len() >= 2, "edges at {edge_name}: {records:?}");

    // `lifeboat dns-record` writes the same records.
    let mut args = vec![
        "dns-record",
        "--name",
        trigger_name.trim_end_matches('.'),
        "--mode",
        "off",
        "--edge-name",
        edge_name.trim_end_matches('.'),
    ];
    for a in &addrs {
        args.extend(["--edge", a.as_str()]);
    }
    let o = lifeboat(&args);
    assert!(o.status.success(), "{}", text(&o));
    let printed = String::from_utf8_lossy(&o.stdout);
    for line in printed.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let rec = (
            f[0].to_string(),
            f[1].parse().expect("ttl"),
            f[3].to_string(),
            f[4..].join(" "),
        );
        assert!(records.contains(&rec), "zone lacks {line}");
    }
}

// ------------------------------------------------------------------ drill

fn drill(dir: &Path, extra: &[&str]) -> Output {
    let client = dir.join("client.toml");
    let edge = dir.join("edge.toml");
    let mut args = vec![
        "drill",
        "-c",
        client.to_str().expect("utf-8"),
        "--edge-config",
        edge.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    lifeboat(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_opens_a_real_flow_per_target_and_edge_and_exits_0_only_if_all_passed() {
    let t = Topology::start().await.expect("topology");
    let d = t.dir.path().to_path_buf();
    let port = t.app.port();

    // Targets from the edge config: the exact DR name on the segment's port.
    for transport in ["quic", "tls"] {
        let o = tokio::task::spawn_blocking({
            let d = d.clone();
            move || drill(&d, &["--transport", transport, "--json"])
        })
        .await
        .expect("drill");
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json is JSON");
        assert_eq!(v["passed"], true);
        let results = v["results"].as_array().expect("results");
        assert_eq!(results.len(), 1, "{v}");
        let r = &results[0];
        assert_eq!(r["target"], format!("{}:{port}", demo::DR_HOST));
        assert_eq!(r["segment"], "payroll");
        assert_eq!(r["edge"], t.edge_quic.to_string());
        assert_eq!(r["transport"], transport);
        assert_eq!(r["result"], "ok");
        assert!(r["setup_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{r}");
    }
    assert!(
        t.edge_metrics
            .flows_total
            .with_label_values(&["payroll", "ok"])
            .get()
            >= 2,
        "the drill's flows are real flows at the edge"
    );

    // A target outside DR, a wrong port, and a second edge address that
    // answers nothing: one row per target and edge, exit 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let dead: SocketAddr = closed.local_addr().expect("addr");
    drop(closed);
    let client = std::fs::read_to_string(d.join("client.toml")).expect("client.toml");
    let two_edges = client.replace(
        &format!("edges = [\"{}\"]", t.edge_quic),
        &format!("edges = [\"{}\", \"{dead}\"]", t.edge_quic),
    );
    assert_ne!(client, two_edges, "edges line rewritten");
    let dir2 = tempfile::tempdir().expect("tempdir");
    for f in [
        "ca.pem",
        "alice.pem",
        "alice.key",
        "edge.toml",
        "edge1.pem",
        "edge1.key",
    ] {
        std::fs::copy(d.join(f), dir2.path().join(f)).expect("copy");
    }
    std::fs::write(dir2.path().join("client.toml"), two_edges).expect("write");
    let wiki = format!("{}:{port}", demo::NON_DR_HOST);
    let wrong_port = format!("{}:1", demo::DR_HOST);
    let prom = dir2.path().join("drill.prom");
    let o = tokio::task::spawn_blocking({
        let d2 = dir2.path().to_path_buf();
        let (wiki, wrong_port, prom) = (wiki.clone(), wrong_port.clone(), prom.clone());
        move || {
            drill(
                &d2,
                &[
                    "--transport",
                    "tls",
                    "--target",
                    &wiki,
                    "--target",
                    &wrong_port,
                    "--textfile",
                    prom.to_str().expect("utf-8"),
                ],
            )
        }
    })
    .await
    .expect("drill");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    let head = table.lines().next().expect("header");
    for col in ["TARGET", "SEGMENT", "EDGE", "TRANSPORT", "SETUP", "RESULT"] {
        assert!(head.contains(col), "{head}");
    }
    let row = |target: &str, edge: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{target} ")) && l.contains(&format!(" {edge} ")))
            .unwrap_or_else(|| panic!("no row for {target} via {edge}:\n{table}"))
            .to_string()
    };
    let live = t.edge_quic.to_string();
    let ok = format!("{}:{port}", demo::DR_HOST);
    assert!(
        row(&ok, &live).contains(" payroll ") && row(&ok, &live).contains(" ok"),
        "{table}"
    );
    assert!(row(&wiki, &live).contains("not-dr-segment"), "{table}");
    assert!(
        row(&wrong_port, &live).contains("not-dr-segment"),
        "{table}"
    );
    for target in [&ok, &wiki, &wrong_port] {
        let r = row(target, &dead.to_string());
        assert!(!r.contains(" ok"), "the dead edge fails every target: {r}");
    }
    assert!(
        table.contains("drill FAILED: 1/6 flows established"),
        "{table}"
    );

    // The textfile for node_exporter: valid, no target or address in it.
    let prom_text = std::fs::read_to_string(&prom).expect("textfile written");
    assert!(
        prom_text.contains("lifeboat_drill_success 0\n"),
        "{prom_text}"
    );
    assert!(prom_text.contains("lifeboat_drill_flows{segment=\"payroll\",result=\"ok\"} 1\n"));
    assert!(!prom_text.contains("127.0.0.1") && !prom_text.contains("demo.internal"));
    if let Some(promtool) = tool("promtool", "LIFEBOAT_REQUIRE_PROMETHEUS") {
        let o = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&prom).expect("open"))
            .output()
            .expect("promtool");
        assert!(o.status.success() && o.stdout.is_empty(), "{}", text(&o));
    }

    // Nothing to test is a usage error.
    let o = lifeboat(&[
        "drill",
        "-c",
        d.join("client.toml").to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    t.shutdown().await.expect("shutdown");
}

#[test]
fn drill_unit_command_line_runs_against_the_shipped_configs() {
    // The drill service's flags, on copies of the shipped configs whose edge
    // is a closed local port: the flags parse, the drill runs, fails, and
    // still writes its textfile.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pki = d.join("pki");
    lifeboat::pki::init(&pki, "dr.example.com", 2).expect("CA");
    let mut o = IssueOptions::new(&pki, Role::Client, "drill");
    o.days = 1;
    lifeboat::pki::issue(&o).expect("issue");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    let drill_toml =
        read("deploy/config/drill.toml").replace("dr-edge.example.com:443", &dead.to_string());
    std::fs::write(d.join("drill.toml"), drill_toml).expect("write");
    std::fs::write(d.join("edge.toml"), read("deploy/config/edge.toml")).expect("write");
    let unit = directives(&read("deploy/systemd/lifeboat-drill.service"));
    let exec = directive(&unit, "ExecStart").expect("ExecStart");
    let textfile = d.join("lifeboat_drill.prom");
    let args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| {
            a.replace("/etc/lifeboat/", &format!("{}/", d.display()))
                .replace(
                    "/var/lib/lifeboat/textfile/lifeboat_drill.prom",
                    textfile.to_str().expect("utf-8"),
                )
        })
        .chain(["--transport".to_string(), "tls".to_string()])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = lifeboat(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    // payroll and erp, each exact name on each of its ports' first values.
    for target in [
        "payroll.corp.example:443",
        "payroll.corp.example:8443",
        "erp.corp.example:443",
        "erp.corp.example:8000",
    ] {
        assert!(table.contains(target), "{target}:\n{table}");
    }
    assert!(
        !table.contains("wiki"),
        "non-DR segments are not drilled:\n{table}"
    );
    let prom = std::fs::read_to_string(&textfile).expect("textfile");
    assert!(prom.contains("lifeboat_drill_success 0"), "{prom}");
}

// ---------------------------------------------------------------- runbook

#[test]
fn runbook_commands_alerts_and_metrics_exist() {
    let runbook = read("docs/runbook.md");
    assert!(
        read("README.md").contains("(docs/runbook.md)"),
        "README links the runbook"
    );
    // Every alert it names is a rule.
    let rules = read("deploy/prometheus/lifeboat-alerts.yml");
    let mut rest = runbook.as_str();
    let mut alerts = 0;
    while let Some(i) = rest.find("`Lifeboat") {
        let name: String = rest[i + 1..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        // `Lifeboat-Error` is the header, not an alert.
        if name.len() > "Lifeboat".len() {
            assert!(
                rules.contains(&format!("- alert: {name}\n")),
                "runbook names alert {name}"
            );
            alerts += 1;
        }
        rest = &rest[i + 1..];
    }
    assert!(alerts >= 8, "runbook names the alerts to expect: {alerts}");
    // Every full metric name it uses is exposed.
    let exposed = exposed_names();
    for name in metric_names(&runbook) {
        assert!(
            exposed.contains(&name),
            "runbook names `{name}`, which nothing exposes"
        );
    }
    // Every `lifeboat` command line in its shell blocks names a real
    // subcommand and real flags.
    let mut in_sh = false;
    let mut commands = 0;
    for line in runbook.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        let Some(cmd) = line.trim().strip_prefix("lifeboat ").filter(|_| in_sh) else {
            continue;
        };
        let words: Vec<&str> = cmd.split_whitespace().take_while(|w| *w != "#").collect();
        let sub: Vec<&str> = words
            .iter()
            .take_while(|w| !w.starts_with('-'))
            .copied()
            .collect();
        let mut help_args = sub.clone();
        help_args.push("--help");
        let o = lifeboat(&help_args);
        assert!(
            o.status.success(),
            "`lifeboat {}`: {}",
            sub.join(" "),
            text(&o)
        );
        let help = String::from_utf8_lossy(&o.stdout);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            assert!(
                help.contains(&format!("{flag} "))
                    || help.contains(&format!("{flag}\n"))
                    || help.contains(&format!("{flag},")),
                "`lifeboat {}` has no {flag}",
                sub.join(" ")
            );
        }
        commands += 1;
    }
    assert!(commands >= 10, "runbook shell commands checked: {commands}");
}

#[test]
fn kubernetes_probes_have_timeouts_and_only_monitoring_reaches_admin() {
    for file in ["edge.yaml", "connector.yaml"] {
        let yaml = read(&format!("deploy/kubernetes/{file}"));
        for probe in ["readinessProbe:", "livenessProbe:"] {
            let body = yaml
                .split(probe)
                .nth(1)
                .unwrap_or_else(|| panic!("{file}: no {probe}"));
            let body = &body[..body.find("Probe:").unwrap_or(body.len())];
            assert!(
                body.contains("timeoutSeconds: 2"),
                "{file} {probe} states its timeout"
            );
        }
        let policy = yaml
            .split("kind: NetworkPolicy")
            .nth(1)
            .unwrap_or_else(|| panic!("{file}: no NetworkPolicy"));
        let admin_rule = policy
            .split("- from:")
            .nth(1)
            .unwrap_or_else(|| panic!("{file}: admin is not restricted"));
        assert!(
            admin_rule.contains("kubernetes.io/metadata.name: monitoring")
                && admin_rule.contains("port: admin"),
            "{file}: {admin_rule}"
        );
        // Nothing else opens the admin port.
        assert_eq!(policy.matches("port: admin").count(), 1, "{file}");
    }
}
