//! Process signals: SIGTERM/SIGINT start a drain, SIGHUP asks for a reload.
//! Roles take a drain token; each bounds its own drain by
//! `[limits] drain_timeout` and then aborts what is left.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Cancel `drain` on the first SIGTERM or SIGINT; send on `reload` for each SIGHUP.
pub fn install(drain: CancellationToken, reload: mpsc::Sender<()>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    if reload.try_send(()).is_err() {
                        tracing::warn!("reload already pending; SIGHUP coalesced");
                    }
                }
            }
        }
        tracing::info!("signal received; draining");
        drain.cancel();
        // A second signal while draining is ignored: the drain has its own deadline.
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {}
            }
        }
    });
    Ok(())
}
