//! A live peer's certificate, checked for as long as its tunnel or flow
//! lives: at every trust reload, at its expiry, and as DR `cert_grace`
//! stops applying. Shared by the edge's QUIC and TLS accept paths and its
//! connector tunnels.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::EdgeState;
use crate::trust::Role;

/// Re-check a live peer's certificate chain against the trust as it is
/// now (CRL, CA, expiry, with `cert_grace` as it applies now to clients).
pub(super) fn still_accepted(
    state: &EdgeState,
    certs: &[CertificateDer<'static>],
    role: Role,
) -> Result<(), &'static str> {
    state
        .trust
        .recheck(certs, &[role], rustls::pki_types::UnixTime::now())
        .map_err(|e| crate::trust::classify(&e))
}

/// A session resumed from a ticket skips the certificate checks: one whose
/// certificate has expired since is refused here (`expired`, unless
/// `cert_grace` keeps it while DR is `on`). Only the expiry is looked at:
/// trust reloads void every ticket.
pub(super) fn expired_now(
    state: &EdgeState,
    certs: &[CertificateDer<'static>],
    role: Role,
) -> Option<&'static str> {
    let now = crate::dr::trigger::unix_now() as i64;
    if leaf_not_after(certs)? >= now {
        return None;
    }
    still_accepted(state, certs, role).err()
}

/// The leaf certificate's notAfter, unix seconds.
fn leaf_not_after(certs: &[CertificateDer<'static>]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Why a live client's certificate stopped being accepted.
pub(super) enum CertEnd {
    /// A trust reload (revocation, CA change) or its expiry refused it.
    Refused(&'static str),
    /// It is expired and was accepted only by `[dr] cert_grace`, which
    /// applies only while DR is `on`: DR left `on`.
    GraceOver,
}

/// Watch a live client's certificate for as long as its tunnel or flow
/// lives: re-checked at every trust reload and when it expires (then
/// `cert_grace` may keep it while DR is `on`); resolves when it is no
/// longer accepted.
pub(super) async fn cert_watch(
    state: Arc<EdgeState>,
    certs: Vec<CertificateDer<'static>>,
) -> CertEnd {
    let mut trust_changed = state.trust_changed.subscribe();
    let mut mode = state.mode.clone();
    let not_after = leaf_not_after(&certs);
    // Whether `cert_grace` has been keeping this expired certificate.
    let mut by_grace = false;
    loop {
        let now = crate::dr::trigger::unix_now() as i64;
        let expired = not_after.is_some_and(|t| t < now);
        if expired {
            // Also a session resumed from a ticket issued before the expiry:
            // resumption skips the certificate checks.
            let on = *mode.borrow_and_update() == crate::dr::DrMode::On;
            match still_accepted(&state, &certs, Role::Client) {
                Ok(()) if on => by_grace = true,
                Err(_) | Ok(()) if by_grace => return CertEnd::GraceOver,
                Err(reason) => return CertEnd::Refused(reason),
                Ok(()) => return CertEnd::GraceOver,
            }
        }
        // Woken at the expiry (a day at a time: no far-future timers).
        let until_expiry = not_after
            .filter(|&t| t >= now)
            .map(|t| std::time::Duration::from_secs((t - now + 1).min(86_400) as u64));
        let expiry = async {
            match until_expiry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Ok(()) = trust_changed.changed() => {}
            () = expiry => continue,
            Ok(()) = mode.changed(), if expired => continue,
        }
        if let Err(reason) = still_accepted(&state, &certs, Role::Client) {
            return if by_grace {
                CertEnd::GraceOver
            } else {
                CertEnd::Refused(reason)
            };
        }
    }
}
