//! The `auto` race over the whole matrix of scripted dialers: each side
//! succeeding, failing at once or late, timing out, or refused for
//! identity, in every order relative to the head start and to each other.
//! A future polled after it completed panics (`async fn resumed after
//! completion`), so every case running to its end proves it never happens.

use std::cell::Cell;
use std::time::Duration;

use super::{race, race_heard, Won};
use crate::transport::TunnelError;

const HEAD_START: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Ok,
    /// Nothing listens (TCP refused, or an ICMP-less QUIC dead end).
    Refused,
    Timeout,
    /// The peer refused our certificate (no welcome on QUIC).
    Identity,
    /// The TLS layer answered with an alert.
    Alert,
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Ok,
    Outcome::Refused,
    Outcome::Timeout,
    Outcome::Identity,
    Outcome::Alert,
];
/// When QUIC finishes, from the start of the race.
const QUIC_AT: [u64; 4] = [0, 100, 700, 5000];
/// How long TLS takes once started.
const TLS_TAKES: [u64; 3] = [0, 150, 3000];

fn result(o: Outcome, tag: &'static str) -> Result<&'static str, TunnelError> {
    match o {
        Outcome::Ok => Ok(tag),
        Outcome::Refused => Err(TunnelError::Io(
            std::io::ErrorKind::ConnectionRefused.into(),
        )),
        Outcome::Timeout => Err(TunnelError::Timeout(Duration::from_secs(5))),
        Outcome::Identity => Err(TunnelError::NoWelcome("no welcome".into())),
        Outcome::Alert => Err(TunnelError::Tls(std::io::Error::other("alert"))),
    }
}

async fn scripted(at: u64, o: Outcome, tag: &'static str) -> Result<&'static str, TunnelError> {
    tokio::time::sleep(Duration::from_millis(at)).await;
    result(o, tag)
}

/// What the race should answer, from first principles.
fn expected(q_at: u64, q: Outcome, t_takes: u64, t: Outcome) -> (Option<&'static str>, bool) {
    let quic_failed_early = q != Outcome::Ok && q_at < HEAD_START.as_millis() as u64;
    let quic_won_early = q == Outcome::Ok && q_at < HEAD_START.as_millis() as u64;
    if quic_won_early {
        return (Some("quic"), false);
    }
    let tls_start = if quic_failed_early {
        q_at
    } else {
        HEAD_START.as_millis() as u64
    };
    let tls_done = tls_start + t_takes;
    let winner = match (q == Outcome::Ok, t == Outcome::Ok) {
        (true, true) if q_at < tls_done => Some("quic"),
        (true, true) => Some("tls"),
        (true, false) => Some("quic"),
        (false, true) => Some("tls"),
        (false, false) => None,
    };
    (winner, true)
}

#[test]
fn every_order_of_every_outcome() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let mut cases = 0;
    for q in OUTCOMES {
        for q_at in QUIC_AT {
            for t in OUTCOMES {
                for t_takes in TLS_TAKES {
                    let started = Cell::new(false);
                    let got = rt.block_on(race(
                        scripted(q_at, q, "quic"),
                        || {
                            started.set(true);
                            scripted(t_takes, t, "tls")
                        },
                        HEAD_START,
                    ));
                    let case = format!("quic {q:?} at {q_at} ms, tls {t:?} after {t_takes} ms");
                    let (winner, tls_started) = expected(q_at, q, t_takes, t);
                    assert_eq!(started.get(), tls_started, "{case}: TLS started?");
                    match (got, winner) {
                        (Ok(Won::Quic(tag)), Some("quic")) => assert_eq!(tag, "quic"),
                        (Ok(Won::Tls(tag)), Some("tls")) => assert_eq!(tag, "tls"),
                        (Err(e), None) => {
                            // The TLS error wins only when the TLS layer itself answered.
                            let tls_said_more = t == Outcome::Alert;
                            let unreachable = q == Outcome::Timeout && t == Outcome::Refused;
                            let want = if tls_said_more { t } else { q };
                            let got = match e {
                                TunnelError::Unreachable(_) if unreachable => {
                                    assert_eq!(e.reason(), "unreachable");
                                    want
                                }
                                TunnelError::Io(_) => Outcome::Refused,
                                TunnelError::Timeout(_) => Outcome::Timeout,
                                TunnelError::NoWelcome(_) => Outcome::Identity,
                                TunnelError::Tls(_) => Outcome::Alert,
                                other => panic!("{case}: unexpected error {other}"),
                            };
                            assert_eq!(got, want, "{case}: reported error");
                        }
                        (got, want) => panic!(
                            "{case}: got {:?}, want {want:?}",
                            got.map(|w| match w {
                                Won::Quic(_) => "quic",
                                Won::Tls(_) => "tls",
                            })
                            .map_err(|e| e.to_string())
                        ),
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 5 * 4 * 5 * 3);
}

/// The case the release build crashed on: TLS refused at once while QUIC
/// is still pending, then QUIC finishing either way.
#[tokio::test(start_paused = true)]
async fn tls_refused_while_quic_pending_waits_for_quic() {
    let won = race(
        scripted(2000, Outcome::Ok, "quic"),
        || scripted(0, Outcome::Refused, "tls"),
        HEAD_START,
    )
    .await;
    assert!(matches!(won, Ok(Won::Quic("quic"))));
    let lost = race(
        scripted(2000, Outcome::Timeout, "quic"),
        || scripted(0, Outcome::Refused, "tls"),
        HEAD_START,
    )
    .await;
    assert!(matches!(lost, Err(TunnelError::Unreachable(_))));
}

/// The edge's stateless `CONNECTION_REFUSED` (its handshake pool is full).
fn quic_shed() -> TunnelError {
    TunnelError::Connection(quinn::ConnectionError::ConnectionClosed(
        quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::CONNECTION_REFUSED,
            frame_type: None,
            reason: bytes::Bytes::new(),
        },
    ))
}

/// QUIC shed within its head start: the edge is up and said when to come
/// back, so TLS is not started (it would add a handshake to a stampede);
/// shed after the head start, TLS already runs and may still win.
#[tokio::test(start_paused = true)]
async fn quic_shed_ends_the_race_without_tls() {
    let started = Cell::new(false);
    let shed = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Err::<&str, _>(quic_shed())
    };
    let r = race(
        shed,
        || {
            started.set(true);
            scripted(0, Outcome::Ok, "tls")
        },
        HEAD_START,
    )
    .await;
    assert!(!started.get(), "TLS started after a shed");
    let e = r.expect_err("the shed is the answer");
    assert_eq!(e.reason(), "shed");
    assert_eq!(e.retry_after(), Some(crate::transport::shed::DEFAULT));

    let late = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Err::<&str, _>(quic_shed())
    };
    let won = race(late, || scripted(300, Outcome::Ok, "tls"), HEAD_START).await;
    assert!(matches!(won, Ok(Won::Tls("tls"))));
}

/// The edge answered QUIC within the head start (its handshake is queued
/// behind others): TLS is not started while QUIC goes on, whatever its
/// time; QUIC failing then is followed by TLS. Heard after the head start
/// changes nothing: TLS already runs.
#[tokio::test(start_paused = true)]
async fn quic_heard_from_within_the_head_start_runs_alone() {
    let heard_at = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
    let started = Cell::new(false);
    let tls = || {
        started.set(true);
        scripted(0, Outcome::Ok, "tls")
    };
    let won = race_heard(
        scripted(2000, Outcome::Ok, "quic"),
        tls,
        HEAD_START,
        heard_at(100),
    )
    .await;
    assert!(matches!(won, Ok(Won::Quic("quic"))));
    assert!(!started.get(), "TLS started though the edge answered QUIC");

    let started = Cell::new(false);
    let tls = || {
        started.set(true);
        scripted(150, Outcome::Ok, "tls")
    };
    let t0 = tokio::time::Instant::now();
    let won = race_heard(
        scripted(1000, Outcome::Identity, "quic"),
        tls,
        HEAD_START,
        heard_at(100),
    )
    .await;
    assert!(matches!(won, Ok(Won::Tls("tls"))), "TLS after QUIC failed");
    assert!(started.get());
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(1150),
        "TLS started when QUIC failed"
    );

    let shed = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Err::<&str, _>(quic_shed())
    };
    let started = Cell::new(false);
    let tls = || {
        started.set(true);
        scripted(0, Outcome::Ok, "tls")
    };
    let r = race_heard(shed, tls, HEAD_START, heard_at(100)).await;
    assert_eq!(r.expect_err("shed").reason(), "shed");
    assert!(!started.get(), "TLS started after the edge shed us");

    let won = race_heard(
        scripted(700, Outcome::Ok, "quic"),
        || scripted(150, Outcome::Ok, "tls"),
        HEAD_START,
        heard_at(300),
    )
    .await;
    assert!(
        matches!(won, Ok(Won::Tls("tls"))),
        "heard too late: the race as before"
    );
}
