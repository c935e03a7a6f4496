//! DR mode: the TXT record format (`record`), the mode machine that decides
//! from lookups and time (`machine`), and the async watcher that resolves,
//! sleeps and feeds the mode to the roles (`trigger`). Everything but
//! `trigger` is pure. What a mode is, where it comes from and the signing
//! keys live one level down, in `dr_mode` (re-exported here), so `config`
//! and `metrics` can name them without depending on the watcher.

pub mod machine;
pub mod record;
pub mod trigger;

pub use crate::dr_mode::{key, DrMode, Trigger};
