//! rustls plumbing over a live [`Trust`]: the client and server certificate
//! verifiers, the resolvers presenting our own certificate, and the session
//! ticket / session cache wrappers that make a reload invalidate resumption.
//!
//! Every object here holds an `Arc<Trust>` and reads its *current* state at
//! each handshake, so `Trust::reload` affects configs built before it. Chain
//! validation is webpki against exactly the pinned CA certificates; nothing
//! here ever touches the network (no OCSP, no AIA).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertRevocationListError, CertificateError, DigitallySignedStruct, DistinguishedName, Error,
    NamedGroup, OtherError, SignatureScheme,
};

use super::chain;
use super::spiffe::{spiffe_id_of, IdentityError, Role, SpiffeId};
use super::state::{AnyEku, State};
use super::Trust;

/// The extended key usage a chain is checked for.
#[derive(Clone, Copy)]
enum Usage {
    Asked(webpki::KeyUsage),
    /// Any: only to tell a wrong role from a broken chain.
    Any,
}

/// Client sessions remembered per config (the rustls default).
const CLIENT_SESSIONS: usize = 256;

impl Trust {
    /// The whole peer check: chain to the pinned CA (with CRLs), then the
    /// SPIFFE id (trust domain, then role).
    pub(crate) fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
        accept: &[Role],
    ) -> Result<SpiffeId, Error> {
        self.verify_peer_at(end_entity, intermediates, now, now, usage, accept)
    }

    /// [`Self::verify_peer`] with the path checked at `at` (root and
    /// intermediates also at `now`); `at` is `now` but under `[dr] cert_grace`.
    pub(crate) fn verify_peer_at(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        at: UnixTime,
        now: UnixTime,
        usage: webpki::KeyUsage,
        accept: &[Role],
    ) -> Result<SpiffeId, Error> {
        let state = self.state.load();
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let check = |usage| self.check_chain(&state, &cert, intermediates, at, now, usage);
        match check(Usage::Asked(usage)) {
            Ok(()) => {}
            // Without the EKU asked for is how a connector or client
            // certificate looks to a client expecting an edge. If the chain
            // is otherwise sound, report what the identity says (wrong-role)
            // rather than a bare "invalid purpose".
            #[allow(deprecated)]
            Err(
                webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_),
            ) => {
                check(Usage::Any).map_err(pki_error)?;
                self.check_identity(end_entity, accept)?;
                return Err(CertificateError::InvalidPurpose.into());
            }
            Err(e) => return Err(pki_error(e)),
        }
        self.check_identity(end_entity, accept)
    }

    fn check_chain(
        &self,
        state: &State,
        cert: &webpki::EndEntityCert<'_>,
        intermediates: &[CertificateDer<'_>],
        at: UnixTime,
        now: UnixTime,
        usage: Usage,
    ) -> Result<(), webpki::Error> {
        let pinned = chain::Pinned {
            roots: &state.roots,
            validity: &state.root_validity,
        };
        let algs = self.provider.signature_verification_algorithms.all;
        let crls = &state.crls;
        match usage {
            Usage::Asked(u) => chain::verify(algs, pinned, crls, cert, intermediates, at, now, u),
            Usage::Any => chain::verify(algs, pinned, crls, cert, intermediates, at, now, AnyEku),
        }
    }

    /// The SPIFFE id: our trust domain first, then an accepted role.
    fn check_identity(
        &self,
        end_entity: &CertificateDer<'_>,
        accept: &[Role],
    ) -> Result<SpiffeId, Error> {
        let id = spiffe_id_of(end_entity).map_err(identity_error)?;
        match id.check(&self.trust_domain, accept) {
            Ok(()) => Ok(id),
            // A wrong role is the common misconfiguration (a connector
            // certificate on a client, ...). ApplicationVerificationFailure
            // makes rustls send `access_denied`, so the *refused* side can
            // name it too; the other identity failures keep their detail
            // locally and reach the peer as `certificate_unknown`.
            Err(e @ IdentityError::WrongRole { .. }) => {
                tracing::debug!(peer = %id, error = %e, "peer certificate refused");
                Err(CertificateError::ApplicationVerificationFailure.into())
            }
            Err(e) => Err(identity_error(e)),
        }
    }

    fn signature_algorithms(&self) -> &rustls::crypto::WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

fn identity_error(e: IdentityError) -> Error {
    CertificateError::Other(OtherError(Arc::new(e))).into()
}

/// webpki errors as rustls reports them (mirrors rustls' private mapping),
/// so the alert the peer receives is the standard one.
pub(crate) fn pki_error(error: webpki::Error) -> Error {
    use webpki::Error as E;
    match error {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding.into(),
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }.into()
        }
        E::CertExpired { time, not_after } => {
            CertificateError::ExpiredContext { time, not_after }.into()
        }
        E::InvalidCertValidity => CertificateError::Expired.into(),
        E::UnknownIssuer => CertificateError::UnknownIssuer.into(),
        E::CertRevoked => CertificateError::Revoked.into(),
        E::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus.into(),
        E::CrlExpired { time, next_update } => {
            CertificateError::ExpiredRevocationListContext { time, next_update }.into()
        }
        // The issuer's *name* matched a pinned CA but its key did not sign
        // this: another CA of the same name (every `pki init` for a trust
        // domain has the same CN), so "unknown CA" is the truth, and the
        // peer gets the unknown_ca alert rather than decrypt_error.
        E::InvalidSignatureForPublicKey => CertificateError::UnknownIssuer.into(),
        E::IssuerNotCrlSigner => CertRevocationListError::IssuerInvalidForCrl.into(),
        E::InvalidCrlSignatureForPublicKey => CertRevocationListError::BadSignature.into(),
        #[allow(deprecated)]
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => {
            CertificateError::InvalidPurpose.into()
        }
        other => CertificateError::Other(OtherError(Arc::new(other))).into(),
    }
}

/// Server side: checks client certificates.
pub(crate) struct ClientVerifier {
    pub(crate) trust: Arc<Trust>,
    pub(crate) accept: Vec<Role>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("trust_domain", &self.trust.trust_domain)
            .field("accept", &self.accept)
            .finish()
    }
}

/// The signature checks both verifiers share: the provider's algorithms for
/// the certificate's key (the chain itself is checked by `verify_peer`).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                self.trust.signature_algorithms(),
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                self.trust.signature_algorithms(),
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.trust.signature_algorithms().supported_schemes()
        }
    };
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA hints: the slice would have to borrow from a state that reload
    /// may replace, and our clients (and curl) send their one certificate
    /// regardless of hints.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let usage = webpki::KeyUsage::client_auth();
        match self
            .trust
            .verify_peer(end_entity, intermediates, now, usage, &self.accept)
        {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            // `[dr] cert_grace` (grace.rs): a recently expired client
            // certificate while DR is on; any other refusal stands.
            Err(e) => {
                match self.trust.verify_in_grace(
                    &e,
                    end_entity,
                    intermediates,
                    now,
                    &self.accept,
                    true,
                ) {
                    Some(graced) => graced.map(|_| ClientCertVerified::assertion()),
                    None => Err(e),
                }
            }
        }
    }

    handshake_signatures!();
}

/// Client side: checks the edge's certificate.
///
/// There is deliberately no host name check. The edge's identity is its
/// SPIFFE id under a CA pinned for this deployment alone, which nobody outside
/// the deployment can obtain; the DNS names and addresses by which edges are
/// reached (the DR A record, raw IPs, loopback in tests) change in exactly the
/// situations lifeboat is for, so matching them would add failure modes and no
/// assurance.
pub(crate) struct ServerVerifier {
    pub(crate) trust: Arc<Trust>,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("trust_domain", &self.trust.trust_domain)
            .finish()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.trust
            .verify_peer(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                &[Role::Edge],
            )
            .map(|_| ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Presents whatever certificate and key the trust currently holds.
pub(crate) struct LocalCert(pub(crate) Arc<Trust>);

impl fmt::Debug for LocalCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LocalCert")
            .field(&self.0.state.load().local_id.uri())
            .finish()
    }
}

impl ResolvesServerCert for LocalCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.state.load().certified.clone())
    }
}

impl ResolvesClientCert for LocalCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.state.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Session tickets stamped with the trust epoch: a resumed session skips
/// certificate verification, so after any reload (a new CRL above all), and
/// whenever `[dr] cert_grace` is switched off, every older ticket is refused
/// and the peer does a full, re-verified handshake.
pub(crate) struct EpochTickets {
    pub(crate) inner: Arc<dyn ProducesTickets>,
    pub(crate) trust: Arc<Trust>,
}

impl fmt::Debug for EpochTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpochTickets")
            .field("inner", &self.inner)
            .finish()
    }
}

impl ProducesTickets for EpochTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        // A session accepted under `[dr] cert_grace` is never resumed: each
        // reconnect is re-verified against the mode of the moment.
        if self.trust.grace.refuses_ticket(plain) {
            return None;
        }
        let sealed = self.inner.encrypt(plain)?;
        let mut out = self.trust.epoch().to_be_bytes().to_vec();
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (epoch, sealed) = cipher.split_first_chunk::<8>()?;
        if u64::from_be_bytes(*epoch) != self.trust.epoch() {
            return None;
        }
        self.inner.decrypt(sealed)
    }
}

/// The client's session cache, emptied whenever the trust epoch moves, for
/// the same reason as [`EpochTickets`] (resumption skips verification).
pub(crate) struct EpochSessions {
    trust: Arc<Trust>,
    inner: Mutex<(u64, Arc<ClientSessionMemoryCache>)>,
}

impl EpochSessions {
    pub(crate) fn new(trust: Arc<Trust>) -> Self {
        let epoch = trust.epoch();
        Self {
            trust,
            inner: Mutex::new((
                epoch,
                Arc::new(ClientSessionMemoryCache::new(CLIENT_SESSIONS)),
            )),
        }
    }

    fn current(&self) -> Arc<ClientSessionMemoryCache> {
        let epoch = self.trust.epoch();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.0 != epoch {
            *inner = (
                epoch,
                Arc::new(ClientSessionMemoryCache::new(CLIENT_SESSIONS)),
            );
        }
        inner.1.clone()
    }
}

impl fmt::Debug for EpochSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpochSessions").finish_non_exhaustive()
    }
}

impl ClientSessionStore for EpochSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.current().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.current().kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.current().set_tls12_session(server_name, value);
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.current().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.current().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.current().insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.current().take_tls13_ticket(server_name)
    }
}
