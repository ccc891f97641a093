//! `meshgate proxy`: a proxy configured by a control plane.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use meshgate_identity::TrustDomain;
use meshgate_proxy::cp::ControlPlaneAddr;
use meshgate_proxy::managed::ManagedGateway;
use meshgate_proxy::{GatewayOptions, admin};

pub(crate) struct Args {
    pub(crate) role: String,
    pub(crate) control_plane: String,
    pub(crate) token: Option<String>,
    pub(crate) ca_bundle: Option<PathBuf>,
    pub(crate) state_dir: PathBuf,
    pub(crate) trust_domain: String,
    pub(crate) namespace: String,
    pub(crate) service_account: String,
    pub(crate) bind: IpAddr,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) access_log: bool,
    pub(crate) drain_timeout: Duration,
}

pub(crate) async fn main(args: Args) -> anyhow::Result<()> {
    if args.role != "gateway" {
        anyhow::bail!(
            "--role {}: only `gateway` runs under `meshgate proxy` in this version; sidecars run under `meshgate run`",
            args.role
        );
    }
    let td = TrustDomain::new(&args.trust_domain).map_err(|e| anyhow::anyhow!("--trust-domain: {e}"))?;
    let bundle_path = args.ca_bundle.clone().unwrap_or_else(|| meshgate_control::run::bundle_path(&args.state_dir));
    let bundle_pem = std::fs::read_to_string(&bundle_path)
        .with_context(|| format!("cannot read the CA bundle {} (--ca-bundle)", bundle_path.display()))?;
    let target = ControlPlaneAddr::new(&args.control_plane, td.clone(), &bundle_pem).map_err(|e| anyhow::anyhow!(e))?;
    let id = td.workload_id(&args.namespace, &args.service_account).map_err(|e| anyhow::anyhow!("{e}"))?;
    let options = GatewayOptions {
        bind: args.bind,
        drain_timeout: args.drain_timeout,
        access_log: args.access_log,
        ..GatewayOptions::default()
    };
    let node = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let managed = ManagedGateway::start(target, id.clone(), args.token.clone(), options, node).await?;
    if let Some(addr) = args.admin {
        let listener = admin::bind(addr).await.with_context(|| format!("cannot listen on admin address {addr}"))?;
        tokio::spawn(admin::serve(listener, managed.gateway.clone()));
    }
    tracing::info!(%id, "gateway proxy started");
    crate::gateway::shutdown_signal_quiet().await;
    managed.stop().await;
    Ok(())
}
