//! Step one of a flow: its destination (the preamble, unless the request
//! named it), the DR mode's word for the user, then the segment.

use bytes::Bytes;
use tracing::{debug, Span};

use super::{Admitted, Cx, Refused};
use crate::preamble::{self, ConnectRequest, Dest};
use crate::refusal::Refusal;
use crate::segments::Lookup;
use crate::splice::{RecvHalf, Side};
use crate::transport::head::{self, HeadError};

/// The destination (the preamble within `preamble_timeout`, unless the
/// request already `named` it), the DR mode's word for this user (first: a
/// flow to a known segment is counted under it), then the segment.
pub(super) async fn admit<'p>(
    cx: &Cx<'p>,
    client: &mut Side,
    named: Option<Result<Dest, Refusal>>,
) -> Result<Admitted<'p>, Refused<'p>> {
    let (dest, early) = match named {
        Some(Ok(dest)) => (dest, Bytes::new()),
        Some(Err(refusal)) => return Err(Refused::answer(refusal, None, None)),
        None => read_destination(cx, client).await?,
    };
    Span::current().record("dest", tracing::field::display(&dest));

    let is_test_user = cx.policy.test_users.contains(&cx.peer.name);
    let lookup = cx.policy.matcher.lookup(&dest);
    let refused = cx.state.mode.borrow().refusal(is_test_user);
    if let Some(r) = refused {
        let segment = match lookup {
            Lookup::Hit(s) => Some(s),
            _ => None,
        };
        return Err(Refused::answer(r, None, segment));
    }
    let segment = match lookup {
        Lookup::Hit(s) => s,
        Lookup::WrongPort(_) => {
            let why = Some("port is outside the DR segment's ports");
            return Err(Refused::answer(Refusal::NotDrSegment, why, None));
        }
        Lookup::Miss => return Err(Refused::answer(Refusal::NotDrSegment, None, None)),
    };
    Ok(Admitted {
        segment,
        dest,
        early,
        is_test_user,
    })
}

/// The preamble within `preamble_timeout`: the destination and any flow
/// bytes that came with it.
async fn read_destination<'p>(
    cx: &Cx<'p>,
    client: &mut Side,
) -> Result<(Dest, Bytes), Refused<'p>> {
    let limits = &cx.policy.limits;
    let head = tokio::time::timeout(
        limits.preamble_timeout,
        read_preamble(&mut client.recv, limits.preamble_bytes),
    )
    .await;
    match head {
        Ok(Ok(Some((req, early)))) => Ok((req.dest, early)),
        Ok(Ok(None)) => Err(Refused::Gone),
        Ok(Err(refusal)) => Err(Refused::answer(refusal, None, None)),
        Err(_) => {
            debug!("no complete preamble within {:?}", limits.preamble_timeout);
            let why = Some("no complete CONNECT preamble in time");
            Err(Refused::answer(Refusal::BadRequest, why, None))
        }
    }
}

/// Read until a whole preamble is in; returns the request and any bytes after it.
/// `Ok(None)` when the stream ends first.
async fn read_preamble(
    recv: &mut RecvHalf,
    limit: usize,
) -> Result<Option<(ConnectRequest, Bytes)>, Refusal> {
    match head::read_head(recv, limit, |buf| preamble::parse_request(buf, limit)).await {
        Ok((req, rest)) => Ok(Some((req, rest.freeze()))),
        Err(HeadError::Cut { buffered: 0, .. }) => Ok(None),
        Err(HeadError::Cut { .. }) => Err(Refusal::BadRequest),
        Err(HeadError::Parse(e)) => Err(e.into()),
        Err(HeadError::TooLarge) => Err(Refusal::TooLarge),
    }
}
