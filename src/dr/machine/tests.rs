//! The mode machine with explicit instants: no runtime, no sleeps.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use super::*;
use crate::dr::record::{encode, Kind, Spec};

const T0: u64 = 1_700_000_000;
const S: Duration = Duration::from_secs(1);

fn start() -> Now {
    Now {
        at: Instant::now(),
        unix: Duration::from_secs(T0),
    }
}

fn settings(key: Option<&SigningKey>) -> Settings {
    Settings {
        poll_interval: Duration::from_secs(30),
        key: key.map(SigningKey::verifying_key),
    }
}

fn found(text: &str, ttl: u64) -> Lookup {
    Lookup::Found {
        texts: vec![text.into()],
        ttl: Some(Duration::from_secs(ttl)),
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn signed(k: &SigningKey, mode: DrMode, start: u64, end: Option<u64>) -> String {
    let spec = Spec {
        mode,
        kind: Kind::Zpa,
        start: Some(start),
        end,
    };
    encode(&spec, Some(k))
}

fn tr(from: DrMode, to: DrMode) -> Option<Transition> {
    Some(Transition { from, to })
}

#[test]
fn off_test_on_off() {
    let now = start();
    let mut m = Machine::new(settings(None), now);
    assert_eq!(m.mode(), DrMode::Off);
    assert!(m.poll_due(now.at), "the first lookup is immediate");

    let o = m.handle_lookup(now, found("v=1; b=test; k=zpa", 30));
    assert_eq!(o.result, Some(LookupResult::Ok));
    assert_eq!(o.transition, tr(DrMode::Off, DrMode::Test));
    assert_eq!(o.persist.as_deref(), Some("v=1; b=test; k=zpa"));
    assert!(o.changed.is_some());

    let now = now.after(30 * S);
    let o = m.handle_lookup(now, found("v=1; b=test; k=zpa", 30));
    assert_eq!(o.transition, None);
    assert_eq!(o.persist, None, "the same record is not written again");
    assert_eq!(o.changed, None, "the same condition is not logged again");

    let o = m.handle_lookup(now.after(30 * S), found("v=1; b=on; k=all", 30));
    assert_eq!(o.transition, tr(DrMode::Test, DrMode::On));
    let o = m.handle_lookup(now.after(60 * S), found("v=1 b=off k=zpa", 30));
    assert_eq!(o.transition, tr(DrMode::On, DrMode::Off));
    assert_eq!(m.mode(), DrMode::Off);
}

#[test]
fn failures_never_change_the_mode() {
    let mut now = start();
    let mut m = Machine::new(settings(None), now);
    m.handle_lookup(now, found("v=1;b=on;k=zpa", 30));
    assert_eq!(m.mode(), DrMode::On);
    let cases = [
        (Lookup::Timeout, LookupResult::Timeout),
        (Lookup::ServFail, LookupResult::ServFail),
        (Lookup::NxDomain, LookupResult::NxDomain),
        (Lookup::NoData, LookupResult::NxDomain),
        (Lookup::Failed("refused".into()), LookupResult::Error),
        (found("v=2;b=off;k=zpa", 30), LookupResult::Malformed),
        (found("v=1;b=maybe", 30), LookupResult::Malformed),
        (found("hello world", 30), LookupResult::Malformed),
        (found("v=1;b=off;k=zia", 30), LookupResult::Ignored),
        (
            Lookup::Found {
                texts: vec!["v=1;b=off".into(), "v=1;b=test".into()],
                ttl: None,
            },
            LookupResult::Malformed,
        ),
        (
            Lookup::Found {
                texts: vec![],
                ttl: None,
            },
            LookupResult::Malformed,
        ),
    ];
    for (lookup, result) in cases {
        now = now.after(30 * S);
        let o = m.handle_lookup(now, lookup.clone());
        assert_eq!(o.result, Some(result), "{lookup:?}");
        assert_eq!(o.transition, None, "{lookup:?}");
        assert!(o.changed.is_some(), "{lookup:?} is a new condition");
        // The same failure again is counted but not logged again.
        now = now.after(30 * S);
        let o = m.handle_lookup(now, lookup.clone());
        assert_eq!(o.result, Some(result));
        assert_eq!(o.changed, None, "{lookup:?} logged twice");
        assert_eq!(m.mode(), DrMode::On);
    }
}

#[test]
fn other_txt_records_at_the_name_are_skipped() {
    let now = start();
    let mut m = Machine::new(settings(None), now);
    let o = m.handle_lookup(
        now,
        Lookup::Found {
            texts: vec!["google-site-verification=abc".into(), "v=1;b=on".into()],
            ttl: None,
        },
    );
    assert_eq!(o.transition, tr(DrMode::Off, DrMode::On));
}

#[test]
fn polling_follows_ttl_with_a_one_second_floor() {
    let now = start();
    let mut m = Machine::new(settings(None), now);
    m.handle_lookup(now, found("v=1;b=off", 300));
    assert_eq!(
        m.poll_timeout(),
        now.at + 30 * S,
        "poll_interval caps a long TTL"
    );
    m.handle_lookup(now, found("v=1;b=off", 5));
    assert_eq!(
        m.poll_timeout(),
        now.at + 5 * S,
        "a shorter TTL polls sooner"
    );
    m.handle_lookup(now, found("v=1;b=off", 0));
    assert_eq!(
        m.poll_timeout(),
        now.at + S,
        "never more than once a second"
    );
    m.handle_lookup(now, Lookup::Timeout);
    assert_eq!(m.poll_timeout(), now.at + 30 * S);
    assert!(!m.poll_due(now.at + 29 * S));
    assert!(m.poll_due(now.at + 30 * S));

    let mut fast = Machine::new(
        Settings {
            poll_interval: Duration::from_millis(10),
            key: None,
        },
        now,
    );
    fast.handle_lookup(now, Lookup::ServFail);
    assert_eq!(
        fast.poll_timeout(),
        now.at + S,
        "the floor holds for poll_interval too"
    );
}

#[test]
fn start_in_the_future_switches_when_it_arrives() {
    let now = start();
    let mut m = Machine::new(settings(None), now);
    let text = format!("v=1; b=on; k=zpa; t={}", T0 + 10);
    let o = m.handle_lookup(now, found(&text, 30));
    assert_eq!(o.result, Some(LookupResult::Ok));
    assert_eq!(o.transition, None);
    assert_eq!(
        o.persist, None,
        "a scheduled record is not yet the accepted one"
    );
    assert!(matches!(o.changed, Some(Condition::Scheduled { start, .. }) if start == T0 + 10));
    assert_eq!(
        m.poll_timeout(),
        now.at + 10 * S,
        "wakes at t, before the next poll"
    );

    assert_eq!(m.handle_timeout(now.after(9 * S)).transition, None);
    let o = m.handle_timeout(now.after(10 * S));
    assert_eq!(o.transition, tr(DrMode::Off, DrMode::On));
    assert_eq!(o.persist.as_deref(), Some(text.as_str()));
    assert_eq!(m.poll_timeout(), now.at + 30 * S);
}

#[test]
fn a_newer_record_replaces_a_scheduled_one() {
    let now = start();
    let mut m = Machine::new(settings(None), now);
    m.handle_lookup(now, found(&format!("v=1;b=on;t={}", T0 + 60), 30));
    m.handle_lookup(now.after(30 * S), found("v=1;b=off", 30));
    assert_eq!(m.handle_timeout(now.after(61 * S)).transition, None);
    assert_eq!(m.mode(), DrMode::Off);
}

#[test]
fn end_means_off_without_a_lookup() {
    let now = start();
    let mut m = Machine::new(settings(None), now);
    let o = m.handle_lookup(now, found(&format!("v=1;b=on;k=zpa;x={}", T0 + 5), 30));
    assert_eq!(o.transition, tr(DrMode::Off, DrMode::On));
    assert_eq!(m.poll_timeout(), now.at + 5 * S, "wakes at x");
    assert_eq!(m.poll_edge(), Some(now.at + 5 * S));
    let o = m.handle_timeout(now.after(5 * S));
    assert_eq!(o.transition, tr(DrMode::On, DrMode::Off));
    assert_eq!(m.poll_timeout(), now.at + 30 * S, "x is behind us");
    assert_eq!(m.poll_edge(), None);

    // A record already past its end means off.
    let mut m = Machine::new(settings(None), now);
    m.handle_lookup(now, found("v=1;b=on", 30));
    let o = m.handle_lookup(now, found(&format!("v=1;b=on;x={}", T0 - 1), 30));
    assert_eq!(o.transition, tr(DrMode::On, DrMode::Off));
}

#[test]
fn signed_records() {
    let k = key(1);
    let now = start();
    let mut m = Machine::new(settings(Some(&k)), now);
    let ignored = |o: &Output| o.result == Some(LookupResult::Ignored) && o.transition.is_none();

    let o = m.handle_lookup(now, found("v=1;b=on;k=zpa", 1));
    assert!(ignored(&o));
    assert_eq!(o.changed, Some(Condition::Ignored(Ignored::Unsigned)));

    let other = signed(&key(2), DrMode::On, T0, None);
    let o = m.handle_lookup(now, found(&other, 1));
    assert!(ignored(&o));
    assert_eq!(
        o.changed,
        Some(Condition::Ignored(Ignored::BadSignature(
            SignatureError::Invalid
        )))
    );

    let no_t = encode(
        &Spec {
            mode: DrMode::On,
            kind: Kind::Zpa,
            start: None,
            end: None,
        },
        Some(&k),
    );
    let o = m.handle_lookup(now, found(&no_t, 1));
    assert_eq!(o.changed, Some(Condition::Ignored(Ignored::NoStart)));

    let old_test = signed(&k, DrMode::Test, T0 - 100, None);
    let on = signed(&k, DrMode::On, T0 - 10, None);
    let o = m.handle_lookup(now, found(&on, 1));
    assert_eq!(o.transition, tr(DrMode::Off, DrMode::On));
    assert_eq!(o.persist.as_deref(), Some(on.as_str()));
    // The same record again is fine (t equal, not older).
    assert_eq!(
        m.handle_lookup(now, found(&on, 1)).result,
        Some(LookupResult::Ok)
    );
    // An older one is a replay.
    let o = m.handle_lookup(now, found(&old_test, 1));
    assert!(ignored(&o));
    assert_eq!(
        o.changed,
        Some(Condition::Ignored(Ignored::Replayed {
            t: T0 - 100,
            last: T0 - 10
        }))
    );
    assert_eq!(m.mode(), DrMode::On);
    // A newer one switches.
    let off = signed(&k, DrMode::Off, T0, None);
    assert_eq!(
        m.handle_lookup(now, found(&off, 1)).transition,
        tr(DrMode::On, DrMode::Off)
    );
}

#[test]
fn restore_then_replay_is_still_a_replay() {
    let k = key(1);
    let now = start();
    let on = signed(&k, DrMode::On, T0 - 10, None);
    let mut m = Machine::new(settings(Some(&k)), now);
    assert_eq!(m.restore(now, &on), Ok(tr(DrMode::Off, DrMode::On)));
    assert_eq!(m.mode(), DrMode::On);
    let old_off = signed(&k, DrMode::Off, T0 - 20, None);
    let o = m.handle_lookup(now, found(&old_off, 1));
    assert_eq!(o.result, Some(LookupResult::Ignored));
    assert_eq!(m.mode(), DrMode::On);
    // DNS down after a restart: the restored mode holds.
    assert_eq!(
        m.handle_lookup(now.after(S), Lookup::Timeout).transition,
        None
    );
    assert_eq!(m.mode(), DrMode::On);
}

#[test]
fn restore_checks_the_record() {
    let now = start();
    let mut m = Machine::new(settings(Some(&key(1))), now);
    assert!(matches!(
        m.restore(now, "v=1;b=on"),
        Err(RestoreError::Ignored(Ignored::Unsigned))
    ));
    assert!(matches!(
        m.restore(now, "v=9"),
        Err(RestoreError::Malformed(_))
    ));
    assert_eq!(m.mode(), DrMode::Off);
    // Restored past its end: off.
    let mut m = Machine::new(settings(None), now);
    assert_eq!(m.restore(now, &format!("v=1;b=on;x={}", T0 - 1)), Ok(None));
    assert_eq!(m.mode(), DrMode::Off);
}

/// `t=`/`x=` values at the edges of what the parser takes (`u64`), and of
/// what `Instant + Duration` can represent.
const ABSURD: [u64; 4] = [u64::MAX, i64::MAX as u64, 1 << 63, (1 << 63) - 1];

/// Drive the machine's every time path at `now` and far beyond.
fn exercise_clock(m: &mut Machine, now: Now) {
    let _ = m.poll_timeout();
    let _ = m.poll_edge();
    for d in [S, HORIZON, Duration::MAX] {
        let _ = m.handle_timeout(now.after(d));
        let _ = m.poll_timeout();
    }
}

#[test]
fn start_at_zero_and_now_applies_at_once() {
    for t in [0, T0] {
        let now = start();
        let mut m = Machine::new(settings(None), now);
        let o = m.handle_lookup(now, found(&format!("v=1; b=on; k=zpa; t={t}"), 30));
        assert_eq!(o.transition, tr(DrMode::Off, DrMode::On), "t={t}");
        assert_eq!(
            m.poll_timeout(),
            now.at + 30 * S,
            "t={t}: nothing scheduled"
        );
    }
}

#[test]
fn end_at_zero_and_now_means_off() {
    for x in [0, T0] {
        let now = start();
        let mut m = Machine::new(settings(None), now);
        m.handle_lookup(now, found("v=1; b=on; k=zpa", 30));
        let o = m.handle_lookup(now, found(&format!("v=1; b=on; k=zpa; x={x}"), 30));
        assert_eq!(o.transition, tr(DrMode::On, DrMode::Off), "x={x}");
        assert_eq!(m.poll_edge(), None, "x={x} is behind us");
    }
}

#[test]
fn absurd_start_is_scheduled_forever_and_a_later_record_still_counts() {
    for t in ABSURD {
        let now = start();
        let mut m = Machine::new(settings(None), now);
        m.handle_lookup(now, found("v=1; b=on; k=zpa", 30));
        let text = format!("v=1; b=off; k=zpa; t={t}");
        let o = m.handle_lookup(now.after(S), found(&text, 30));
        assert_eq!(o.result, Some(LookupResult::Ok), "t={t}");
        assert!(
            matches!(o.changed, Some(Condition::Scheduled { start, .. }) if start == t),
            "t={t}: {o:?}"
        );
        assert_eq!(m.poll_edge(), None, "t={t}: beyond the horizon is never");
        assert_eq!(m.poll_timeout(), now.at + 31 * S, "t={t}: the next poll");
        exercise_clock(&mut m, now);
        assert_eq!(m.mode(), DrMode::On, "t={t} never arrives");
        // The machine still follows the name.
        let o = m.handle_lookup(now.after(60 * S), found("v=1; b=off; k=zpa", 30));
        assert_eq!(o.transition, tr(DrMode::On, DrMode::Off), "t={t}");
    }
}

#[test]
fn absurd_end_never_comes_and_a_later_record_still_counts() {
    for x in ABSURD {
        let now = start();
        let mut m = Machine::new(settings(None), now);
        let text = format!("v=1; b=on; k=zpa; x={x}");
        let o = m.handle_lookup(now, found(&text, 30));
        assert_eq!(o.transition, tr(DrMode::Off, DrMode::On), "x={x}");
        assert_eq!(o.persist.as_deref(), Some(text.as_str()));
        assert_eq!(m.poll_edge(), None, "x={x}: beyond the horizon is never");
        assert_eq!(m.poll_timeout(), now.at + 30 * S, "x={x}: the next poll");
        let o = m.handle_timeout(now.after(HORIZON));
        assert_eq!(o.transition, None, "x={x}");
        let o = m.handle_lookup(now.after(60 * S), found("v=1; b=off; k=zpa", 30));
        assert_eq!(o.transition, tr(DrMode::On, DrMode::Off), "x={x}");
        exercise_clock(&mut m, now);
    }
}

#[test]
fn absurd_times_in_signed_records() {
    let k = key(1);
    for v in ABSURD {
        let now = start();
        let mut m = Machine::new(settings(Some(&k)), now);
        m.handle_lookup(now, found(&signed(&k, DrMode::On, T0 - 10, Some(v)), 30));
        assert_eq!(m.mode(), DrMode::On);
        exercise_clock(&mut m, now);
        // A signed b=off starting at v is scheduled and never arrives ...
        let o = m.handle_lookup(now, found(&signed(&k, DrMode::Off, v, None), 30));
        assert_eq!(o.result, Some(LookupResult::Ok));
        exercise_clock(&mut m, now);
        assert_eq!(m.mode(), DrMode::On, "t={v}");
        // ... and did not raise the replay floor: a current record counts.
        let o = m.handle_lookup(now, found(&signed(&k, DrMode::Off, T0, None), 30));
        assert_eq!(o.transition, tr(DrMode::On, DrMode::Off), "t={v}");
    }
}

#[test]
fn a_state_file_with_absurd_times_restores_without_panic() {
    for v in ABSURD {
        for text in [
            format!("v=1; b=on; k=zpa; x={v}"),
            format!("v=1; b=on; k=zpa; t=0; x={v}"),
        ] {
            let now = start();
            let mut m = Machine::new(settings(None), now);
            assert_eq!(
                m.restore(now, &text),
                Ok(tr(DrMode::Off, DrMode::On)),
                "{text}"
            );
            assert_eq!(m.poll_edge(), None, "{text}");
            assert_eq!(m.poll_timeout(), now.at, "{text}: a lookup at once");
            exercise_clock(&mut m, now);
            assert_eq!(m.mode(), DrMode::On, "{text}");
            let o = m.handle_lookup(now.after(S), found("v=1; b=off; k=zpa", 30));
            assert_eq!(o.transition, tr(DrMode::On, DrMode::Off), "{text}");
        }
        // A start that never comes: restored, but not in effect.
        let now = start();
        let mut m = Machine::new(settings(None), now);
        let text = format!("v=1; b=on; k=zpa; t={v}");
        assert_eq!(m.restore(now, &text), Ok(None), "{text}");
        exercise_clock(&mut m, now);
        assert_eq!(m.mode(), DrMode::Off, "{text}");
    }
}

#[test]
fn time_beyond_u64_seconds_is_malformed() {
    let now = start();
    let mut m = Machine::new(settings(None), now);
    for text in [
        "v=1; b=on; t=18446744073709551616",
        "v=1; b=on; x=99999999999999999999999",
        "v=1; b=on; t=-1",
    ] {
        let o = m.handle_lookup(now, found(text, 30));
        assert_eq!(o.result, Some(LookupResult::Malformed), "{text}");
        assert_eq!(m.mode(), DrMode::Off, "{text}");
    }
}

#[test]
fn a_restored_record_not_yet_started_is_scheduled_not_the_replay_floor() {
    let k = key(1);
    for t in [T0 + 10].into_iter().chain(ABSURD) {
        let now = start();
        let mut m = Machine::new(settings(Some(&k)), now);
        let ahead = signed(&k, DrMode::On, t, None);
        assert_eq!(m.restore(now, &ahead), Ok(None), "t={t}");
        assert_eq!(m.accepted(), None, "t={t}");
        let o = m.handle_lookup(now, found(&signed(&k, DrMode::Test, T0, None), 30));
        assert_eq!(o.transition, tr(DrMode::Off, DrMode::Test), "t={t}");
    }
    // Within the horizon it still takes effect at its t=.
    let now = start();
    let mut m = Machine::new(settings(Some(&k)), now);
    let ahead = signed(&k, DrMode::On, T0 + 10, None);
    m.restore(now, &ahead).expect("restored");
    assert_eq!(m.poll_edge(), Some(now.at + 10 * S));
    let o = m.handle_timeout(now.after(10 * S));
    assert_eq!(o.transition, tr(DrMode::Off, DrMode::On));
    assert_eq!(o.persist.as_deref(), Some(ahead.as_str()));
}

/// A thousand lookups that fail, are malformed, badly signed or replayed
/// never move a signed machine off the mode it accepted.
#[test]
fn a_thousand_bad_lookups_never_move_the_mode() {
    let k = key(7);
    let other = key(8);
    let mut now = start();
    let mut m = Machine::new(settings(Some(&k)), now);
    let good = signed(&k, DrMode::On, T0, None);
    m.handle_lookup(now, found(&good, 30));
    assert_eq!(m.mode(), DrMode::On);
    let older = signed(&k, DrMode::Off, T0 - 60, None);
    let forged = signed(&other, DrMode::Off, T0 + 5, None);
    let mut tampered = signed(&k, DrMode::On, T0 + 5, None).into_bytes();
    // `b=on` -> `b=of` with the signature left as it was.
    if let Some(i) = tampered.windows(4).position(|w| w == b"b=on") {
        tampered[i + 3] = b'f';
    }
    let tampered = String::from_utf8(tampered).expect("ASCII");
    let bad: Vec<Lookup> = vec![
        Lookup::Timeout,
        Lookup::ServFail,
        Lookup::NxDomain,
        Lookup::NoData,
        Lookup::Failed("refused".into()),
        found("v=1; b=off; k=zpa", 30),
        found("v=2; b=off; k=zpa", 30),
        found("v=1; b=off; k=zia", 30),
        found("not a record at all", 30),
        found(&older, 30),
        found(&forged, 30),
        found(&tampered, 30),
        found(&format!("{good}; b=off"), 30),
        Lookup::Found {
            texts: vec![],
            ttl: Some(S),
        },
    ];
    for i in 0..1000 {
        now = now.after(S);
        let out = m.handle_lookup(now, bad[i % bad.len()].clone());
        assert_eq!(out.transition, None, "lookup {i}: {:?}", bad[i % bad.len()]);
        assert_eq!(m.mode(), DrMode::On, "lookup {i}: {:?}", bad[i % bad.len()]);
    }
}
