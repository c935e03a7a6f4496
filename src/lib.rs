//! lifeboat: the disaster-recovery Private Service Edge data plane.
//!
//! Pure cores (preamble, refusal, segments, wire, dr) take bytes and return
//! decisions; the async shells (edge, connector, client) own sockets, timers
//! and tasks.
#![forbid(unsafe_code)]

pub mod pki;
pub mod preamble;
pub mod refusal;
pub mod segments;
pub mod trust;
pub mod wire;
