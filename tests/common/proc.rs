//! Harness for tests of the real binary (`env!("CARGO_BIN_EXE_lifeboat")`):
//! a running process whose stderr lines are collected, the addresses of its
//! `listening <kind> ADDR` lines, signals, and `GET` on its admin listener.
//! On drop the process is continued (if stopped) and killed, and its log is
//! printed if the test failed. [`run`] runs it to the end instead.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

pub const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");

/// `lifeboat ARGS` in `cwd` run to completion (at most 60 s).
pub async fn run(args: &[&str], cwd: &Path) -> Output {
    let child = command(args, cwd)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn lifeboat");
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("lifeboat {args:?} still running after 60 s"))
        .expect("wait lifeboat")
}

/// Status, stdout and stderr of a finished run, for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `lifeboat ARGS` in `cwd`: no colours, the default log level, stderr
/// piped, killed when dropped.
fn command(args: &[&str], cwd: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// A CA for `dr.example.com` in `dir` (ten years) with `edge1` (edge),
/// `dc1-a` (connector of `dc1-dr`) and `alice` (client).
pub fn pki(dir: &Path) {
    use lifeboat::pki::IssueOptions;
    use lifeboat::trust::Role;
    lifeboat::pki::init(dir, "dr.example.com", 3650).expect("pki init");
    let mut connector = IssueOptions::new(dir, Role::Connector, "dc1-a");
    connector.group = Some("dc1-dr".into());
    for o in [
        IssueOptions::new(dir, Role::Edge, "edge1"),
        connector,
        IssueOptions::new(dir, Role::Client, "alice"),
    ] {
        lifeboat::pki::issue(&o).expect("pki issue");
    }
}

/// A running `lifeboat` process.
pub struct Proc {
    pub child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// `lifeboat ARGS` in `cwd`, logs at the default level, no colours.
    pub fn spawn(args: &[&str], cwd: &Path) -> Self {
        let mut child = command(args, cwd).spawn().expect("spawn lifeboat");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reader = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            while let Ok(Some(l)) = reader.next_line().await {
                sink.lock().expect("lines").push(l);
            }
        });
        Self { child, lines }
    }

    /// `lifeboat ROLE -c CONFIG` (a role started as a user would).
    pub fn role(role: &str, config: &Path) -> Self {
        let config = config.to_str().expect("a UTF-8 config path");
        Self::spawn(&[role, "-c", config], Path::new("."))
    }

    /// Wait up to `within` for the process to exit; its exit status.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => panic!("still running after {within:?}:\n{}", self.log()),
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// Log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().expect("lines");
        lines.iter().filter(|l| l.contains(needle)).count()
    }

    /// The address of the first `listening <kind> ADDR` line, waiting up to 20 s.
    pub async fn listening(&self, kind: &str) -> SocketAddr {
        let needle = format!("listening {kind} ");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.lines.lock().expect("lines").iter().find_map(|l| {
                let rest = &l[l.find(&needle)? + needle.len()..];
                rest.split_whitespace().next()?.parse().ok()
            });
            if let Some(a) = found {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "no `{needle}ADDR` line in 20 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill SIG PID`, e.g. `-TERM`.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("pid").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGTERM, then wait (up to 10 s) for exit 0.
    pub async fn stop(mut self) {
        self.signal("-TERM");
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("still running 10 s after SIGTERM:\n{}", self.log()))
            .expect("wait");
        assert_eq!(status.code(), Some(0), "{}", self.log());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
            let _ = self.child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!("--- lifeboat stderr\n{}", self.log());
        }
    }
}

/// `GET path` on an admin listener, `Connection: close`: the whole answer
/// (status line, headers, body), within 10 s.
pub async fn get(admin: SocketAddr, path: &str) -> String {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(admin).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: lifeboat\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&raw).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .unwrap_or_else(|_| panic!("GET {path} on {admin}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("GET {path} on {admin}: {e}"))
}
