//! `[dr] cert_grace`: while the edge's DR mode is `on`, a client certificate
//! expired by no more than the grace window is still accepted, logged (once
//! per certificate) and counted: the certificate counterpart of the DR
//! guide's extended SAML validity. The edge switches the window with its
//! mode ([`Trust::set_cert_grace`]); nothing else ever sets it.
//!
//! Only the leaf's notAfter is forgiven, and only to `client` identities:
//! chain, CRL, EKU, trust domain and role are checked as always, at the
//! leaf's last valid second, and every intermediate of the path must be
//! valid now. Connector and edge certificates get no grace.
//!
//! A grace acceptance must not outlive the mode. Resumption skips
//! verification, so a session accepted under grace is never given a session
//! ticket (the ticketer finds its certificate in the ticket's plaintext, see
//! `verify.rs`), and switching grace off also moves the ticket epoch, as a
//! reload does. Must not: forgive any other error than an expired leaf.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use prometheus::IntCounter;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{CertificateError, Error};

use super::spiffe::{spiffe_id_of, Role, SpiffeId};
use super::Trust;

/// Distinct certificates remembered per DR activation; past it, every
/// grace acceptance is logged and no session ticket is issued to anyone
/// until grace is next switched on.
const MAX_REMEMBERED: usize = 4096;

/// The grace window and what was accepted under it.
#[derive(Default)]
pub(crate) struct Grace {
    inner: Mutex<Inner>,
    /// Whether the ticketer must look: something is remembered (or overflowed).
    remembered: AtomicBool,
    /// Bumped each time grace is switched off; added to the ticket epoch.
    off_epoch: AtomicU64,
    counter: OnceLock<IntCounter>,
}

#[derive(Default)]
struct Inner {
    window: Option<Duration>,
    /// DER of every leaf accepted under grace since grace was last switched
    /// on. Kept while grace is off, so that a handshake verified just before
    /// the switch still gets no ticket.
    accepted: HashSet<Vec<u8>>,
    overflow: bool,
}

impl Grace {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn window(&self) -> Option<Duration> {
        self.lock().window
    }

    pub(crate) fn off_epoch(&self) -> u64 {
        self.off_epoch.load(Ordering::Acquire)
    }

    /// Whether a session ticket with plaintext `plain` must not be issued:
    /// it carries a certificate accepted under grace (or too many were
    /// accepted to remember which).
    pub(crate) fn refuses_ticket(&self, plain: &[u8]) -> bool {
        if !self.remembered.load(Ordering::Acquire) {
            return false;
        }
        let inner = self.lock();
        inner.overflow || der_sequences(plain).any(|s| inner.accepted.contains(s))
    }

    /// Remembers `cert`; whether it is the first time (log it then).
    fn remember(&self, cert: &[u8]) -> bool {
        let mut inner = self.lock();
        let first = if inner.accepted.contains(cert) {
            false
        } else if inner.accepted.len() < MAX_REMEMBERED {
            inner.accepted.insert(cert.to_vec())
        } else {
            inner.overflow = true;
            true
        };
        self.remembered.store(true, Ordering::Release);
        first
    }
}

impl Trust {
    /// Sets the `[dr] cert_grace` window in force: `Some(window)` while the
    /// edge's DR mode is `on`, `None` (or zero) otherwise. Takes effect at
    /// the next handshake. Switching it off voids every session ticket
    /// issued so far (sessions accepted under grace never had one).
    pub fn set_cert_grace(&self, window: Option<Duration>) {
        let window = window.filter(|w| !w.is_zero());
        let mut inner = self.grace.lock();
        let was = std::mem::replace(&mut inner.window, window);
        match (was, window) {
            (None, Some(w)) => {
                inner.accepted.clear();
                inner.overflow = false;
                self.grace.remembered.store(false, Ordering::Release);
                tracing::info!(
                    cert_grace = %humantime::format_duration(w),
                    "cert_grace on: client certificates expired for up to cert_grace are accepted"
                );
            }
            (Some(_), None) => {
                self.grace.off_epoch.fetch_add(1, Ordering::AcqRel);
                tracing::info!(
                    "cert_grace off: expired client certificates are refused; session tickets issued so far are void"
                );
            }
            _ => {}
        }
    }

    /// The `[dr] cert_grace` window in force, if any.
    pub fn cert_grace(&self) -> Option<Duration> {
        self.grace.window()
    }

    /// Counts every acceptance under grace in `counter`
    /// (`lifeboat_cert_grace_accepted_total`). Set once; later calls are ignored.
    pub fn count_cert_grace(&self, counter: IntCounter) {
        let _ = self.grace.counter.set(counter);
    }

    /// After [`Trust::verify_peer`] refused `end_entity` with `refused`:
    /// `None` if grace does not apply (it is off, the refusal is not the
    /// leaf's expiry, the leaf expired longer ago than the window, or does
    /// not name a client), and the refusal stands. Otherwise every other
    /// check, as always: the id, or why the peer is still refused (revoked,
    /// foreign trust domain, ...).
    ///
    /// An acceptance is counted and logged only if `count` (a handshake; not
    /// a re-check of a live peer).
    pub(crate) fn verify_in_grace(
        &self,
        refused: &Error,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        accept: &[Role],
        count: bool,
    ) -> Option<Result<SpiffeId, Error>> {
        let expired = matches!(
            refused,
            Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        );
        if !expired || !accept.contains(&Role::Client) {
            return None;
        }
        let window = self.grace.window()?;
        // The leaf itself must be what expired (not an intermediate), and
        // not longer ago than the window.
        let not_after = u64::try_from(super::state::not_after(end_entity)?).ok()?;
        let expired_for = now.as_secs().checked_sub(not_after).filter(|s| *s > 0)?;
        if Duration::from_secs(expired_for) > window {
            return None;
        }
        // Connector and edge certificates keep their "expired".
        if spiffe_id_of(end_entity).ok()?.role != Role::Client {
            return None;
        }
        // Everything else checked as always: the path at the leaf's last
        // valid second, the root and any intermediate also now.
        let last_valid = UnixTime::since_unix_epoch(Duration::from_secs(not_after));
        let result = self.verify_peer_at(
            end_entity,
            intermediates,
            last_valid,
            now,
            webpki::KeyUsage::client_auth(),
            &[Role::Client],
        );
        if let (Ok(id), true) = (&result, count) {
            if self.grace.remember(end_entity) {
                tracing::warn!(
                    peer = %id,
                    expired_for = %humantime::format_duration(Duration::from_secs(expired_for)),
                    "accepted an expired client certificate under [dr] cert_grace"
                );
            }
            if let Some(c) = self.grace.counter.get() {
                c.inc();
            }
        }
        Some(result)
    }
}

impl Trust {
    /// Re-check a live peer's certificate chain as a handshake would now
    /// (CRL, CA, expiry, `cert_grace` as it applies now), without counting
    /// a grace acceptance again.
    pub fn recheck(
        &self,
        certs: &[CertificateDer<'_>],
        accept: &[Role],
        now: UnixTime,
    ) -> Result<(), Error> {
        let (leaf, rest) = certs.split_first().ok_or(Error::NoCertificatesPresented)?;
        let usage = webpki::KeyUsage::client_auth();
        match self.verify_peer(leaf, rest, now, usage, accept) {
            Ok(_) => Ok(()),
            Err(e) => match self.verify_in_grace(&e, leaf, rest, now, accept, false) {
                Some(r) => r.map(|_| ()),
                None => Err(e),
            },
        }
    }
}

/// Every well-formed DER SEQUENCE starting anywhere in `buf` (certificates
/// are SEQUENCEs, stored verbatim in a ticket's plaintext).
fn der_sequences(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    (0..buf.len()).filter_map(move |i| {
        let rest = buf.get(i..)?;
        let (total, _) = super::crl::tlv_len(0x30, rest)?;
        rest.get(..total)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_found_at_any_offset() {
        let cert = [0x30, 0x03, 0x02, 0x01, 0x07];
        let mut plain = vec![0x00, 0x00, 0x05];
        plain.extend_from_slice(&cert);
        plain.extend_from_slice(&[0x30, 0x7f]); // truncated: skipped
        let found: Vec<&[u8]> = der_sequences(&plain).collect();
        assert_eq!(found, vec![&cert[..]]);
    }

    #[test]
    fn remembered_certificates_get_no_ticket_until_grace_is_next_on() {
        let g = Grace::default();
        let cert = [0x30, 0x02, 0x05, 0x00];
        let other = [0x30, 0x02, 0x04, 0x00];
        assert!(!g.refuses_ticket(&cert));
        assert!(g.remember(&cert));
        assert!(!g.remember(&cert), "logged once per certificate");
        assert!(g.refuses_ticket(&[&[9u8, 9][..], &cert].concat()));
        assert!(!g.refuses_ticket(&other));
    }
}
