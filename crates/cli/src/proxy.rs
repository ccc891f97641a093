//! `meshgate proxy`: a proxy configured by a control plane.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshgate_identity::SpiffeId;
use meshgate_identity::TrustDomain;
use meshgate_proxy::cp::ControlPlaneAddr;
use meshgate_proxy::managed::ManagedGateway;
use meshgate_proxy::managed::ManagedSidecar;
use meshgate_proxy::roles::sidecar::SidecarOptions;
use meshgate_proxy::telemetry::{Telemetry, TelemetryOptions};
use meshgate_proxy::{GatewayOptions, admin};

/// `meshgate proxy` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// gateway, or sidecar (beside a workload whose traffic something else already redirects
    /// to 15001/15006, as an init container does in Kubernetes; `meshgate run` does it all).
    #[arg(long, default_value = "gateway")]
    pub(crate) role: String,
    /// The control plane's gRPC address.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub(crate) control_plane: String,
    /// One-time join token (`meshgate token create`).
    #[arg(long, env = "MESHGATE_JOIN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The CA bundle to trust the control plane with (default: STATE_DIR/ca-bundle.pem).
    #[arg(long)]
    pub(crate) ca_bundle: Option<PathBuf>,
    /// Where a local control plane keeps its CA bundle.
    #[arg(long, default_value_os_t = crate::default_state_dir())]
    pub(crate) state_dir: PathBuf,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub(crate) trust_domain: String,
    /// The proxy's namespace (as in its join token).
    #[arg(long, default_value = "default")]
    pub(crate) namespace: String,
    /// The proxy's service account (as in its join token).
    #[arg(long, default_value = "gateway")]
    pub(crate) service_account: String,
    /// For a sidecar: the name of its Workload (whose view of the mesh it gets).
    #[arg(long)]
    pub(crate) workload: Option<String>,
    /// Address listeners bind to (gateway).
    #[arg(long, default_value = "0.0.0.0")]
    pub(crate) bind: IpAddr,
    /// Admin endpoint; "off" disables it.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub(crate) admin: String,
    /// Prometheus metrics (/metrics, /stats/prometheus) on this address too (Istio's 15020);
    /// "off": on the admin endpoint only.
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub(crate) metrics: String,
    /// Access logs: a JSON line per request and per TCP connection on standard output,
    /// whatever MeshConfig spec.accessLog says.
    #[arg(long)]
    pub(crate) access_log: bool,
    /// "off": record nothing (no metrics, access logs, traces, tap or graph reports).
    #[arg(long, default_value = "on")]
    pub(crate) telemetry: String,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Gateway: time an HTTP/1.1 client has to send a complete request head (default: the
    /// MeshConfig's spec.downstream.headerTimeout, else 10s; "0s": unbounded).
    #[arg(long, value_parser = crate::parse_duration)]
    pub(crate) header_timeout: Option<Duration>,
}

pub(crate) async fn main(args: Args) -> anyhow::Result<()> {
    if !matches!(args.role.as_str(), "gateway" | "sidecar") {
        anyhow::bail!("--role {}: gateway or sidecar", args.role);
    }
    let admin = crate::parse_admin(&args.admin)?;
    let metrics = parse_metrics(&args.metrics)?;
    let role = if args.role == "sidecar" { "sidecar" } else { "gateway" };
    let telemetry = telemetry(args.access_log, role, parse_telemetry(&args.telemetry)?);
    let bundle_path = args.ca_bundle.clone().unwrap_or_else(|| meshgate_control::run::bundle_path(&args.state_dir));
    let bundle_pem = std::fs::read_to_string(&bundle_path)
        .with_context(|| format!("cannot read the CA bundle {} (--ca-bundle)", bundle_path.display()))?;
    let (target, id) =
        control_plane(&args.control_plane, &args.trust_domain, &bundle_pem, &args.namespace, &args.service_account)?;
    let node = node_name();
    if args.role == "sidecar" {
        let workload = args.workload.clone().context("--role sidecar needs --workload NAME (its Workload)")?;
        let mut opts = SidecarOptions::new(format!("{}/{workload}", args.namespace));
        opts.sink = telemetry.sink.clone();
        opts.drain_timeout = args.drain_timeout;
        let managed = ManagedSidecar::start(target, id.clone(), args.token.clone(), opts, node).await?;
        let roles = telemetry.roles(meshgate_proxy::admin::Roles::sidecar(
            managed.sidecar.core.clone(),
            managed.sidecar.inbound.clone(),
        ));
        serve_admin_and_metrics(admin, metrics, roles).await?;
        tracing::info!(%id, "sidecar proxy started");
        crate::release_cold_pages(managed.sidecar.core.clone());
        crate::gateway::shutdown_signal_quiet().await;
        managed.stop().await;
        telemetry.flush();
        return Ok(());
    }
    let options = GatewayOptions {
        bind: args.bind,
        drain_timeout: args.drain_timeout,
        sink: telemetry.sink.clone(),
        server: meshgate_proxy::conn::ServerSettings {
            header_timeout: args.header_timeout,
            ..meshgate_proxy::conn::ServerSettings::default()
        },
        ..GatewayOptions::default()
    };
    let managed = ManagedGateway::start(target, id.clone(), args.token.clone(), options, node).await?;
    let roles = telemetry.roles(meshgate_proxy::admin::Roles::gateway(managed.gateway.core().clone()));
    serve_admin_and_metrics(admin, metrics, roles).await?;
    tracing::info!(%id, "gateway proxy started");
    crate::release_cold_pages(managed.gateway.core().clone());
    crate::gateway::shutdown_signal_quiet().await;
    managed.stop().await;
    telemetry.flush();
    Ok(())
}

/// Where the control plane is and how to trust it, and the identity `ns/sa` joins as.
pub(crate) fn control_plane(
    addr: &str,
    trust_domain: &str,
    bundle_pem: &str,
    ns: &str,
    sa: &str,
) -> anyhow::Result<(ControlPlaneAddr, SpiffeId)> {
    let td = TrustDomain::new(trust_domain).map_err(|e| anyhow::anyhow!("--trust-domain: {e}"))?;
    let target = ControlPlaneAddr::new(addr, td.clone(), bundle_pem).map_err(|e| anyhow::anyhow!(e))?;
    let id = td.workload_id(ns, sa).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((target, id))
}

/// The node a proxy reports to the control plane.
pub(crate) fn node_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into())
}

/// What a proxy records: metrics, access logs (on when `access_log`, else as the MeshConfig
/// says), traces, `tap` and the graph reports; or, with `--telemetry off`, nothing at all.
#[derive(Clone)]
pub(crate) struct Recording {
    pub(crate) sink: meshgate_proxy::telemetry::Sink,
    pub(crate) telemetry: Option<Arc<Telemetry>>,
}

impl Recording {
    /// `roles` with this proxy's metrics and `tap`.
    pub(crate) fn roles(&self, roles: admin::Roles) -> admin::Roles {
        match &self.telemetry {
            Some(t) => roles.with_telemetry(t.clone()),
            None => roles,
        }
    }

    /// Waits for the access log to be written (before exit).
    pub(crate) fn flush(&self) {
        if let Some(t) = &self.telemetry {
            t.access.flush(Duration::from_secs(2));
        }
    }
}

/// `--telemetry on|off`.
pub(crate) fn parse_telemetry(s: &str) -> anyhow::Result<bool> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => anyhow::bail!("--telemetry {other:?}: on or off"),
    }
}

pub(crate) fn telemetry(access_log: bool, role: &'static str, on: bool) -> Recording {
    if !on {
        return Recording { sink: meshgate_proxy::telemetry::noop(), telemetry: None };
    }
    let t = Arc::new(Telemetry::new(TelemetryOptions { access_log, role }));
    Recording { sink: t.clone(), telemetry: Some(t) }
}

/// `--metrics ADDR|off`.
pub(crate) fn parse_metrics(s: &str) -> anyhow::Result<Option<SocketAddr>> {
    crate::addr_or_off("--metrics", s)
}

/// Serves the admin endpoint on `admin` and the metrics alone on `metrics` (each when given).
pub(crate) async fn serve_admin_and_metrics(
    admin: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    roles: admin::Roles,
) -> anyhow::Result<()> {
    if let Some(addr) = metrics {
        let listener = admin::bind(addr)
            .await
            .with_context(|| format!("cannot listen on metrics address {addr} (--metrics ADDR, or off)"))?;
        tokio::spawn(admin::serve(listener, roles.clone().metrics_only()));
    }
    serve_admin(admin, roles).await
}

/// Serves the admin endpoint of `gateway` on `addr`, when there is one.
pub(crate) async fn serve_admin(addr: Option<SocketAddr>, roles: admin::Roles) -> anyhow::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = admin::bind(addr).await.with_context(|| format!("cannot listen on admin address {addr}"))?;
    tokio::spawn(admin::serve(listener, roles));
    Ok(())
}
