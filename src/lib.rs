//! lifeboat: the disaster-recovery Private Service Edge data plane.
//!
//! Pure cores (preamble, refusal, segments, wire, dr::record) take bytes and
//! return decisions; the async shells (edge, connector, client) own sockets,
//! timers and tasks.
#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod backoff;
pub mod check;
pub mod client;
pub mod config;
pub mod connector;
pub mod demo;
pub mod dns;
pub mod dns_record;
pub mod dr;
pub mod dr_mode;
pub mod drill;
pub mod edge;
#[doc(hidden)]
pub mod fuzzing;
pub mod loadgen;
pub mod metrics;
pub mod pki;
pub mod preamble;
pub mod process;
pub mod refusal;
pub mod role_error;
pub mod segments;
pub mod shutdown;
pub mod splice;
pub mod stall;
pub mod transport;
pub mod trust;
pub mod wire;
