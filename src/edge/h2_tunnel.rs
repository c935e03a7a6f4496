//! A client tunnel over TLS (ALPN `h2`): one HTTP/2 connection carries many
//! flows, each a standard CONNECT stream (RFC 9113 8.5) answered with
//! `:status` and the `lifeboat-error` word. The lifeboat client in TLS mode
//! uses it; so can any HTTP/2 client that speaks CONNECT to a proxy. It runs
//! the same loop as a QUIC client tunnel (`client_tunnel`): the same bounds
//! (`max_flows_per_tunnel` streams at once, per-flow and per-tunnel windows,
//! the identity's flow quota, stalled flows evicted, the certificate
//! watched), PINGs for liveness, GOAWAY when the edge drains.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::client_tunnel::Carrier;
use super::flow::{refuse_h2, Ask};
use crate::config::Limits;
use crate::preamble::Dest;
use crate::refusal::Refusal;
use crate::splice::{RecvHalf, SendHalf, Side};
use crate::transport::{close_code, mux, TransportKind};

/// A CONNECT stream as accepted.
type Request = http::Request<h2::RecvStream>;
type Respond = h2::server::SendResponse<Bytes>;

/// A header list over `preamble_bytes` is refused `too-large` by the edge,
/// with its word; HTTP/2 itself bounds the list at this many times that and
/// answers a larger one with a bare 431.
const HEADER_LIST_HARD_LIMIT: usize = 4;

/// One flow stream: the request, its answer, and whether its header list
/// is over `preamble_bytes`.
pub(super) struct Stream {
    req: Request,
    respond: Respond,
    too_large: bool,
}

/// How long a closing tunnel may take to deliver its last frames.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// The HTTP/2 server side of one client connection.
pub(super) struct H2Carrier {
    conn: h2::server::Connection<TlsStream<TcpStream>, Bytes>,
    /// PINGs; resolves with why the client is taken for dead.
    keepalive: Pin<Box<dyn Future<Output = String> + Send>>,
    /// GOAWAY sent: the connection ends once its streams are done.
    going_away: bool,
    /// `preamble_bytes`: the largest header list a CONNECT may have.
    header_list: usize,
}

impl H2Carrier {
    /// The HTTP/2 handshake on an accepted connection, within
    /// `handshake_timeout`: `max_flows_per_tunnel` streams at once, header
    /// lists up to `preamble_bytes` (see [`HEADER_LIST_HARD_LIMIT`]).
    pub async fn handshake(io: TlsStream<TcpStream>, limits: &Limits) -> Result<Self, String> {
        let hard = limits.preamble_bytes.saturating_mul(HEADER_LIST_HARD_LIMIT);
        let handshake = mux::server(limits, limits.max_flows_per_tunnel)
            .max_header_list_size(u32::try_from(hard).unwrap_or(u32::MAX))
            .handshake::<_, Bytes>(io);
        let mut conn = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("HTTP/2 handshake failed: {e}")),
            Err(_) => return Err("no HTTP/2 preface in time".to_string()),
        };
        let ka = mux::server_keepalive(conn.ping_pong(), limits.keepalive(), limits.idle_timeout);
        Ok(Self {
            conn,
            keepalive: Box::pin(ka),
            going_away: false,
            header_list: limits.preamble_bytes,
        })
    }
}

impl Carrier for H2Carrier {
    type Stream = Stream;
    const KIND: TransportKind = TransportKind::Tls;

    /// Also drives the connection: every stream's frames move while the
    /// loop waits here.
    async fn accept(&mut self) -> Result<Self::Stream, String> {
        tokio::select! {
            next = self.conn.accept() => match next {
                Some(Ok((req, respond))) => Ok(Stream {
                    too_large: header_list_size(&req) > self.header_list,
                    req,
                    respond,
                }),
                Some(Err(e)) => Err(e.to_string()),
                // After a GOAWAY: every stream is done.
                None if self.going_away => Err("edge going away; its flows finished".to_string()),
                None => Err("closed by the client".to_string()),
            },
            why = &mut self.keepalive => Err(why),
        }
    }

    fn flow(
        Stream {
            req,
            respond,
            too_large,
        }: Stream,
    ) -> (Side, Ask) {
        let dest = if too_large {
            Err(Refusal::TooLarge)
        } else {
            connect_dest(&req)
        };
        let side = Side {
            recv: RecvHalf::H2(req.into_body()),
            // Opened by the answer.
            send: SendHalf::Closed,
        };
        (side, Ask::h2(dest, respond))
    }

    async fn refuse(s: Stream, r: Refusal) {
        refuse_h2(s.respond, r, "");
    }

    /// Refused unprocessed, as a QUIC stream is reset.
    fn reject(mut s: Stream) {
        s.respond.send_reset(h2::Reason::REFUSED_STREAM);
    }

    fn go_away(&mut self) {
        self.going_away = true;
        self.conn.graceful_shutdown();
    }

    /// GOAWAY (graceful when going away, else CANCEL: the client learns the
    /// word of a refused certificate from its next handshake), then the
    /// connection driven until it is closed or [`CLOSE_WITHIN`].
    async fn close(&mut self, code: u32, _reason: &str) {
        if code != close_code::GOING_AWAY {
            self.conn.abrupt_shutdown(h2::Reason::CANCEL);
        } else if !self.going_away {
            self.go_away();
        }
        let conn = &mut self.conn;
        let closed = std::future::poll_fn(|cx| conn.poll_closed(cx));
        let _ = tokio::time::timeout(CLOSE_WITHIN, closed).await;
    }
}

/// The size of a request's header list as HTTP/2 counts it (RFC 9113
/// 6.5.2): each field's name and value plus 32, pseudo-header fields too.
fn header_list_size<B>(req: &http::Request<B>) -> usize {
    const FIELD: usize = 32;
    let pseudo = [
        (":method".len(), req.method().as_str().len()),
        (
            ":authority".len(),
            req.uri().authority().map_or(0, |a| a.as_str().len()),
        ),
        (":scheme".len(), req.uri().scheme_str().map_or(0, str::len)),
        (
            ":path".len(),
            req.uri().path_and_query().map_or(0, |p| p.as_str().len()),
        ),
    ];
    let pseudo: usize = pseudo
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(n, v)| n + v + FIELD)
        .sum();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + FIELD)
        .sum();
    pseudo + fields
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
    fn a_header_list_is_sized_as_http2_counts_it() {
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("app.example.test:443")
            .header("x-pad", "p".repeat(100))
            .body(())
            .unwrap();
        // :method CONNECT, :authority app.example.test:443, x-pad: 32 each.
        assert_eq!(
            header_list_size(&req),
            (7 + 7 + 32) + (10 + 20 + 32) + (5 + 100 + 32)
        );
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
