//! One real flow per target through each edge address: dial, open, send
//! the CONNECT preamble, read the answer, name the result word.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::{ClientConfig, Limits, TransportChoice};
use crate::preamble::{self, Dest};
use crate::splice::{RecvHalf, SendHalf, Side};
use crate::transport::dial::{Dialed, Dialer, HEAD_START};
use crate::transport::head::{self, HeadError};
use crate::transport::{
    close_code, quic, quic_end_word, resolve_edges, stream_code, tls, EdgeAddr, TunnelError,
    ALPN_CLIENT,
};
use crate::trust::Trust;

use super::{Outcome, Report, Target};

/// Open one flow to every target through every edge address of `cfg`.
pub async fn run_drill(
    cfg: &ClientConfig,
    file: &Path,
    transport: TransportChoice,
    targets: &[Target],
) -> anyhow::Result<Report> {
    let trust = Trust::load(cfg.tls.files(), &cfg.trust_domain)
        .with_context(|| format!("loading [tls] of {}", file.display()))?;
    let (edges, unresolved) = resolve_edges(&cfg.edges).await;
    let bind: SocketAddr = if edges.iter().any(|e| e.addr.is_ipv6()) {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let dialer = Dialer {
        choice: transport,
        quic: quic::client_endpoint(bind, &trust, ALPN_CLIENT, &cfg.limits, 0)?,
        tls: tls::connector(&trust, ALPN_CLIENT),
        timeout: cfg.limits.handshake_timeout,
        head_start: HEAD_START,
    };
    let mut report = Report::default();
    for e in &unresolved {
        for t in targets {
            report.outcomes.push(Outcome {
                target: t.clone(),
                edge: match e {
                    TunnelError::NoAddress(entry) => entry.clone(),
                    other => other.to_string(),
                },
                transport: None,
                handshake: None,
                setup: None,
                result: "no-address".into(),
                detail: e.to_string(),
            });
        }
    }
    for edge in &edges {
        drill_edge(&dialer, edge, &cfg.limits, targets, &mut report).await;
    }
    dialer.quic.close(close_code::DONE.into(), b"drill done");
    let _ = tokio::time::timeout(Duration::from_secs(1), dialer.quic.wait_idle()).await;
    Ok(report)
}

/// One flow per target through `edge`: over one QUIC tunnel, or over TLS
/// with a connection (and handshake) per flow.
async fn drill_edge(
    dialer: &Dialer,
    edge: &EdgeAddr,
    limits: &Limits,
    targets: &[Target],
    report: &mut Report,
) {
    let started = Instant::now();
    let dialed = dialer.dial(edge, false).await;
    let handshake = started.elapsed();
    let row = |t: &Target| Outcome {
        target: t.clone(),
        edge: edge.addr.to_string(),
        transport: None,
        handshake: None,
        setup: None,
        result: String::new(),
        detail: String::new(),
    };
    let conn = match dialed {
        Err(e) => {
            for t in targets {
                report.outcomes.push(Outcome {
                    result: dial_word(&e),
                    detail: format!("tunnel to the edge: {e}"),
                    ..row(t)
                });
            }
            return;
        }
        Ok(Dialed::Quic(c)) => Some(c),
        // A TLS client flow is its own connection: each target dials anew.
        Ok(Dialed::Tls(_)) => None,
    };
    for t in targets {
        let mut out = row(t);
        let t0 = Instant::now();
        let side = match &conn {
            Some(c) => {
                out.transport = Some("quic");
                out.handshake = Some(handshake);
                quic_side(c).await
            }
            None => {
                out.transport = Some("tls");
                let side = tls_side(dialer, edge).await;
                if side.is_ok() {
                    out.handshake = Some(t0.elapsed());
                }
                side
            }
        };
        let (result, detail) = match side {
            Ok(side) => try_flow(side, &t.dest, limits, t0, &mut out).await,
            Err(e) => e,
        };
        out.result = result;
        out.detail = detail;
        report.outcomes.push(out);
    }
    if let Some(c) = conn {
        c.close(close_code::DONE.into(), b"drill done");
    }
}

/// A flow's stream on the edge's QUIC tunnel, or its result word and why not.
async fn quic_side(c: &quinn::Connection) -> Result<Side, (String, String)> {
    c.open_bi()
        .await
        .map(|(send, recv)| Side {
            recv: RecvHalf::Quic(recv),
            send: SendHalf::Quic(send),
        })
        .map_err(|e| {
            let word = word_of(quic_end_word(&e));
            (word, format!("opening a stream: {e}"))
        })
}

/// A flow's own TLS connection to the edge, or its result word and why not.
async fn tls_side(dialer: &Dialer, edge: &EdgeAddr) -> Result<Side, (String, String)> {
    match dialer.dial_tls(edge).await {
        Ok(s) => {
            let (r, w) = tokio::io::split(s);
            Ok(Side {
                recv: RecvHalf::io(Box::new(r)),
                send: SendHalf::Io(Box::new(w)),
            })
        }
        Err(e) => Err((dial_word(&e), format!("TLS to the edge: {e}"))),
    }
}

/// Open the flow on `side` and end it: finished when established (setup
/// time into `out`), aborted when refused.
async fn try_flow(
    mut side: Side,
    dest: &Dest,
    limits: &Limits,
    t0: Instant,
    out: &mut Outcome,
) -> (String, String) {
    let r = open_flow(&mut side, dest, limits).await;
    if r.0 == "ok" {
        out.setup = Some(t0.elapsed());
        let _ = side.send.finish().await;
    } else {
        side.send.abort(stream_code::ABORTED);
    }
    side.recv.abort(stream_code::ABORTED);
    r
}

/// Send the CONNECT preamble and read the edge's answer: `("ok", "")` or
/// the refusal word and reason.
async fn open_flow(side: &mut Side, dest: &Dest, limits: &Limits) -> (String, String) {
    if let Err(e) = side.send.write(preamble::encode_request(dest)).await {
        return (
            failure_word(&e),
            format!("sending the preamble: {}", io_detail(&e)),
        );
    }
    // The edge answers within its connect timeout plus margin.
    let wait = limits.connect_timeout + Duration::from_secs(5);
    match tokio::time::timeout(wait, read_answer(&mut side.recv, limits.preamble_bytes)).await {
        Err(_) => ("no-answer".into(), format!("no answer within {wait:?}")),
        Ok(Err(e)) => e,
        Ok(Ok((200, _, _))) => ("ok".into(), String::new()),
        Ok(Ok((status, word, reason))) => {
            (word.unwrap_or_else(|| format!("http-{status}")), reason)
        }
    }
}

/// The status, `Lifeboat-Error` word and one-line reason of the edge's answer.
async fn read_answer(
    recv: &mut RecvHalf,
    limit: usize,
) -> Result<(u16, Option<String>, String), (String, String)> {
    match head::read_answer(recv, limit).await {
        Ok((resp, rest)) => {
            let reason = String::from_utf8_lossy(&rest).trim().to_string();
            let word = resp.error.map(|r| r.word().to_string());
            Ok((resp.status, word, reason))
        }
        Err(HeadError::Cut { reset: None, .. }) => {
            let why = "the edge closed the flow without an answer";
            Err(("broken".into(), why.into()))
        }
        Err(HeadError::Cut { reset: Some(e), .. }) => Err((
            failure_word(&e),
            format!("the edge reset the flow: {}", io_detail(&e)),
        )),
        Err(e @ (HeadError::Parse(_) | HeadError::TooLarge)) => {
            Err(("broken".into(), format!("bad answer from the edge: {e}")))
        }
    }
}

/// An I/O error on a flow as the operator reads it: a QUIC stream's "connection
/// lost" says how the connection ended too.
fn io_detail(e: &std::io::Error) -> String {
    let lost = e.get_ref().and_then(|inner| {
        if let Some(quinn::ReadError::ConnectionLost(c)) = inner.downcast_ref() {
            Some(c)
        } else if let Some(quinn::WriteError::ConnectionLost(c)) = inner.downcast_ref() {
            Some(c)
        } else {
            None
        }
    });
    match lost {
        Some(c) => format!("{e}: {c}"),
        None => e.to_string(),
    }
}

/// The result word of an I/O error on a flow: what the TLS alert or the
/// QUIC close that ended it says (a revoked or wrong-role certificate is
/// refused after a TLS 1.3 client thinks its handshake is done, so it
/// shows up here, on the first read), else `broken`.
fn failure_word(e: &std::io::Error) -> String {
    let Some(inner) = e.get_ref() else {
        return "broken".into();
    };
    let word = if let Some(r) = inner.downcast_ref::<rustls::Error>() {
        crate::trust::classify(r)
    } else if let Some(quinn::ReadError::ConnectionLost(c)) = inner.downcast_ref() {
        quic_end_word(c)
    } else if let Some(quinn::WriteError::ConnectionLost(c)) = inner.downcast_ref() {
        quic_end_word(c)
    } else if let Some(c) = inner.downcast_ref::<quinn::ConnectionError>() {
        quic_end_word(c)
    } else {
        "other"
    };
    match word {
        "other" => "broken".into(),
        w => word_of(w),
    }
}

/// The result word of a failed dial. The edge refuses some tunnels after
/// the QUIC handshake, with an application close code that says why.
fn dial_word(e: &TunnelError) -> String {
    use crate::transport::close_code as code;
    use quinn::ConnectionError as C;
    // The code, and the reason text as a fallback: a close sent while the
    // handshake is still in progress reaches us as a transport close.
    let (code, reason) = match e {
        TunnelError::Connection(C::ApplicationClosed(c)) => {
            (u32::try_from(c.error_code.into_inner()).ok(), &c.reason)
        }
        TunnelError::Connection(C::ConnectionClosed(c)) => (None, &c.reason),
        _ => return word_of(e.reason()),
    };
    let by_code = code.and_then(|c| code::word(c.into()));
    const WORDS: [&str; 4] = ["wrong-role", "shed", "going-away", "quota"];
    let by_reason = std::str::from_utf8(reason)
        .ok()
        .and_then(|r| WORDS.into_iter().find(|w| r == *w));
    by_code
        .or(by_reason)
        .map_or_else(|| word_of(e.reason()), str::to_owned)
}

/// A handshake word in DESIGN's result vocabulary.
fn word_of(handshake_word: &str) -> String {
    match handshake_word {
        "foreign-trust-domain" => "wrong-trust-domain",
        w => w,
    }
    .to_owned()
}
