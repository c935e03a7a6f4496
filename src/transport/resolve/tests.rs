//! Unit tests of the pure edge book and the failover order: explicit
//! instants, no runtime.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn book(now: Instant) -> EdgeBook {
    let entries =
        ["dr-edge.example.test:443", "192.0.2.9:443"].map(|e| EdgeEntry::parse(e).unwrap());
    EdgeBook::new(&entries, now)
}

fn found(ips: &[&str], ttl: u64) -> Answer {
    Answer::Found {
        ips: ips.iter().map(|s| ip(s)).collect(),
        ttl: Some(Duration::from_secs(ttl)),
    }
}

#[test]
fn literals_need_no_lookup_and_names_are_due_at_once() {
    let t0 = Instant::now();
    let b = book(t0);
    assert_eq!(b.addrs().len(), 1);
    assert_eq!(b.due(t0), vec![0]);
    assert_eq!(b.poll_timeout(), Some(t0));
    let only_literal = EdgeBook::new(&[EdgeEntry::parse("[2001:db8::1]:443").unwrap()], t0);
    assert!(!only_literal.has_names());
    assert_eq!(only_literal.poll_timeout(), None);
    assert_eq!(
        only_literal.addrs()[0].addr,
        "[2001:db8::1]:443".parse().unwrap()
    );
}

#[test]
fn answers_replace_the_set_and_schedule_at_the_ttl() {
    let t0 = Instant::now();
    let mut b = book(t0);
    assert_eq!(
        b.handle_answer(0, t0, found(&["127.0.0.3", "127.0.0.2", "::1"], 5)),
        None
    );
    let addrs: Vec<String> = b.addrs().iter().map(|a| a.addr.to_string()).collect();
    assert_eq!(
        addrs,
        [
            "127.0.0.2:443",
            "127.0.0.3:443",
            "192.0.2.9:443",
            "[::1]:443"
        ]
    );
    assert_eq!(b.addrs()[0].server_name, "dr-edge.example.test");
    assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    assert!(b.due(t0 + Duration::from_secs(4)).is_empty());
    // An address leaves the record.
    b.handle_answer(0, t0 + Duration::from_secs(5), found(&["127.0.0.2"], 0));
    assert_eq!(b.addrs().len(), 2);
    // TTL 0 is floored, a long TTL capped.
    assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(6)));
    b.handle_answer(0, t0 + Duration::from_secs(6), found(&["127.0.0.2"], 86400));
    assert_eq!(
        b.poll_timeout(),
        Some(t0 + Duration::from_secs(6) + MAX_REFRESH)
    );
    // No TTL (system resolver): the fixed interval.
    b.handle_answer(
        0,
        t0,
        Answer::Found {
            ips: vec![ip("127.0.0.2")],
            ttl: None,
        },
    );
    assert_eq!(b.poll_timeout(), Some(t0 + SYSTEM_REFRESH));
}

#[test]
fn failures_keep_the_last_good_set_and_are_noted_once_per_condition() {
    let t0 = Instant::now();
    let mut b = book(t0);
    b.handle_answer(0, t0, found(&["127.0.0.2", "127.0.0.3"], 30));
    let before = b.addrs();
    let s = Duration::from_secs;
    let n = b.handle_answer(0, t0 + s(1), Answer::Failed("SERVFAIL".into()));
    assert_eq!(
        n,
        Some(Note::Failing {
            host: "dr-edge.example.test".into(),
            error: "SERVFAIL".into(),
            kept: 2
        })
    );
    assert_eq!(b.addrs(), before);
    // Retries back off: 1 s, 2 s, 4 s ... up to the TTL's interval (30 s).
    assert_eq!(b.poll_timeout(), Some(t0 + s(2)));
    assert_eq!(
        b.handle_answer(0, t0 + s(2), Answer::Failed("SERVFAIL".into())),
        None
    );
    assert_eq!(b.poll_timeout(), Some(t0 + s(4)));
    for k in 0..10 {
        b.handle_answer(0, t0 + s(10 + k), Answer::Failed("SERVFAIL".into()));
    }
    assert_eq!(b.poll_timeout(), Some(t0 + s(19) + MAX_REFRESH));
    // A new condition is noted; an empty answer is a failure too.
    assert!(matches!(
        b.handle_answer(0, t0, Answer::Failed("timed out".into())),
        Some(Note::Failing { .. })
    ));
    assert!(matches!(
        b.handle_answer(
            0,
            t0,
            Answer::Found {
                ips: vec![],
                ttl: None
            }
        ),
        Some(Note::Failing { .. })
    ));
    assert_eq!(b.addrs(), before);
    assert_eq!(
        b.handle_answer(0, t0, found(&["127.0.0.2"], 1)),
        Some(Note::Recovered {
            host: "dr-edge.example.test".into()
        })
    );
    assert_eq!(b.addrs().len(), 2);
    // After a 1 s TTL, failures retry every second.
    for k in 0..8 {
        b.handle_answer(0, t0 + s(k), Answer::Failed("SERVFAIL".into()));
        assert_eq!(b.poll_timeout(), Some(t0 + s(k + 1)));
    }
}

#[test]
fn refresh_soon_is_floored_at_a_second_after_the_last_lookup() {
    let t0 = Instant::now();
    let mut b = book(t0);
    b.handle_answer(0, t0, found(&["127.0.0.2"], 30));
    b.refresh_soon(t0 + Duration::from_millis(200));
    assert_eq!(b.poll_timeout(), Some(t0 + MIN_REFRESH));
    b.refresh_soon(t0 + Duration::from_secs(3));
    assert_eq!(b.poll_timeout(), Some(t0 + MIN_REFRESH));
    let mut fresh = book(t0);
    fresh.refresh_soon(t0 + Duration::from_secs(3));
    assert_eq!(fresh.poll_timeout(), Some(t0));
}

#[test]
fn failover_order_spreads_and_tries_the_lost_address_last() {
    let addrs: Vec<EdgeAddr> = ["127.0.0.2:443", "127.0.0.3:443", "127.0.0.4:443"]
        .iter()
        .map(|s| EdgeAddr {
            addr: s.parse().unwrap(),
            server_name: "e".into(),
        })
        .collect();
    let firsts: std::collections::HashSet<SocketAddr> = (0..3)
        .map(|r| failover_order(&addrs, None, r)[0].addr)
        .collect();
    assert_eq!(firsts.len(), 3);
    for r in 0..6 {
        let o = failover_order(&addrs, Some(addrs[1].addr), r);
        assert_eq!(o.len(), 3);
        assert_eq!(o[2].addr, addrs[1].addr);
    }
    // The lost address already left the record: every address is a candidate.
    let o = failover_order(&addrs[..1], Some(addrs[1].addr), 7);
    assert_eq!(o, addrs[..1]);
    assert!(failover_order(&[], None, 3).is_empty());
}
