//! Pinned-CA trust: SPIFFE identities, certificate verification, CRLs, and
//! the rustls configs every tunnel is built from.
//!
//! Owns: which peers a handshake accepts (chain to exactly the configured CA
//! certificate(s), themselves inside their validity period, not revoked by
//! the configured CRL, unexpired -- or, on the edge while DR is `on`, expired
//! within `[dr] cert_grace`, see `grace.rs` -- a SPIFFE id in our trust
//! domain with an accepted role) and which certificate we present.
//! Must not: fetch anything (no OCSP, no AIA, no system roots), or check host
//! names (identity is the SPIFFE id; see `verify.rs`).
//!
//! A [`Trust`] is loaded once and shared; every config built from it reads its
//! current state at each handshake, so [`Trust::reload`] (new CA, CRL, cert or
//! key) takes effect for new handshakes without rebuilding configs.

mod anchors;
mod chain;
mod classify;
pub(crate) mod crl;
mod grace;
mod spiffe;
mod state;
mod verify;
pub mod watch;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;

#[doc(hidden)]
pub use chain::{check_chain_for_test, ChainError};
pub use classify::{classify, classify_io, classify_quic, WORDS};
pub(crate) use spiffe::valid_segment;
pub use spiffe::{check_trust_domain, spiffe_id_of, IdentityError, Role, SpiffeId};

pub(crate) use anchors::may_sign_crls;
use state::{Stamp, State};
use verify::{ClientVerifier, EpochSessions, EpochTickets, LocalCert, ServerVerifier};

/// What a [`Trust`] is loaded from: the files (re-read on reload) and the
/// key-exchange policy of every handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the pinned CA certificate(s); the only trust anchors.
    pub ca: PathBuf,
    /// PEM file of our certificate, leaf first (intermediates may follow).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) matching `cert`.
    pub key: PathBuf,
    /// Optional CRL file: PEM (one or more `X509 CRL` blocks) or one DER CRL.
    pub crl: Option<PathBuf>,
    /// `[tls] key_exchange`.
    pub key_exchange: KeyExchange,
}

/// `[tls] key_exchange`: the key agreement offered and preferred on every
/// leg (QUIC and TLS, as client and as server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyExchange {
    /// X25519MLKEM768 (hybrid ML-KEM, draft-ietf-tls-ecdhe-mlkem) first, as
    /// cloudflared, browsers, Go and OpenSSL 3.5 negotiate by default;
    /// X25519 for peers without it. A client sends both key shares in one
    /// ClientHello, so a classical server costs no extra round trip.
    #[default]
    Hybrid,
    /// X25519 (then P-256, P-384) only: for a middlebox that drops a
    /// ClientHello larger than one packet, and for side-by-side measurement.
    Classical,
}

impl KeyExchange {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hybrid => "hybrid",
            Self::Classical => "classical",
        }
    }
}

/// A trust file that could not be used. Every variant names the file.
#[derive(thiserror::Error, Debug)]
pub enum TrustError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: bad PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: bad CA certificate: {source}", path.display())]
    BadCa {
        path: PathBuf,
        source: webpki::Error,
    },
    #[error("{}: unusable private key: {source}", path.display())]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: no CRL found", path.display())]
    NoCrl { path: PathBuf },
    #[error("{}: bad CRL: {source}", path.display())]
    BadCrl {
        path: PathBuf,
        source: webpki::Error,
    },
    #[error("{}: CRL is not issued by a pinned CA", path.display())]
    ForeignCrl { path: PathBuf },
    #[error("{}: CRL refused: {flaw}; the CRL in force stays", path.display())]
    UnsoundCrl { path: PathBuf, flaw: CrlFlaw },
    #[error("{}: CRL number {new} is older than the {old} in force (a CRL from before a revocation?); the newer one stays", path.display())]
    CrlRolledBack {
        path: PathBuf,
        old: String,
        new: String,
    },
    #[error("{}: certificate does not chain to the pinned CA: {source}", path.display())]
    NotTrusted {
        path: PathBuf,
        source: webpki::Error,
    },
    #[error("{}: {source}", path.display())]
    Identity {
        path: PathBuf,
        source: IdentityError,
    },
    #[error("invalid trust domain: {0}")]
    TrustDomain(IdentityError),
    #[error(transparent)]
    Tls(#[from] rustls::Error),
}

/// Why a CRL signed by a pinned CA is still refused (RFC 5280 CRL hygiene).
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlFlaw {
    /// No CRL number (RFC 5280 5.2.3: MUST be present): without it an older
    /// CRL could not be told from a newer one.
    #[error("it has no CRL number extension (RFC 5280 5.2.3 requires one; `lifeboat pki revoke` writes it)")]
    NoNumber,
    /// A CRL number marked critical (RFC 5280 5.2.3: MUST be non-critical).
    #[error("its CRL number extension is marked critical (RFC 5280 5.2.3: it must not be)")]
    CriticalNumber,
    /// Signed by a CA whose key usage omits cRLSign (RFC 5280 4.2.1.3).
    #[error("the CA that signed it has a key usage without cRLSign (RFC 5280 4.2.1.3), so it may not sign CRLs")]
    IssuerWithoutCrlSign,
}

/// Pinned-CA trust + our own certificate, shared by every TLS/QUIC config
/// built from it; reloadable in place.
pub struct Trust {
    files: TlsFiles,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
    state: ArcSwap<State>,
    /// Serialises reloads; holds the stamps of the last version that failed
    /// to load, so `reload_if_changed` reports each bad version once.
    reloading: Mutex<Option<Vec<Stamp>>>,
    /// `[dr] cert_grace`, switched by the edge with its DR mode (grace.rs).
    grace: grace::Grace,
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load();
        f.debug_struct("Trust")
            .field("files", &self.files)
            .field("trust_domain", &self.trust_domain)
            .field("local_id", &state.local_id.uri())
            .field("epoch", &state.epoch)
            .field("cert_grace", &self.grace.window())
            .finish()
    }
}

impl Trust {
    /// Loads and cross-checks the files: the CA parses, the CRL is issued by
    /// a pinned CA, the key matches the certificate, the certificate chains to
    /// the CA and names a SPIFFE id in `trust_domain`.
    pub fn load(files: TlsFiles, trust_domain: &str) -> Result<Arc<Self>, TrustError> {
        check_trust_domain(trust_domain).map_err(TrustError::TrustDomain)?;
        let provider = Arc::new(provider(files.key_exchange));
        let state = state::load(&files, trust_domain, &provider, 0)?;
        warn_expired_crl(&files, &state);
        Ok(Arc::new(Self {
            files,
            trust_domain: trust_domain.to_owned(),
            provider,
            state: ArcSwap::from_pointee(state),
            reloading: Mutex::new(None),
            grace: grace::Grace::default(),
        }))
    }

    /// Re-reads CA, CRL, cert and key. On error keeps the old state and
    /// returns the error. A successful reload also invalidates every session
    /// ticket and cached session (resumption would skip the new checks).
    pub fn reload(&self) -> Result<(), TrustError> {
        let mut failed = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.reload_locked(&mut failed)
    }

    /// Re-reads only if any file's mtime or length changed since the last
    /// load; `Ok(true)` if reloaded. A version that failed to load is
    /// reported once, not at every poll, until the files change again.
    pub fn reload_if_changed(&self) -> Result<bool, TrustError> {
        let mut failed = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = state::stamps(&self.files);
        if now == self.state.load().stamps || failed.as_ref() == Some(&now) {
            return Ok(false);
        }
        self.reload_locked(&mut failed).map(|()| true)
    }

    fn reload_locked(&self, failed: &mut Option<Vec<Stamp>>) -> Result<(), TrustError> {
        let epoch = self.state.load().epoch.wrapping_add(1);
        let loaded =
            state::load(&self.files, &self.trust_domain, &self.provider, epoch).and_then(|new| {
                // A CRL must not go back: an older file (a restored backup,
                // a stale copy) would un-revoke certificates.
                match crl::rolled_back(&self.state.load().crl_numbers, &new.crl_numbers) {
                    Some((old, newer)) => Err(TrustError::CrlRolledBack {
                        path: self.files.crl.clone().unwrap_or_default(),
                        old,
                        new: newer,
                    }),
                    None => Ok(new),
                }
            });
        match loaded {
            Ok(state) => {
                warn_expired_crl(&self.files, &state);
                tracing::info!(local_id = %state.local_id, epoch, "trust reloaded");
                self.state.store(Arc::new(state));
                *failed = None;
                Ok(())
            }
            Err(e) => {
                *failed = Some(state::stamps(&self.files));
                Err(e)
            }
        }
    }

    /// Server side: requires a client certificate chaining to the pinned CA,
    /// not revoked (CRL), unexpired, with a SPIFFE id in our trust domain
    /// whose role is in `accept`.
    ///
    /// TLS 1.3 only (QUIC needs it; on TCP no client in scope lacks it, and
    /// TLS 1.2 would send the client certificate, the user's identity, in
    /// clear), ring provider, no 0-RTT, no SNI
    /// requirement. Resumption by stateless tickets only (no server-side
    /// session cache), each config with its own ticket key, so a ticket from
    /// a config accepting other roles never resumes here; tickets die with
    /// every reload and whenever `[dr] cert_grace` is switched off, and a
    /// session accepted under grace gets none. Resumed sessions carry the
    /// peer's certificate (rustls keeps it in the ticket), so
    /// `peer_certificates()` still gives its id.
    pub fn server_config(
        self: &Arc<Self>,
        accept: &[Role],
        alpn: &[&[u8]],
    ) -> rustls::ServerConfig {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .with_client_cert_verifier(self.client_verifier(accept))
            .with_cert_resolver(Arc::new(LocalCert(self.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg.max_early_data_size = 0;
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        match rustls::crypto::ring::Ticketer::new() {
            Ok(inner) => {
                cfg.ticketer = Arc::new(EpochTickets {
                    inner,
                    trust: self.clone(),
                });
            }
            // Only a failing system RNG gets here; run without resumption.
            Err(e) => tracing::warn!(error = %e, "no session tickets"),
        }
        cfg
    }

    /// Client side: presents our certificate; accepts only servers whose
    /// certificate chains to the pinned CA, is not revoked, and carries an
    /// Edge SPIFFE id in our trust domain.
    ///
    /// No host name check: the server name passed to rustls/quinn is only
    /// used as a session-cache key. The edge is identified by its SPIFFE id
    /// under a CA pinned for this deployment alone; the names and addresses
    /// edges are reached by (the DR A record, raw IPs) are exactly what
    /// changes in a disaster, and add no assurance the pinned CA lacks.
    pub fn client_config(self: &Arc<Self>, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(self.server_verifier())
            .with_client_cert_resolver(Arc::new(LocalCert(self.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg.resumption =
            rustls::client::Resumption::store(Arc::new(EpochSessions::new(self.clone())));
        cfg
    }

    /// The client certificate verifier of [`Trust::server_config`]: public
    /// only so tests (x509-limbo) can call the very object the edge uses.
    #[doc(hidden)]
    pub fn client_verifier(self: &Arc<Self>, accept: &[Role]) -> Arc<dyn ClientCertVerifier> {
        Arc::new(ClientVerifier {
            trust: self.clone(),
            accept: accept.to_vec(),
        })
    }

    /// The server certificate verifier of [`Trust::client_config`]: public
    /// only so tests (x509-limbo) can call the very object clients and
    /// connectors use.
    #[doc(hidden)]
    pub fn server_verifier(self: &Arc<Self>) -> Arc<dyn ServerCertVerifier> {
        Arc::new(ServerVerifier {
            trust: self.clone(),
        })
    }

    /// The SPIFFE id of our own (current) certificate.
    /// The QUIC stateless-reset key of every endpoint built from this
    /// trust: derived from our private key, so a restarted process resets
    /// the connections its predecessor left behind (their peers notice at
    /// their next packet). Read at bind: a key rotated later takes effect at
    /// the next restart.
    pub fn stateless_reset_key(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.state.load().reset_secret)
    }

    /// The key of the QUIC connection-ID hash, derived like
    /// [`Trust::stateless_reset_key`] (stable across restarts).
    pub fn connection_id_key(&self) -> u64 {
        let k = self.stateless_reset_key();
        let tag = ring::hmac::sign(&k, b"lifeboat QUIC connection id key v1");
        let mut b = [0u8; 8];
        b.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_le_bytes(b)
    }

    pub fn local_id(&self) -> SpiffeId {
        self.state.load().local_id.clone()
    }

    /// The configured trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// `not_after` of our own certificate and of the CA, unix seconds (for
    /// `lifeboat_cert_expiry_timestamp_seconds{cert="local"|"ca"}`). With
    /// several pinned CA certificates, the earliest.
    pub fn expiry_unix(&self) -> (i64, i64) {
        let state = self.state.load();
        (state.local_not_after, state.ca_not_after)
    }

    /// The ticket epoch: moves at every reload and every time
    /// `[dr] cert_grace` is switched off (both counters only grow).
    pub(crate) fn epoch(&self) -> u64 {
        self.state.load().epoch.wrapping_add(self.grace.off_epoch())
    }
}

/// Whether `cert` was signed by the CA certificate `ca` (validity dates
/// aside). For `pki revoke`, which must not revoke a look-alike's serial.
pub(crate) fn issued_by(cert: &[u8], ca: &[u8]) -> bool {
    let ca = rustls_pki_types::CertificateDer::from(ca);
    let Ok(anchor) = webpki::anchor_from_trusted_cert(&ca) else {
        return false;
    };
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    state::chains_to(&cert.into(), &[], &[anchor], algs).is_ok()
}

fn warn_expired_crl(files: &TlsFiles, state: &State) {
    let Some(path) = &files.crl else { return };
    let now = rustls_pki_types::UnixTime::now().as_secs();
    let expired = state
        .crl_next_update
        .is_some_and(|next| u64::try_from(next).map_or(true, |next| next < now));
    if expired {
        tracing::warn!(
            path = %path.display(),
            "CRL is past its nextUpdate; still honoured (entries stay revoked), issue a fresh one with `lifeboat pki revoke`"
        );
    }
}

/// The ring provider with AES-128-GCM first (as strong as a deployment of
/// pinned P-256 keys needs, and the fastest suite on AES-NI machines: the
/// bulk path encrypts every byte twice) and, for [`KeyExchange::Hybrid`],
/// aws-lc-rs's X25519MLKEM768 ahead of ring's classical groups (ring has no
/// ML-KEM).
fn provider(kx: KeyExchange) -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    if kx == KeyExchange::Hybrid {
        p.kx_groups
            .insert(0, rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768);
    }
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    };
    p.cipher_suites.sort_by_key(rank);
    p
}
