//! Re-reading certificate, key, CA and CRL files when they change on disk
//! (revoking a lost laptop must take effect without a signal, in every DR
//! mode). A change that does not load (a garbage file, a CRL that goes
//! back or breaks CRL hygiene) is logged and counted once, as a failed
//! SIGHUP reload is (`lifeboat_config_reloads_total{result="error"}`), and
//! the old state stays.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Trust;

/// How often the files' modification times and lengths are compared.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// What the watcher reports to: the role's `Metrics` (a trait, so that
/// `trust` does not depend on `metrics`, which depends on `trust`).
pub trait Observer: Send + Sync + 'static {
    /// A new state is in force (the certificate expiry gauges follow it).
    fn reloaded(&self, trust: &Trust);
    /// A changed version of the files could not be used; the old state stays.
    fn refused(&self);
}

/// Watch `trust`'s files until `stop`. After each reload `metrics` hears of
/// it and `on_reload` runs; each refused version is reported once.
pub fn spawn(
    trust: Arc<Trust>,
    stop: CancellationToken,
    metrics: Arc<impl Observer>,
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
                    metrics.reloaded(&trust);
                    on_reload(&trust);
                }
                Ok(false) => {}
                Err(e) => {
                    metrics.refused();
                    tracing::error!(
                        "certificate, CA or CRL file changed but cannot be used; the previous ones stay: {e}"
                    );
                }
            }
        }
    });
}
