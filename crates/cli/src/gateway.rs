//! `meshgate gateway`: serve Gateway API resources from files, reload on change, drain on
//! SIGTERM/SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use meshgate_proxy::{Gateway, GatewayOptions, source};

pub(crate) struct Options {
    pub(crate) paths: Vec<PathBuf>,
    pub(crate) bind: IpAddr,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) drain_timeout: Duration,
    pub(crate) access_log: bool,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) telemetry: bool,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) header_timeout: Option<Duration>,
    pub(crate) ingress: meshgate_model::ingress::IngressPorts,
}

pub(crate) async fn run(opts: Options) -> anyhow::Result<()> {
    let telemetry = crate::proxy::telemetry(opts.access_log, "gateway", opts.telemetry);
    let gateway = Gateway::new(GatewayOptions {
        bind: opts.bind,
        drain_timeout: opts.drain_timeout,
        sink: telemetry.sink.clone(),
        server: meshgate_proxy::conn::ServerSettings {
            idle_timeout: opts.idle_timeout,
            header_timeout: opts.header_timeout,
            ..meshgate_proxy::conn::ServerSettings::default()
        },
        ingress: opts.ingress.clone(),
        ..GatewayOptions::default()
    });
    // The first configuration must be valid: there is no last good one to fall back to.
    let (_, compiled) = match source::load_over(&opts.paths, None, opts.ingress) {
        Ok(c) => c,
        Err(errors) => bail!("configuration is invalid ({} error(s)):\n{errors}", errors.len()),
    };
    for p in compiled.problems() {
        tracing::warn!("{p}");
    }
    let sources = opts.paths.iter().map(|p| p.display().to_string()).collect();
    if let Err(errors) = gateway.apply(compiled, sources).await {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("{}", text.join("\n"));
    }
    let roles = telemetry.roles(meshgate_proxy::admin::Roles::gateway(gateway.core().clone()));
    crate::proxy::serve_admin_and_metrics(opts.admin, opts.metrics, roles).await?;
    if let Some(addr) = opts.admin {
        tracing::info!(%addr, "admin endpoint: /ready /config_dump /certs /metrics /tap");
    }
    if let Some(addr) = opts.metrics {
        tracing::info!(%addr, "metrics: /metrics /stats/prometheus");
    }
    let watcher = tokio::spawn(source::watch(opts.paths.clone(), gateway.clone()));
    crate::release_cold_pages(gateway.core().clone());
    shutdown_signal().await?;
    tracing::info!(timeout = ?opts.drain_timeout, "shutting down: draining connections");
    watcher.abort();
    gateway.drain().await;
    telemetry.flush();
    tracing::info!("stopped");
    Ok(())
}

/// Waits for SIGTERM or SIGINT (or forever when the handlers cannot be installed).
pub(crate) async fn shutdown_signal_quiet() {
    if shutdown_signal().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
