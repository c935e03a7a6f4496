//! The chain layer under every peer check: webpki path building from the
//! peer's certificate to exactly the pinned roots, with lifeboat's revocation
//! policy. The SPIFFE identity layer sits on top of it (`verify.rs`).
//!
//! Also the x509-limbo entry point, [`check_chain_for_test`]: the same root
//! and CRL loading and the same webpki call, over a test case's inputs.
//! Must not: check host names (see `verify.rs`), fetch anything.

use std::path::Path;

use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, SignatureVerificationAlgorithm, TrustAnchor,
    UnixTime,
};
use webpki::{CertRevocationList, EndEntityCert, ExtendedKeyUsageValidator, VerifiedPath};

use super::anchors::{anchors, Validity};
use super::TrustError;

/// The pinned roots and their validity periods, in the same order.
#[derive(Clone, Copy)]
pub(crate) struct Pinned<'a> {
    pub(crate) roots: &'a [TrustAnchor<'a>],
    pub(crate) validity: &'a [Validity],
}

/// Whether `cert` chains to a pinned root through `intermediates`, with
/// `usage`, not revoked by `crls`: the path valid at `at` (webpki checks the
/// leaf and intermediates), its root valid at `now` (webpki does not look at
/// a root's dates; we do, as most verifiers do: a pinned CA past its
/// notAfter vouches for nothing). `at` is `now` except under
/// `[dr] cert_grace` (grace.rs), where the intermediates must be valid at
/// `now` too: only the leaf's expiry is ever forgiven.
#[allow(clippy::too_many_arguments)]
pub(crate) fn verify(
    algs: &[&dyn SignatureVerificationAlgorithm],
    pinned: Pinned<'_>,
    crls: &[CertRevocationList<'_>],
    cert: &EndEntityCert<'_>,
    intermediates: &[CertificateDer<'_>],
    at: UnixTime,
    now: UnixTime,
    usage: impl ExtendedKeyUsageValidator,
) -> Result<(), webpki::Error> {
    let crls: Vec<&CertRevocationList<'_>> = crls.iter().collect();
    // Revocation policy, decided:
    // - the whole chain is checked (with our pathlen-0 CA that is just the
    //   leaf, so it costs nothing);
    // - a certificate no configured CRL speaks for is allowed (no CRL
    //   configured, or a CRL of another issuer in a multi-CA file);
    // - an expired CRL (past nextUpdate) is still honoured: everything it
    //   lists stays revoked. Enforcing nextUpdate would refuse every peer
    //   the day the offline CA operator is late -- in a disaster, the
    //   very moment this edge exists for -- and ignoring the CRL would
    //   readmit revoked peers. `Trust::load` logs a warning instead.
    let revocation = webpki::RevocationOptionsBuilder::new(&crls)
        .ok()
        .map(|builder| {
            builder
                .with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
                .build()
        });
    let path_check = |path: &VerifiedPath<'_>| -> Result<(), webpki::Error> {
        root_valid(pinned, path.anchor(), now)?;
        if at != now {
            for c in path.intermediate_certificates() {
                Validity::of(&c.der())
                    .ok_or(webpki::Error::BadDer)?
                    .check(now)?;
            }
        }
        Ok(())
    };
    cert.verify_for_usage(
        algs,
        pinned.roots,
        intermediates,
        at,
        usage,
        revocation,
        Some(&path_check),
    )
    .map(drop)
}

/// Whether a pinned root equal to `anchor` is valid at `now` (the same
/// anchor may be pinned twice, with different dates).
fn root_valid(
    pinned: Pinned<'_>,
    anchor: &TrustAnchor<'_>,
    now: UnixTime,
) -> Result<(), webpki::Error> {
    let mut result = Err(webpki::Error::UnknownIssuer);
    for (root, validity) in pinned.roots.iter().zip(pinned.validity) {
        if root.subject == anchor.subject
            && root.subject_public_key_info == anchor.subject_public_key_info
        {
            result = validity.check(now);
            if result.is_ok() {
                break;
            }
        }
    }
    result
}

/// Why [`check_chain_for_test`] refused.
#[doc(hidden)]
#[derive(thiserror::Error, Debug)]
pub enum ChainError {
    /// The roots or CRLs would not load: `Trust::load` (and so the edge)
    /// would refuse to start with these files.
    #[error("refused at load: {0}")]
    Load(TrustError),
    /// The handshake's chain check refused the peer.
    #[error("refused: {0}")]
    Verify(webpki::Error),
}

/// Test hook (x509-limbo, `tests/x509_limbo.rs`): the chain layer of
/// lifeboat's verifiers without the SPIFFE identity layer.
///
/// `trusted` is loaded as `Trust::load` loads `[tls] ca` (every certificate
/// must be a usable trust anchor), `crls` as it loads `[tls] crl` (each must
/// be issued and signed by a pinned root that may sign CRLs, and carry a
/// non-critical CRL number; none means no CRL configured), and
/// the peer is checked as every handshake checks it (the same webpki call,
/// algorithms, revocation policy and root validity check). Like the verifiers, no host name
/// is checked. Not for production use: it exists so the test runs exactly
/// this code.
#[doc(hidden)]
pub fn check_chain_for_test(
    trusted: &[CertificateDer<'_>],
    intermediates: &[CertificateDer<'_>],
    crls: &[CertificateRevocationListDer<'_>],
    end_entity: &CertificateDer<'_>,
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<(), ChainError> {
    let provider = super::provider(super::KeyExchange::default());
    let anchors = anchors(trusted, Path::new("<trusted>")).map_err(ChainError::Load)?;
    let (crls, _, _) = if crls.is_empty() {
        (Vec::new(), None, Vec::new())
    } else {
        super::crl::parse(crls, Path::new("<crls>"), &anchors, &provider)
            .map_err(ChainError::Load)?
    };
    let cert = EndEntityCert::try_from(end_entity).map_err(ChainError::Verify)?;
    let pinned = Pinned {
        roots: &anchors.roots,
        validity: &anchors.validity,
    };
    verify(
        provider.signature_verification_algorithms.all,
        pinned,
        &crls,
        &cert,
        intermediates,
        now,
        now,
        usage,
    )
    .map_err(ChainError::Verify)
}
