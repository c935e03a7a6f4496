//! Re-reading certificate, key, CA and CRL files when they change on disk
//! (revoking a lost laptop must take effect without a signal, in every DR
//! mode). A change that does not load is reported once and the old state
//! stays.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Trust;

/// How often the files' modification times and lengths are compared.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Watch `trust`'s files until `stop`; `on_reload` runs after each reload.
pub fn spawn(
    trust: Arc<Trust>,
    stop: CancellationToken,
    on_reload: impl Fn(&Trust) + Send + 'static,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            match trust.reload_if_changed() {
                Ok(true) => {
                    tracing::info!("certificate, CA or CRL file changed on disk: re-read");
                    on_reload(&trust);
                }
                Ok(false) => {}
                Err(e) => tracing::error!(
                    "certificate, CA or CRL file changed but cannot be used; the previous ones stay: {e}"
                ),
            }
        }
    });
}
