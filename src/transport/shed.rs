//! When to come back after the edge shed a handshake (a DR activation
//! stampede). Pure: the edge encodes its hint, the client's keeper parses
//! it, bounds it and jitters it; no clocks, no sockets.
//!
//! How a shed reaches the client, cheapest first:
//! - QUIC, handshake pool full: a stateless `CONNECTION_REFUSED` close
//!   before any crypto. quinn's `Incoming::refuse` carries no reason phrase,
//!   so the client uses [`DEFAULT`].
//! - TLS, handshake pool full: a fatal `user_canceled` alert ("canceling
//!   the handshake for some reason unrelated to a protocol failure", RFC
//!   8446 §6.1) right after the ClientHello, before any crypto; [`DEFAULT`].
//! - QUIC, tunnel pool full (after the handshake): the application close
//!   `OVERLOADED` with the phrase `shed; retry-after-ms=N` ([`encode`]).
//!
//! The client waits at least the jittered hint before its next attempt;
//! a flow waiting for a tunnel does not bring that attempt forward.

use std::time::Duration;

use rand::Rng;

/// The wait when the edge shed us without a figure. About the time a
/// handshake slot turns over under a burst on a small edge (a few
/// handshakes of a few ms each per slot, queued).
pub const DEFAULT: Duration = Duration::from_millis(500);

/// A hint is never obeyed below this (a buggy or hostile edge cannot make
/// a fleet spin)...
pub const MIN: Duration = Duration::from_millis(50);

/// ... nor above this (nor can it park a fleet for long).
pub const MAX: Duration = Duration::from_secs(30);

/// The edge's hint when its tunnel pool (`max_tunnels`) is full: tunnels
/// free when clients leave, which is slower than a handshake slot.
pub const TUNNELS_FULL: Duration = Duration::from_secs(5);

const KEY: &str = "retry-after-ms=";

/// The close reason phrase of a shed tunnel: `shed; retry-after-ms=N`.
pub fn encode(after: Duration) -> String {
    format!("shed; {KEY}{}", after.as_millis())
}

/// The hint of a close reason phrase, bounded to [`MIN`]..=[`MAX`]; `None`
/// when the phrase carries none.
pub fn parse(reason: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(reason).ok()?;
    let at = text.find(KEY)? + KEY.len();
    let digits = text.get(at..)?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let ms: u64 = digits.get(..end)?.parse().ok()?;
    Some(Duration::from_millis(ms).clamp(MIN, MAX))
}

/// The wait before coming back: uniform in `[hint/2, 3*hint/2]` (a fleet
/// shed at the same moment does not come back at the same moment), `hint`
/// first bounded to [`MIN`]..=[`MAX`].
pub fn jittered(hint: Duration) -> Duration {
    let h = hint.clamp(MIN, MAX);
    h / 2 + rand::thread_rng().gen_range(Duration::ZERO..=h)
}

/// The bytes of a fatal `user_canceled` TLS alert record (TLS 1.2 record
/// version, as every record before the handshake).
pub const TLS_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 90];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let d = Duration::from_millis(1234);
        assert_eq!(encode(d), "shed; retry-after-ms=1234");
        assert_eq!(parse(encode(d).as_bytes()), Some(d));
        assert_eq!(parse(b"shed; retry-after-ms=1"), Some(MIN));
        assert_eq!(parse(b"shed; retry-after-ms=99999999"), Some(MAX));
        assert_eq!(
            parse(b"retry-after-ms=700 and more"),
            Some(Duration::from_millis(700))
        );
    }

    #[test]
    fn phrases_without_a_hint() {
        for bad in [
            &b"shed"[..],
            b"",
            b"retry-after-ms=",
            b"retry-after-ms=x1",
            b"retry-after-ms=99999999999999999999999",
            b"\xff\xfe",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn jitter_stays_around_the_bounded_hint() {
        for hint in [
            Duration::ZERO,
            Duration::from_millis(400),
            Duration::from_secs(600),
        ] {
            let h = hint.clamp(MIN, MAX);
            for _ in 0..200 {
                let d = jittered(hint);
                assert!(d >= h / 2 && d <= h * 3 / 2, "{d:?} for {hint:?}");
            }
        }
    }

    /// Each way a shed reaches the client gives the word `shed` and a
    /// hint; other closes give none.
    #[test]
    fn tunnel_errors_that_carry_a_hint() {
        use crate::transport::{close_code, TunnelError};
        let app = |code: u32, reason: &str| {
            TunnelError::Connection(quinn::ConnectionError::ApplicationClosed(
                quinn::ApplicationClose {
                    error_code: code.into(),
                    reason: bytes::Bytes::copy_from_slice(reason.as_bytes()),
                },
            ))
        };
        let alert = |a: rustls::AlertDescription| {
            TunnelError::Tls(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(a),
            ))
        };
        let hinted = app(close_code::OVERLOADED, &encode(Duration::from_secs(2)));
        assert_eq!(hinted.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(hinted.reason(), "shed");
        let bare = app(close_code::OVERLOADED, "shed");
        assert_eq!(bare.retry_after(), Some(DEFAULT));
        let canceled = alert(rustls::AlertDescription::UserCanceled);
        assert_eq!(canceled.retry_after(), Some(DEFAULT));
        assert_eq!(canceled.reason(), "shed");
        for other in [
            app(close_code::QUOTA, "quota"),
            app(close_code::GOING_AWAY, "shed; retry-after-ms=100"),
            alert(rustls::AlertDescription::UnknownCA),
            TunnelError::Timeout(Duration::from_secs(3)),
        ] {
            assert_eq!(other.retry_after(), None, "{other}");
            assert_ne!(other.reason(), "shed", "{other}");
        }
    }

    #[test]
    fn the_alert_is_a_fatal_user_canceled() {
        assert_eq!(TLS_ALERT[0], 21, "alert record");
        assert_eq!(TLS_ALERT[5], 2, "fatal");
        assert_eq!(
            rustls::AlertDescription::from(TLS_ALERT[6]),
            rustls::AlertDescription::UserCanceled
        );
    }
}
