//! `benches/side_by_side.sh --short` runs with the binary under test, so
//! the side-by-side against haproxy cannot rot: the script exits 0 and its
//! table has every row, each with a number in every column (the stampede
//! rows, lifeboat only: numbers for lifeboat, `n/a` for haproxy and the
//! ratios). What the numbers are is never asserted, only that they exist.
//!
//! Needs haproxy, iperf3, nginx and wrk (Debian packages of those names):
//! skipped without them, a failure when `LIFEBOAT_REQUIRE_BENCHTOOLS` is
//! set, as `.ci/run` does after installing them.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOOLS: [&str; 4] = ["haproxy", "iperf3", "nginx", "wrk"];

/// The header, then what each row's label names, in order.
const HEADER: [&str; 7] = [
    "load",
    "haproxy",
    "lifeboat QUIC",
    "lifeboat TLS",
    "QUIC / haproxy",
    "TLS / haproxy",
    "floor: 3 plain TCP relays",
];
const ROWS: [&str; 9] = [
    "iperf3 1 stream",
    "iperf3 8 streams",
    "wrk -c32",
    "wrk -c1",
    "added",
    "at the edge / haproxy hop 2",
    "the chain's 3 processes",
    "all served",
    "tunnels up per second",
];

/// The script's own bound is well under a minute; this one only stops a
/// run that hangs.
const DEADLINE: Duration = Duration::from_secs(300);

/// On the PATH, or where Debian puts daemons (`/usr/sbin` is not on every
/// user's PATH; the script looks there too).
fn found(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(name).is_file())
}

fn kill_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{}", child.id())])
        .status();
}

#[test]
fn side_by_side_short_prints_every_figure() {
    let missing: Vec<&str> = TOOLS.into_iter().filter(|t| !found(t)).collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("LIFEBOAT_REQUIRE_BENCHTOOLS").is_none(),
            "{missing:?} not found and LIFEBOAT_REQUIRE_BENCHTOOLS is set: apt-get install -y {}",
            missing.join(" ")
        );
        eprintln!(
            "SKIPPED: {missing:?} not found (apt-get install -y {}; .ci/run does)",
            missing.join(" ")
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/side_by_side.sh");
    let started = Instant::now();
    // Its own process group: a run that hangs is stopped with everything it started.
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("--short")
        .arg(env!("CARGO_BIN_EXE_lifeboat"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run bash benches/side_by_side.sh");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the script") {
            break Some(s);
        }
        if started.elapsed() > DEADLINE {
            kill_group(&child, "-TERM");
            std::thread::sleep(Duration::from_secs(10));
            kill_group(&child, "-KILL");
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (out, err) = (out.join().expect("stdout"), err.join().expect("stderr"));
    println!("{out}\n{err}");
    println!(
        "side_by_side.sh --short took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let status = status.unwrap_or_else(|| panic!("side_by_side.sh ran over {DEADLINE:?}"));
    assert!(status.success(), "side_by_side.sh --short: {status}");
    check_table(&out);
}

/// Every row, in order, each cell a finite number (or `n/a` where the row
/// has no haproxy figure, and in the floor's column for memory and the
/// stampede).
fn check_table(out: &str) {
    let mut lines = out.lines().filter(|l| l.starts_with('|')).map(cells);
    assert_eq!(
        lines.next().as_deref(),
        Some(&HEADER.map(String::from)[..]),
        "table header"
    );
    let sep = lines.next().expect("the table's separator line");
    assert!(
        sep.iter().all(|c| c.starts_with("---")),
        "separator line: {sep:?}"
    );
    let rows: Vec<Vec<String>> = lines.collect();
    assert_eq!(rows.len(), ROWS.len(), "rows: {rows:?}");
    for (row, want) in rows.iter().zip(ROWS) {
        assert_eq!(row.len(), HEADER.len(), "cells in {row:?}");
        assert!(
            row[0].contains(want),
            "row {:?} should name {want:?}",
            row[0]
        );
        let lifeboat_only = row[0].contains("(lifeboat only)");
        let no_floor = lifeboat_only || row[0].contains("RSS per idle");
        for (i, cell) in row.iter().enumerate().skip(1) {
            if (lifeboat_only && matches!(i, 1 | 4 | 5)) || (no_floor && i == 6) {
                assert_eq!(cell, "n/a", "{} / {}", row[0], HEADER[i]);
            } else {
                let v: Option<f64> = cell.parse().ok();
                assert!(
                    v.is_some_and(f64::is_finite),
                    "{} / {}: {cell:?} is not a number",
                    row[0],
                    HEADER[i]
                );
            }
        }
    }
    let only = rows
        .iter()
        .filter(|r| r[0].contains("(lifeboat only)"))
        .count();
    assert_eq!(only, 2, "the two stampede rows are lifeboat only");
}

/// `| a | b |` -> `["a", "b"]`.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

#[test]
fn table_check_fails_on_a_missing_number() {
    let header = "| load | haproxy | lifeboat QUIC | lifeboat TLS | QUIC / haproxy | TLS / haproxy | floor: 3 plain TCP relays |\n|---|---|---|---|---|---|---|\n";
    let row = |label: &str, cells: &str| format!("| {label} | {cells} |\n");
    let good: String = ROWS
        .iter()
        .map(|r| {
            if r.contains("served") || r.contains("tunnels up") {
                row(
                    &format!("{r} (lifeboat only)"),
                    "n/a | 1.0 | 2 | n/a | n/a | n/a",
                )
            } else if r.contains("edge") || r.contains("processes") {
                row(
                    &format!("RSS per idle connection, {r}"),
                    "1.5 | 2 | 3 | 1.33 | 2.00 | n/a",
                )
            } else {
                row(r, "1.5 | 2 | 3 | 1.33 | 2.00 | 0.5")
            }
        })
        .collect();
    check_table(&format!("{header}{good}"));
    let broken = good.replacen("| 2 |", "| - |", 1);
    assert!(std::panic::catch_unwind(|| check_table(&format!("{header}{broken}"))).is_err());
    let short: String = good.lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert!(std::panic::catch_unwind(|| check_table(&format!("{header}{short}"))).is_err());
}
