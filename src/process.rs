//! A role as a process: read the config file, set up metrics, the DR
//! trigger, the admin listener and signals (SIGTERM/SIGINT drain, SIGHUP
//! reload), then run the role until it has drained.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::admin;
use crate::client::Client;
use crate::config::{self, ClientConfig, ConnectorConfig, EdgeConfig};
use crate::connector::Connector;
use crate::edge::Edge;
use crate::metrics::Metrics;
use crate::trust::Role;

fn signals() -> anyhow::Result<(CancellationToken, mpsc::Receiver<()>)> {
    let drain = CancellationToken::new();
    let (tx, rx) = mpsc::channel(1);
    crate::shutdown::install(drain.clone(), tx)?;
    Ok((drain, rx))
}

/// `lifeboat edge -c FILE`.
pub async fn edge(file: &Path) -> anyhow::Result<()> {
    let (cfg, text) = config::load_with_text::<EdgeConfig>(file)?;
    let (drain, mut reload) = signals()?;
    let metrics = Arc::new(Metrics::new("edge"));
    let mode = crate::dr::trigger::start_for(
        Role::Edge,
        &cfg.dr,
        &cfg.dns,
        Arc::clone(&metrics),
        drain.clone(),
    )?;
    metrics.init_connector_groups(
        cfg.connector_groups
            .iter()
            .filter(|g| g.dr)
            .map(|g| g.name.as_str()),
    );
    let admin_addr = cfg.listen.admin;
    let edge = Edge::bind(cfg, file, &text, mode, Arc::clone(&metrics))?;
    let state = edge.state();
    if let Some(addr) = admin_addr {
        let l = admin::bind(addr).await?;
        let ready = admin::edge_readiness(Arc::clone(&metrics));
        tokio::spawn(admin::serve(l, Arc::clone(&metrics), ready, drain.clone()));
    }
    let file = file.to_path_buf();
    tokio::spawn(async move {
        while reload.recv().await.is_some() {
            match state.reload(&file) {
                Ok(outcome) => info!(?outcome, "reload done"),
                Err(e) => error!("{e:#}"),
            }
        }
    });
    edge.run(drain).await
}

/// `lifeboat connector -c FILE`.
pub async fn connector(file: &Path) -> anyhow::Result<()> {
    let cfg = config::load::<ConnectorConfig>(file)?;
    let (drain, mut reload) = signals()?;
    let metrics = Arc::new(Metrics::new("connector"));
    let admin_addr = cfg.listen.admin;
    let connector = Connector::bind(cfg, file, Arc::clone(&metrics))?;
    if let Some(addr) = admin_addr {
        let l = admin::bind(addr).await?;
        let ready = admin::connector_readiness(Arc::clone(&metrics));
        tokio::spawn(admin::serve(l, Arc::clone(&metrics), ready, drain.clone()));
    }
    let state = connector.state();
    let m = Arc::clone(&metrics);
    tokio::spawn(async move {
        while reload.recv().await.is_some() {
            match state.trust.reload() {
                Ok(()) => {
                    m.config_reloads.with_label_values(&["ok"]).inc();
                    info!("reload: certificates, CA and CRL re-read");
                }
                Err(e) => {
                    m.config_reloads.with_label_values(&["error"]).inc();
                    error!("reload kept the old certificates: {e}");
                }
            }
        }
    });
    connector.run(drain).await
}

/// `lifeboat client -c FILE`.
pub async fn client(file: &Path) -> anyhow::Result<()> {
    let cfg = config::load::<ClientConfig>(file)?;
    let (drain, mut reload) = signals()?;
    let metrics = Arc::new(Metrics::new("client"));
    let mode = crate::dr::trigger::start_for(
        Role::Client,
        &cfg.dr,
        &cfg.dns,
        Arc::clone(&metrics),
        drain.clone(),
    )?;
    let admin_addr = cfg.listen.admin;
    let client = Client::bind(cfg, file, mode, Arc::clone(&metrics)).await?;
    if let Some(addr) = admin_addr {
        let l = admin::bind(addr).await?;
        let ready = admin::client_readiness(Arc::clone(&metrics));
        tokio::spawn(admin::serve(l, Arc::clone(&metrics), ready, drain.clone()));
    }
    tokio::spawn(async move {
        while reload.recv().await.is_some() {
            info!("reload: the client re-reads its config on restart; SIGHUP ignored");
        }
    });
    client.run(drain).await
}
