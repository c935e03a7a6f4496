//! The drill report for people (a table), for machines (JSON) and for
//! node_exporter's textfile collector (Prometheus text).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::Report;

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
    )
}

/// The report as a table, one line per flow, then a summary line.
pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let w_target = r
        .outcomes
        .iter()
        .map(|o| o.target.dest.to_string().len())
        .max()
        .unwrap_or(6)
        .max(6);
    let w_edge = r
        .outcomes
        .iter()
        .map(|o| o.edge.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:<w_target$}  {:<16}  {:<w_edge$}  {:<9}  {:>10}  RESULT",
        "TARGET", "SEGMENT", "EDGE", "TRANSPORT", "SETUP"
    );
    for o in &r.outcomes {
        let _ = write!(
            out,
            "{:<w_target$}  {:<16}  {:<w_edge$}  {:<9}  {:>10}  {}",
            o.target.dest.to_string(),
            o.target.segment.as_deref().unwrap_or("-"),
            o.edge,
            o.transport.unwrap_or("-"),
            ms(o.setup),
            o.result
        );
        if !o.detail.is_empty() {
            let _ = write!(out, " ({})", o.detail);
        }
        out.push('\n');
    }
    let ok = r.outcomes.iter().filter(|o| o.passed()).count();
    let _ = writeln!(
        out,
        "drill {}: {ok}/{} flows established",
        if r.passed() { "passed" } else { "FAILED" },
        r.outcomes.len()
    );
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "null".into(),
        |d| format!("{:.3}", d.as_secs_f64() * 1e3),
    )
}

/// The report as one JSON object: `passed` and one entry per flow.
pub fn render_json(r: &Report) -> String {
    let mut out = format!("{{\"passed\":{},\"results\":[", r.passed());
    for (i, o) in r.outcomes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"target\":{},\"segment\":{},\"edge\":{},\"transport\":{},\"handshake_ms\":{},\"setup_ms\":{},\"result\":{},\"detail\":{}}}",
            json_str(&o.target.dest.to_string()),
            o.target.segment.as_deref().map_or_else(|| "null".into(), json_str),
            json_str(&o.edge),
            o.transport.map_or_else(|| "null".into(), json_str),
            json_ms(o.handshake),
            json_ms(o.setup),
            json_str(&o.result),
            json_str(&o.detail),
        );
    }
    out.push_str("]}\n");
    out
}

/// The report as Prometheus text for node_exporter's textfile collector.
/// Labels are the result word and the segment (config names), never a
/// target or an address.
pub fn render_textfile(r: &Report, now_unix: u64) -> String {
    let mut out = String::new();
    out.push_str("# HELP lifeboat_drill_success 1 when every flow of the last drill was established\n# TYPE lifeboat_drill_success gauge\n");
    let _ = writeln!(out, "lifeboat_drill_success {}", u8::from(r.passed()));
    out.push_str("# HELP lifeboat_drill_last_run_timestamp_seconds Unix time of the last drill\n# TYPE lifeboat_drill_last_run_timestamp_seconds gauge\n");
    let _ = writeln!(out, "lifeboat_drill_last_run_timestamp_seconds {now_unix}");
    out.push_str("# HELP lifeboat_drill_flows Flows of the last drill by segment and result\n# TYPE lifeboat_drill_flows gauge\n");
    let mut counts: Vec<(String, String, u64)> = Vec::new();
    for o in &r.outcomes {
        let seg = o.target.segment.clone().unwrap_or_else(|| "-".into());
        match counts
            .iter_mut()
            .find(|(s, res, _)| *s == seg && *res == o.result)
        {
            Some(c) => c.2 += 1,
            None => counts.push((seg, o.result.clone(), 1)),
        }
    }
    counts.sort();
    for (seg, res, n) in counts {
        let _ = writeln!(
            out,
            "lifeboat_drill_flows{{segment={},result={}}} {n}",
            json_str(&seg),
            json_str(&res)
        );
    }
    out
}

pub(super) fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.write_all(text.as_bytes())?;
    // node_exporter runs as another user: the file must be world-readable.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path)
        .map_err(|e| anyhow::Error::from(e.error))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
