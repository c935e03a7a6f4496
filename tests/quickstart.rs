//! README.md's quick start, run as written: its config blocks become the
//! files they name, its shell blocks one bash script (`set -e`), with the
//! debug `lifeboat` first on the PATH, in an empty folder. Where the
//! kernel allows it (`unshare -rn`), in a network namespace of its own, so
//! the section's fixed loopback ports meet no other test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The quick start's shell text and its `(file name, text)` configs.
fn quick_start(readme: &str) -> (String, Vec<(String, String)>) {
    let start = readme
        .find("\n## Quick start\n")
        .expect("a Quick start section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let (mut script, mut files) = (String::new(), Vec::new());
    let mut last_line = "";
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let mut body = String::new();
            for l in lines.by_ref() {
                if l.starts_with("```") {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            match lang {
                "sh" => script.push_str(&body),
                "toml" => {
                    let name = last_line
                        .strip_prefix('`')
                        .and_then(|l| l.strip_suffix("`:"))
                        .unwrap_or_else(|| panic!("a toml block after {last_line:?}"));
                    files.push((name.to_owned(), body));
                }
                other => panic!("unexpected block ```{other} in the quick start"),
            }
        } else if !line.trim().is_empty() {
            last_line = line;
        }
    }
    (script, files)
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_readme_quick_start_works_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let (script, files) = quick_start(&readme);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["edge.toml", "connector.toml", "client.toml"]);
    assert!(script.contains("lifeboat edge") && script.contains("kill $(jobs -p)"));
    for tool in ["bash", "curl", "python3"] {
        assert!(has(tool), "the quick start needs `{tool}`");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).expect("write config");
    }
    std::fs::write(dir.path().join("quickstart.sh"), &script).expect("write script");
    let bin = Path::new(env!("CARGO_BIN_EXE_lifeboat"))
        .parent()
        .expect("bin dir");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let isolated = Command::new("unshare")
        .args(["-rn", "sh", "-c", "ip link set lo up"])
        .status()
        .is_ok_and(|s| s.success());
    let run = "set -e; bash -e quickstart.sh";
    let mut cmd = if isolated {
        let mut c = Command::new("unshare");
        c.args(["-rn", "sh", "-c", &format!("ip link set lo up && {run}")]);
        c
    } else {
        eprintln!("note: no network namespace; the quick start's ports are the machine's");
        let mut c = Command::new("sh");
        c.args(["-c", run]);
        c
    };
    use std::os::unix::process::CommandExt as _;
    let mut child = cmd
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the quick start");
    let pgid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever happened, nothing it started outlives the test.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let out = child.wait_with_output().expect("output");
    let logs: String = ["edge.log", "connector.log", "client.log", "app.log"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
            format!("--- {f}\n{text}")
        })
        .collect();
    let report = format!(
        "status {status:?}\nstdout:\n{}\nstderr:\n{}\n{logs}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the quick start failed:\n{report}"
    );
    // Every curl through lifeboat printed the application's page, exactly.
    let curls = script
        .lines()
        .filter(|l| l.contains("http://payroll.corp.example:8080/") || l.contains(":8081/"))
        .count();
    assert_eq!(curls, 4, "{script}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pages = stdout
        .lines()
        .filter(|l| *l == "hello from payroll")
        .count();
    assert_eq!(pages, curls, "{report}");
    // The edge went on in DR mode and logs carry no terminal colour.
    let edge_log = std::fs::read_to_string(dir.path().join("edge.log")).unwrap_or_default();
    assert!(edge_log.contains("DR mode is activated!"), "{report}");
    assert!(!logs.contains('\u{1b}'), "escape codes in logs:\n{report}");
}
