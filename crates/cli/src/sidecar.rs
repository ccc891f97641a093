//! `meshgate sidecar` (started by `meshgate run` inside the workload's namespace): the proxy
//! beside one workload. It opens what needs root, drops to the proxy user (whose traffic the
//! redirection rules leave alone), gets its certificate and first configuration, prints
//! `READY` on stdout, and drains on SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use meshgate_proxy::managed::ManagedSidecar;
use meshgate_proxy::roles::sidecar::SidecarOptions;

/// `meshgate sidecar` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The control plane's gRPC address.
    #[arg(long)]
    pub(crate) control_plane: String,
    /// One-time join token.
    #[arg(long, env = "MESHGATE_JOIN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The CA bundle to trust the control plane with.
    #[arg(long)]
    pub(crate) ca_bundle: PathBuf,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub(crate) trust_domain: String,
    /// The workload's namespace.
    #[arg(long)]
    pub(crate) namespace: String,
    /// The Workload's name.
    #[arg(long)]
    pub(crate) name: String,
    /// Its service account.
    #[arg(long)]
    pub(crate) service_account: String,
    /// The namespace's hosts file, rewritten in place with the mesh's Services.
    #[arg(long)]
    pub(crate) hosts_file: Option<PathBuf>,
    /// Drop to this uid (and gid) once the root-only files are open.
    #[arg(long)]
    pub(crate) uid: Option<u32>,
    /// Admin endpoint inside the namespace; "off" disables it.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub(crate) admin: String,
    /// Access logs: a JSON line per request and per TCP connection on standard output.
    #[arg(long)]
    pub(crate) access_log: bool,
    /// Prometheus metrics inside the namespace (Istio's 15020); "off": admin endpoint only.
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub(crate) metrics: String,
    /// "off": record nothing (no metrics, access logs, traces, tap or graph reports).
    #[arg(long, default_value = "on")]
    pub(crate) telemetry: String,
    /// How long connections may take to finish on shutdown.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub(crate) drain_timeout: Duration,
}

/// What is read with root privileges, before dropping them.
pub(crate) struct Privileged {
    pub(crate) bundle_pem: String,
    pub(crate) hosts_file: Option<std::fs::File>,
}

/// Reads the bundle, opens the hosts file, then becomes `uid` (if given).
pub(crate) fn prepare(args: &Args) -> anyhow::Result<Privileged> {
    let (ca_bundle, hosts, uid) = (&args.ca_bundle, args.hosts_file.as_ref(), args.uid);
    let bundle_pem = std::fs::read_to_string(ca_bundle)
        .with_context(|| format!("cannot read the CA bundle {} (--ca-bundle)", ca_bundle.display()))?;
    let hosts_file = match hosts {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .with_context(|| format!("cannot open {} (--hosts-file)", p.display()))?,
        ),
        None => None,
    };
    if let Some(uid) = uid {
        meshgate_intercept::become_proxy_user(uid, uid).with_context(|| format!("cannot become uid {uid}"))?;
    }
    Ok(Privileged { bundle_pem, hosts_file })
}

pub(crate) async fn main(args: Args, privileged: Privileged) -> anyhow::Result<()> {
    let (target, id) = crate::proxy::control_plane(
        &args.control_plane,
        &args.trust_domain,
        &privileged.bundle_pem,
        &args.namespace,
        &args.service_account,
    )?;
    let mut opts = SidecarOptions::new(format!("{}/{}", args.namespace, args.name));
    let telemetry =
        crate::proxy::telemetry(args.access_log, "sidecar", crate::proxy::parse_telemetry(&args.telemetry)?);
    opts.sink = telemetry.sink.clone();
    opts.drain_timeout = args.drain_timeout;
    opts.hosts_file = privileged.hosts_file;
    let admin = crate::parse_admin(&args.admin)?;
    let metrics = crate::proxy::parse_metrics(&args.metrics)?;
    let managed = ManagedSidecar::start(target, id.clone(), args.token, opts, crate::proxy::node_name()).await?;
    if tokio::time::timeout(Duration::from_secs(30), managed.configured()).await.is_err() {
        anyhow::bail!("no configuration from the control plane within 30 s");
    }
    let roles = telemetry
        .roles(meshgate_proxy::admin::Roles::sidecar(managed.sidecar.core.clone(), managed.sidecar.inbound.clone()));
    crate::proxy::serve_admin_and_metrics(admin, metrics, roles).await?;
    tracing::info!(%id, "sidecar ready");
    // The signal `meshgate run` waits for before starting the application.
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").context("telling meshgate run")?;
    out.flush().context("telling meshgate run")?;
    drop(out);
    crate::release_cold_pages(managed.sidecar.core.clone());
    // SIGTERM only: Ctrl-C goes to the application first (the sidecar is in its own process
    // group), and `meshgate run` terminates the sidecar once the application is gone.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    term.recv().await;
    tracing::info!("draining");
    managed.stop().await;
    telemetry.flush();
    Ok(())
}
