//! A client tunnel over TLS (ALPN `h2`): one HTTP/2 connection carries many
//! flows, each a standard CONNECT stream (RFC 9113 8.5) answered with
//! `:status` and the `lifeboat-error` word. The lifeboat client in TLS mode
//! uses it; so can any HTTP/2 client that speaks CONNECT to a proxy. The
//! same bounds as a QUIC client tunnel: `max_flows_per_tunnel` streams at
//! once, per-flow and per-tunnel windows, the identity's flow quota, PINGs
//! for liveness, stalled flows evicted, the certificate watched for the
//! tunnel's whole life, and GOAWAY when the edge drains.

use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, Instrument};

use super::certs::{cert_watch, CertEnd};
use super::flow::{self, Ask};
use super::quota::Kind;
use super::EdgeState;
use crate::preamble::Dest;
use crate::refusal::Refusal;
use crate::splice::{RecvHalf, SendHalf, Side};
use crate::stall::Stalls;
use crate::transport::{mux, TransportKind};
use crate::trust::SpiffeId;

/// One accepted client connection that asked for `h2`.
pub(super) struct Tunnel {
    pub state: Arc<EdgeState>,
    pub peer: SpiffeId,
    pub tracker: TaskTracker,
    pub drain: CancellationToken,
}

/// A CONNECT stream as accepted.
type Request = http::Request<h2::RecvStream>;
type Respond = h2::server::SendResponse<Bytes>;

impl Tunnel {
    /// Run the HTTP/2 server on `io` until the client leaves, its
    /// certificate is refused, it stops answering PINGs, or the edge
    /// drains (GOAWAY, then the running flows finish).
    pub async fn serve(
        self,
        io: tokio_rustls::server::TlsStream<TcpStream>,
        certs: Vec<CertificateDer<'static>>,
    ) {
        let limits = self.state.policy.load().limits.clone();
        let header_list = u32::try_from(limits.preamble_bytes).unwrap_or(u32::MAX);
        let handshake = mux::server(&limits, limits.max_flows_per_tunnel)
            .max_header_list_size(header_list)
            .handshake::<_, Bytes>(io);
        let mut conn = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return debug!(peer = %self.peer, "HTTP/2 handshake failed: {e}"),
            Err(_) => return debug!(peer = %self.peer, "no HTTP/2 preface in time"),
        };
        let tunnels = self
            .state
            .metrics
            .tunnels_active
            .with_label_values(&["client", TransportKind::Tls.as_str()]);
        tunnels.inc();
        info!(peer = %self.peer, transport = "tls", "client tunnel up");
        let peer_uri: Arc<str> = self.peer.uri().into();
        let peer = Arc::new(self.peer.clone());
        let cert_end = cert_watch(Arc::clone(&self.state), certs);
        tokio::pin!(cert_end);
        let ka = mux::server_keepalive(conn.ping_pong(), &limits);
        tokio::pin!(ka);
        let cert_refused = CancellationToken::new();
        let stalls = Arc::new(Stalls::new(
            limits.effective_tunnel_window(),
            limits.flow_window,
        ));
        // This tunnel's own flows: a draining tunnel closes when they are done.
        let mine = TaskTracker::new();
        let mut going_away = false;
        let why = loop {
            tokio::select! {
                end = &mut cert_end => {
                    // Running flows end with a reset counted as cert-refused;
                    // the client learns the word from its next handshake.
                    cert_refused.cancel();
                    conn.abrupt_shutdown(h2::Reason::CANCEL);
                    break match end {
                        CertEnd::Refused(reason) => format!("certificate no longer accepted: {reason}"),
                        CertEnd::GraceOver => "certificate expired and DR is no longer on".to_string(),
                    };
                }
                next = conn.accept() => match next {
                    Some(Ok((req, respond))) => {
                        let from = flow::FromTunnel {
                            cert_refused: cert_refused.clone(),
                            stalls: Some(Arc::clone(&stalls)),
                        };
                        if let Some(flow) = self.admit(&peer_uri, &peer, (req, respond), going_away, from) {
                            self.tracker.spawn(mine.track_future(flow));
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    // After a GOAWAY: every stream is done.
                    None if going_away => break "edge going away; its flows finished".to_string(),
                    None => break "closed by the client".to_string(),
                },
                why = &mut ka => break why,
                // Going away: GOAWAY tells the client to open new flows
                // elsewhere; the flows running here finish (or the drain
                // deadline aborts them) and the connection closes.
                _ = self.drain.cancelled(), if !going_away => {
                    going_away = true;
                    mine.close();
                    conn.graceful_shutdown();
                }
            }
        };
        tunnels.dec();
        info!(peer = %peer, transport = "tls", "client tunnel down: {why}");
    }

    /// Take one CONNECT stream: the flow to run, or `None` when it was
    /// refused at once (the edge is draining, the identity's flow quota or
    /// the edge's `max_flows` is used up).
    fn admit(
        &self,
        peer_uri: &Arc<str>,
        peer: &Arc<SpiffeId>,
        (req, mut respond): (Request, Respond),
        going_away: bool,
        from: flow::FromTunnel,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let state = &self.state;
        let refused = |r: Refusal, respond: Respond| {
            state.metrics.refused_unmatched(r).inc();
            tokio::spawn(refuse(respond, r));
        };
        if going_away {
            // Crossed the GOAWAY: not forwarded; the client opens it elsewhere.
            refused(Refusal::GoingAway, respond);
            return None;
        }
        let max = state.policy.load().limits.max_flows_per_identity;
        let Some(quota) = state.quotas.take(peer_uri, Kind::Flow, max) else {
            refused(Refusal::Quota, respond);
            return None;
        };
        let Ok(permit) = Arc::clone(&state.flows).try_acquire_owned() else {
            // Over max_flows: refused unprocessed, as a QUIC stream is reset.
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            return None;
        };
        let dest = connect_dest(&req);
        let side = Side {
            recv: RecvHalf::H2(req.into_body()),
            // Opened by the answer.
            send: SendHalf::Closed,
        };
        let id = state.next_id();
        let span = tracing::debug_span!("flow", id, dest = tracing::field::Empty);
        let ask = Ask::H2 { dest, respond };
        let flow = flow::serve(
            Arc::clone(state),
            Arc::clone(peer),
            id,
            (side, ask),
            (permit, quota),
            from,
        );
        Some(flow.instrument(span))
    }
}

/// The destination of a CONNECT request: its `:authority`, checked as a
/// preamble's is. Another method is refused `method`.
fn connect_dest<B>(req: &http::Request<B>) -> Result<Dest, Refusal> {
    if req.method() != http::Method::CONNECT {
        return Err(Refusal::Method);
    }
    let authority = req.uri().authority().ok_or(Refusal::BadRequest)?;
    Dest::parse(authority.as_str()).map_err(Refusal::from)
}

/// Answer a stream refused before it became a flow.
async fn refuse(mut respond: Respond, r: Refusal) {
    let body = r.reason_line("");
    if let Ok(mut send) = respond.send_response(r.h2_head(&body), false) {
        let _ = send.send_data(body, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest_of(method: http::Method, uri: &str) -> Result<Dest, Refusal> {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap();
        connect_dest(&req)
    }

    #[test]
    fn a_connect_names_its_destination_by_authority() {
        let d = dest_of(http::Method::CONNECT, "app.example.test:443").unwrap();
        assert_eq!(d.to_string(), "app.example.test:443");
        let d = dest_of(http::Method::CONNECT, "[::1]:8080").unwrap();
        assert_eq!(d.port, 8080);
    }

    #[test]
    fn other_methods_and_bad_authorities_get_their_words() {
        assert_eq!(
            dest_of(http::Method::GET, "https://app.example.test/"),
            Err(Refusal::Method)
        );
        // No port: a CONNECT target is host:port.
        assert_eq!(
            dest_of(http::Method::CONNECT, "app.example.test"),
            Err(Refusal::BadRequest)
        );
        assert_eq!(
            dest_of(http::Method::CONNECT, "/path"),
            Err(Refusal::BadRequest)
        );
    }
}
