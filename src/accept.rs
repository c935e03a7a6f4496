//! Accept errors in every TCP accept loop (the edge's TLS listener, admin,
//! the client's SOCKS, HTTP and forward listeners), above all running out of
//! file descriptors (EMFILE, ENFILE).
//!
//! When accept fails for want of a descriptor, the connection stays in the
//! listen backlog and the listener stays readable: a loop that retries at
//! once spins at 100% CPU, and the peer hangs until its own timeout. So:
//! - a spare descriptor (`/dev/null`, opened while there are some) is given
//!   up to take the waiting connections and close them at once, so their peers
//!   hear a refusal now, then taken back;
//! - the loop backs off, doubling from [`MIN_BACKOFF`] to [`MAX_BACKOFF`],
//!   while the burst lasts;
//! - one warning when a burst starts and one line when accepting works
//!   again, with how many attempts failed; the caller counts each.
//!
//! Running connections are not touched: they hold their descriptors.
//! Must not: sleep on a successful accept, or spin on any error.

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// First pause after an accept fails.
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between accepts while descriptors are short: how late a
/// listener notices that some were freed, at worst.
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Connections closed with the spare descriptor in one round.
const REFUSE_AT_ONCE: u32 = 256;
/// Pause after any other accept error (a connection reset before it was
/// accepted, and the like), which rarely repeats.
const OTHER_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Whether `e` says the process or the system is out of file descriptors
/// (EMFILE 24, ENFILE 23: the same numbers on Linux, the BSDs and macOS).
pub fn out_of_descriptors(e: &io::Error) -> bool {
    cfg!(unix) && matches!(e.raw_os_error(), Some(23 | 24))
}

/// What a failed accept was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Out of descriptors; `refused` connections waiting in the backlog
    /// were closed with the spare descriptor.
    OutOfDescriptors { refused: u32 },
    /// Anything else.
    Other,
}

/// The error state of one accept loop.
pub struct AcceptErrors {
    /// The listener, for the logs (`tls`, `admin`, `socks`...).
    kind: &'static str,
    spare: Option<File>,
    backoff: Duration,
    burst: Option<Burst>,
}

/// Descriptors short: since when, the last failed accept, how many failed.
struct Burst {
    since: Instant,
    last: Instant,
    failed: u64,
}

/// A burst ends at the first accept this long after its last failure.
/// Descriptors freed one at a time (a flow ending, another loop giving up
/// its spare) let single accepts through in the middle of a burst: those do
/// not end it, so a flapping limit is still one warning.
const QUIET: Duration = Duration::from_secs(1);

impl AcceptErrors {
    /// For the listener `kind`; takes its spare descriptor now.
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            spare: spare(),
            backoff: MIN_BACKOFF,
            burst: None,
        }
    }

    /// The next connection on `listener`, or `None` once `stop` is
    /// cancelled. Failed accepts are dealt with here ([`Self::failed`]) and
    /// reported to `on_failed` (to count them).
    pub async fn accept(
        &mut self,
        listener: &TcpListener,
        stop: &CancellationToken,
        mut on_failed: impl FnMut(Failed),
    ) -> Option<(TcpStream, std::net::SocketAddr)> {
        loop {
            let e = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => {
                        self.accepted();
                        return Some(x);
                    }
                    Err(e) => e,
                },
                () = stop.cancelled() => return None,
            };
            tokio::select! {
                failed = self.failed(listener, &e) => on_failed(failed),
                () = stop.cancelled() => return None,
            }
        }
    }

    /// An accept succeeded: a burst of failures is over if it has been
    /// quiet for [`QUIET`] (logged once).
    pub fn accepted(&mut self) {
        if let Some(b) = self.burst.take_if(|b| b.last.elapsed() >= QUIET) {
            info!(
                listener = self.kind,
                failed = b.failed,
                "accepting connections again on the {} listener after {:.1?} out of file descriptors",
                self.kind,
                b.since.elapsed()
            );
            self.backoff = MIN_BACKOFF;
        }
        if self.spare.is_none() {
            self.spare = spare();
        }
    }

    /// Accept on `listener` failed with `e`: refuse the connections waiting
    /// if descriptors are short, log once per burst, and pause before the
    /// loop accepts again.
    pub async fn failed(&mut self, listener: &TcpListener, e: &io::Error) -> Failed {
        if !out_of_descriptors(e) {
            warn!(
                listener = self.kind,
                "accept on the {} listener: {e}", self.kind
            );
            tokio::time::sleep(OTHER_ERROR_PAUSE).await;
            return Failed::Other;
        }
        let now = Instant::now();
        match &mut self.burst {
            Some(b) => {
                b.last = now;
                b.failed += 1;
            }
            None => {
                warn!(
                    listener = self.kind,
                    "accept on the {} listener: {e}: out of file descriptors; new connections are refused and running ones go on until some are free (raise LimitNOFILE= or `ulimit -n`); counted, logged again when accepting works",
                    self.kind
                );
                self.burst = Some(Burst {
                    since: now,
                    last: now,
                    failed: 1,
                });
            }
        }
        let refused = self.refuse_waiting(listener).await;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Failed::OutOfDescriptors { refused }
    }

    /// Give up the spare descriptor to accept the connections waiting in
    /// the backlog and close each (at most [`REFUSE_AT_ONCE`] a round: the
    /// backlog is first in, first out, so a new peer behind a crowd of idle
    /// ones hears its refusal at once too); take the spare back. How many
    /// connections were closed.
    async fn refuse_waiting(&mut self, listener: &TcpListener) -> u32 {
        if self.spare.take().is_none() {
            // Freed descriptors are taken by the next accept, or here.
            self.spare = spare();
            return 0;
        }
        let mut refused = 0;
        // The listener is readable (that is how accept failed): a zero
        // timeout still polls the accept once. Each connection is closed
        // before the next accept, which reuses its descriptor.
        while refused < REFUSE_AT_ONCE {
            match tokio::time::timeout(Duration::ZERO, listener.accept()).await {
                Ok(Ok(_)) => refused += 1,
                _ => break,
            }
        }
        self.spare = spare();
        refused
    }
}

fn spare() -> Option<File> {
    File::open("/dev/null").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_emfile_and_enfile_are_exhaustion() {
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(24)));
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(23)));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(104)));
        assert!(!out_of_descriptors(&io::Error::other("EMFILE")));
    }
}
