//! Handshake failures as stable words for metrics and logs
//! (`handshakes_total{result}`, tunnel logs).
//!
//! The side that ran the verifier has the exact error. The refused side only
//! receives a TLS alert, so its word is coarser: `access_denied` means
//! wrong-role (see `verify.rs`), `certificate_unknown` is reported as
//! bad-certificate (it also covers foreign-trust-domain and no-identity),
//! `certificate_expired` covers not-yet-valid too.

use rustls::{AlertDescription, CertificateError, Error};

use super::spiffe::IdentityError;

/// Every word [`classify`] and [`classify_quic`] can return.
pub const WORDS: [&str; 10] = [
    "unknown-ca",
    "expired",
    "not-yet-valid",
    "revoked",
    "wrong-role",
    "foreign-trust-domain",
    "no-identity",
    "bad-certificate",
    "no-certificate",
    "other",
];

/// Classifies a TLS handshake failure: one of [`WORDS`].
pub fn classify(err: &Error) -> &'static str {
    match err {
        Error::InvalidCertificate(e) => classify_certificate(e),
        Error::NoCertificatesPresented => "no-certificate",
        Error::AlertReceived(alert) => classify_alert(*alert),
        _ => "other",
    }
}

/// [`classify`] for the `io::Error` that tokio-rustls returns (it wraps the
/// rustls error); "other" for plain I/O failures.
pub fn classify_io(err: &std::io::Error) -> &'static str {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .map_or("other", classify)
}

/// Classifies a QUIC connection failure, best effort: quinn only keeps the
/// TLS alert (as a `CRYPTO_ERROR` code) and the rustls error's text, so the
/// alert gives the word and the text refines it where it can.
pub fn classify_quic(err: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError as C;
    match err {
        C::TransportError(e) => classify_code(u64::from(e.code), e.reason.as_bytes()),
        C::ConnectionClosed(close) => classify_code(u64::from(close.error_code), &close.reason),
        _ => "other",
    }
}

/// QUIC carries TLS alert `a` as transport error code `0x100 + a`
/// (RFC 9001 §4.8).
fn classify_code(code: u64, reason: &[u8]) -> &'static str {
    let Some(alert) = code.checked_sub(0x100).and_then(|a| u8::try_from(a).ok()) else {
        return "other";
    };
    let word = classify_alert(AlertDescription::from(alert));
    let has = |needle: &str| reason.windows(needle.len()).any(|w| w == needle.as_bytes());
    match word {
        // rustls formats `CertificateError::Other` with `{:?}`, so the
        // identity error's variant name is in the text.
        "bad-certificate" if has("ForeignTrustDomain") => "foreign-trust-domain",
        "bad-certificate"
            if has("NoSpiffeId")
                || has("MultipleSpiffeIds")
                || has("Malformed")
                || has("UnknownRole") =>
        {
            "no-identity"
        }
        "expired" if has("not valid yet") || has("NotValidYet") => "not-yet-valid",
        "other" if has("no certificates") => "no-certificate",
        word => word,
    }
}

fn classify_certificate(err: &CertificateError) -> &'static str {
    use CertificateError as E;
    match err {
        E::UnknownIssuer => "unknown-ca",
        E::Expired | E::ExpiredContext { .. } => "expired",
        E::NotValidYet | E::NotValidYetContext { .. } => "not-yet-valid",
        E::Revoked => "revoked",
        E::ApplicationVerificationFailure => "wrong-role",
        E::Other(other) => other
            .0
            .downcast_ref::<IdentityError>()
            .map_or("bad-certificate", classify_identity),
        // Unknown status and expired CRLs are allowed by our policy, so these
        // only come from somewhere else.
        E::UnknownRevocationStatus
        | E::ExpiredRevocationList
        | E::ExpiredRevocationListContext { .. } => "other",
        _ => "bad-certificate",
    }
}

fn classify_identity(err: &IdentityError) -> &'static str {
    match err {
        IdentityError::ForeignTrustDomain { .. } => "foreign-trust-domain",
        IdentityError::WrongRole { .. } => "wrong-role",
        IdentityError::BadCertificate => "bad-certificate",
        IdentityError::NoSpiffeId
        | IdentityError::MultipleSpiffeIds { .. }
        | IdentityError::Malformed { .. }
        | IdentityError::UnknownRole { .. } => "no-identity",
    }
}

fn classify_alert(alert: AlertDescription) -> &'static str {
    use AlertDescription as A;
    match alert {
        A::UnknownCA => "unknown-ca",
        A::CertificateExpired => "expired",
        A::CertificateRevoked => "revoked",
        A::AccessDenied => "wrong-role",
        A::CertificateRequired => "no-certificate",
        A::BadCertificate | A::CertificateUnknown | A::UnsupportedCertificate => "bad-certificate",
        _ => "other",
    }
}
