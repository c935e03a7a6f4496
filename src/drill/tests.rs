use super::plan::first_ports;
use super::*;

fn outcome(target: &str, segment: Option<&str>, result: &str) -> Outcome {
    Outcome {
        target: Target {
            dest: Dest::parse(target).expect("literal"),
            segment: segment.map(Into::into),
        },
        edge: "203.0.113.10:443".into(),
        transport: Some("quic"),
        handshake: Some(Duration::from_millis(3)),
        setup: (result == "ok").then(|| Duration::from_micros(1500)),
        result: result.into(),
        detail: if result == "ok" { "" } else { "say \"why\"\n" }.into(),
    }
}

#[test]
fn first_ports_takes_the_low_end_of_ranges_once() {
    let e = ["443", "8000-8080", "443", "x", "0"].map(String::from);
    assert_eq!(first_ports(&e), vec![443, 8000]);
}

#[test]
fn report_passes_only_when_every_flow_did_and_there_was_one() {
    assert!(!Report::default().passed());
    let mut r = Report {
        outcomes: vec![outcome("a.example:443", Some("a"), "ok")],
    };
    assert!(r.passed());
    r.outcomes
        .push(outcome("b.example:443", None, "no-connector"));
    assert!(!r.passed());
}

#[test]
fn renderings_carry_every_column_and_escape_json() {
    let r = Report {
        outcomes: vec![
            outcome("a.example:443", Some("payroll"), "ok"),
            outcome("b.example:8443", None, "not-dr-segment"),
        ],
    };
    let t = render_table(&r);
    assert!(t.starts_with("TARGET"), "{t}");
    assert!(t.contains("a.example:443") && t.contains("payroll") && t.contains("1.5 ms"));
    assert!(t.contains("not-dr-segment"));
    assert!(t.contains("drill FAILED: 1/2"), "{t}");
    let j = render_json(&r);
    assert!(j.starts_with("{\"passed\":false,\"results\":[{"), "{j}");
    assert!(j.contains("\"segment\":null") && j.contains("\"setup_ms\":1.500"));
    assert!(j.contains(r#""detail":"say \"why\"\n""#), "{j}");
    let p = render_textfile(&r, 1_700_000_000);
    assert!(p.contains("lifeboat_drill_success 0\n"));
    assert!(p.contains("lifeboat_drill_flows{segment=\"payroll\",result=\"ok\"} 1\n"));
    assert!(p.contains("lifeboat_drill_flows{segment=\"-\",result=\"not-dr-segment\"} 1\n"));
    assert!(!p.contains("a.example"), "no target in a label: {p}");
}
