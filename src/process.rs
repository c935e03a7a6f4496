//! A role as a process: read the config file, set up metrics, the DR
//! trigger, the admin listener and signals (SIGTERM/SIGINT drain, SIGHUP
//! reload), then run the role until it has drained.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin;
use crate::client::Client;
use crate::config::{
    self, ClientConfig, ConfigError, ConnectorConfig, DnsSection, DrSection, EdgeConfig,
    RestartNeeded, RoleConfig, Validity,
};
use crate::connector::Connector;
use crate::dr_mode::DrMode;
use crate::edge::{Edge, ReloadOutcome};
use crate::metrics::Metrics;
use crate::trust::Role;

fn signals() -> anyhow::Result<(CancellationToken, mpsc::Receiver<()>)> {
    let drain = CancellationToken::new();
    let (tx, rx) = mpsc::channel(1);
    crate::shutdown::install(drain.clone(), tx)?;
    Ok((drain, rx))
}

/// A role's metrics and its view of the DR mode, its trigger started
/// (stopped at `drain`).
fn metrics_and_mode(
    role: Role,
    dr: &DrSection,
    dns: &DnsSection,
    drain: &CancellationToken,
) -> anyhow::Result<(Arc<Metrics>, watch::Receiver<DrMode>)> {
    let metrics = Arc::new(Metrics::new(role.as_str()));
    let mode = crate::dr::trigger::start_for(role, dr, dns, Arc::clone(&metrics), drain.clone())?;
    Ok((metrics, mode))
}

/// Reads and validates `file`, then loads every file it names as
/// `lifeboat check` does, so what would stop the role is a [`ConfigError`]
/// naming file, key and line (exit 2) before anything is bound. A
/// certificate outside its validity period is only warned about here.
fn load_role<T: RoleConfig>(file: &Path) -> Result<(T, String), ConfigError> {
    let (cfg, text) = config::load_with_text::<T>(file)?;
    for w in config::check_files(&cfg.files(), file, &text, Validity::Warn)? {
        warn!("{w}");
    }
    Ok((cfg, text))
}

/// `lifeboat edge -c FILE`.
pub async fn edge(file: &Path) -> anyhow::Result<()> {
    let (cfg, text) = load_role::<EdgeConfig>(file)?;
    let (drain, mut reload) = signals()?;
    let (metrics, mode) = metrics_and_mode(Role::Edge, &cfg.dr, &cfg.dns, &drain)?;
    let admin_addr = cfg.listen.admin;
    let edge = Edge::bind(cfg, file, &text, mode, Arc::clone(&metrics))?;
    let state = edge.state();
    // The admin listener outlives the drain: `/readyz` answers 503 while
    // the edge goes away, so load balancers take it out first.
    let admin_stop = CancellationToken::new();
    if let Some(addr) = admin_addr {
        let l = admin::bind(addr).await?;
        let ready = unless_draining(admin::edge_readiness(Arc::clone(&metrics)), drain.clone());
        tokio::spawn(admin::serve(
            l,
            Arc::clone(&metrics),
            ready,
            admin_stop.clone(),
        ));
    }
    let file = file.to_path_buf();
    tokio::spawn(async move {
        while reload.recv().await.is_some() {
            // Parse and compile (100k segments: a fraction of a second) off
            // the runtime's workers.
            let (state, file) = (Arc::clone(&state), file.clone());
            match tokio::task::spawn_blocking(move || state.reload(&file)).await {
                Ok(Ok(ReloadOutcome::Applied)) => info!("reload done: applied"),
                Ok(Ok(ReloadOutcome::PolicyRefused)) => {
                    info!(
                        "reload done: certificates re-read, policy changes refused while DR is on"
                    );
                }
                Ok(Err(e)) => error!("{e:#}"),
                Err(e) => error!("reload task failed: {e}"),
            }
        }
    });
    let result = edge.run(drain).await;
    admin_stop.cancel();
    Ok(result?)
}

/// Not ready while draining, whatever `ready` says.
fn unless_draining(ready: admin::Readiness, drain: CancellationToken) -> admin::Readiness {
    Arc::new(move || {
        if drain.is_cancelled() {
            return Err("draining: the edge is going away".into());
        }
        ready()
    })
}

/// `lifeboat connector -c FILE`.
pub async fn connector(file: &Path) -> anyhow::Result<()> {
    let (cfg, _) = load_role::<ConnectorConfig>(file)?;
    let running = cfg.clone();
    let (drain, reload) = signals()?;
    let metrics = Arc::new(Metrics::new("connector"));
    let admin_addr = cfg.listen.admin;
    let connector = Connector::bind(cfg, file, Arc::clone(&metrics))?;
    let ready = admin::connector_readiness(Arc::clone(&metrics));
    serve_admin(admin_addr, ready, &metrics, &drain).await?;
    watch_reloads(reload, &connector.state().trust, metrics, file, running);
    Ok(connector.run(drain).await?)
}

/// `lifeboat client -c FILE`.
pub async fn client(file: &Path) -> anyhow::Result<()> {
    let (cfg, _) = load_role::<ClientConfig>(file)?;
    let running = cfg.clone();
    let (drain, reload) = signals()?;
    let (metrics, mode) = metrics_and_mode(Role::Client, &cfg.dr, &cfg.dns, &drain)?;
    let admin_addr = cfg.listen.admin;
    let client = Client::bind(cfg, file, mode, Arc::clone(&metrics)).await?;
    let ready = admin::client_readiness(Arc::clone(&metrics));
    serve_admin(admin_addr, ready, &metrics, &drain).await?;
    watch_reloads(reload, &client.state().trust, metrics, file, running);
    Ok(client.run(drain).await?)
}

/// A connector's or client's admin listener, if `[listen] admin` is set,
/// answering `/readyz` with `ready` until `stop`.
async fn serve_admin(
    addr: Option<SocketAddr>,
    ready: admin::Readiness,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        let l = admin::bind(addr).await?;
        tokio::spawn(admin::serve(l, Arc::clone(metrics), ready, stop.clone()));
    }
    Ok(())
}

/// A connector's or client's SIGHUP: certificates, CA and CRL re-read
/// always, whatever the config says (a renewed certificate is used by the
/// next handshake); the config is checked so that a bad edit is reported
/// now, not at the next restart.
fn watch_reloads<T: RoleConfig + RestartNeeded + Send + 'static>(
    mut reload: mpsc::Receiver<()>,
    trust: &Arc<crate::trust::Trust>,
    m: Arc<Metrics>,
    file: &Path,
    mut running: T,
) {
    let (trust, file) = (Arc::clone(trust), file.to_path_buf());
    tokio::spawn(async move {
        while reload.recv().await.is_some() {
            let trust = reload_trust(&trust, &m);
            let checked = check_config(&file, &mut running);
            count_reload(&m, trust, checked);
        }
    });
}

/// Re-read certificates, CA and CRL; refresh the expiry gauges.
fn reload_trust(trust: &crate::trust::Trust, m: &Metrics) -> anyhow::Result<()> {
    trust.reload()?;
    m.observe_trust(trust);
    Ok(())
}

/// Re-reads and validates a connector or client config. Their state is
/// fixed at start-up, so a valid change is only reported as needing a
/// restart (`running` then follows the file, so each change is reported
/// once); a bad file is the error.
fn check_config<T: RoleConfig + RestartNeeded>(file: &Path, running: &mut T) -> anyhow::Result<()> {
    let new = config::load::<T>(file)?;
    let restart = running.restart_needed(&new);
    if !restart.is_empty() {
        warn!(
            "reload: changes to {} need a restart and were not applied",
            restart.join(", ")
        );
    }
    *running = new;
    Ok(())
}

/// Counts and logs one connector or client reload.
fn count_reload(m: &Metrics, trust: anyhow::Result<()>, config: anyhow::Result<()>) {
    let ok = trust.is_ok() && config.is_ok();
    m.config_reloads
        .with_label_values(&[if ok { "ok" } else { "error" }])
        .inc();
    match trust {
        Ok(()) => info!("reload: certificates, CA and CRL re-read"),
        Err(e) => error!("reload kept the old certificates: {e:#}"),
    }
    if let Err(e) = config {
        error!("reload: config file is invalid (the running config stays): {e:#}");
    }
}
