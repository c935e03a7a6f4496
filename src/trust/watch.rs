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
use crate::metrics::Metrics;

/// How often the files' modification times and lengths are compared.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Watch `trust`'s files until `stop`. After each reload the certificate
/// expiry gauges of `metrics` are updated and `on_reload` runs; each refused
/// version counts once in `metrics`.
pub fn spawn(
    trust: Arc<Trust>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
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
                    metrics.observe_trust(&trust);
                    on_reload(&trust);
                }
                Ok(false) => {}
                Err(e) => {
                    metrics.config_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(
                        "certificate, CA or CRL file changed but cannot be used; the previous ones stay: {e}"
                    );
                }
            }
        }
    });
}
