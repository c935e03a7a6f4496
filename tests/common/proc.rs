//! A `lifeboat` role as a real process: its stderr collected, its
//! `listening <kind> ADDR` lines read back, signals sent with `kill`. On drop
//! it is continued (if stopped) and killed, and its log printed if the test
//! failed.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

pub const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");

pub struct RoleProc {
    role: String,
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

/// The edge is the role most tests run as a process.
pub type EdgeProc = RoleProc;

impl RoleProc {
    /// `lifeboat edge -c CONFIG`.
    pub fn spawn(config: &std::path::Path) -> Self {
        Self::spawn_role("edge", config)
    }

    /// `lifeboat ROLE -c CONFIG`.
    pub fn spawn_role(role: &str, config: &std::path::Path) -> Self {
        let mut child = tokio::process::Command::new(BIN)
            .arg(role)
            .arg("-c")
            .arg(config)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn lifeboat {role}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reader = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink = Arc::clone(&lines);
        tokio::spawn(async move {
            while let Ok(Some(l)) = reader.next_line().await {
                sink.lock().expect("lines").push(l);
            }
        });
        Self {
            role: role.to_string(),
            child,
            lines,
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// The address of its `listening <kind> ADDR` line, waiting up to 20 s.
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

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("pid").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// Wait up to `within` for the process to exit; its exit status.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => panic!(
                "lifeboat {} still running after {within:?}:\n{}",
                self.role,
                self.log()
            ),
        }
    }
}

impl Drop for RoleProc {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // A stopped process is continued first, then killed.
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
            let _ = self.child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!("--- lifeboat {} stderr\n{}", self.role, self.log());
        }
    }
}
