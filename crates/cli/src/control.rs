//! `meshgate control-plane`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use meshgate_control::plane::Options;
use meshgate_control::run::{RunOptions, run};
use meshgate_identity::TrustDomain;

/// `meshgate control-plane` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// dir:PATH or etcd:HOST:PORT[,HOST:PORT...].
    #[arg(long, default_value = "dir:./mesh")]
    pub(crate) store: String,
    /// gRPC API for proxies (TLS).
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub(crate) grpc: SocketAddr,
    /// HTTP API for the CLI and dashboard (token-protected).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub(crate) http: SocketAddr,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub(crate) trust_domain: String,
    /// Where to write the admin token and the CA bundle for local tools.
    #[arg(long, default_value_os_t = crate::default_state_dir())]
    pub(crate) state_dir: PathBuf,
    /// A root or intermediate CA certificate to issue from (PEM), instead of a self-signed root.
    #[arg(long)]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long)]
    pub(crate) ca_key: Option<PathBuf>,
    /// For an intermediate: its chain up to the root (PEM).
    #[arg(long)]
    pub(crate) ca_chain: Option<PathBuf>,
    /// A name for this replica (shown by proxy-status).
    #[arg(long)]
    pub(crate) replica: Option<String>,
}

pub(crate) async fn main(args: Args) -> anyhow::Result<()> {
    let td = TrustDomain::new(&args.trust_domain).map_err(|e| anyhow::anyhow!("--trust-domain: {e}"))?;
    let mut plane = Options::new(td);
    if let Some(r) = args.replica {
        plane.replica = r;
    }
    plane.user_ca = match (&args.ca_cert, &args.ca_key) {
        (Some(c), Some(k)) => Some(meshgate_control::ca::UserCa {
            cert: std::fs::read_to_string(c).with_context(|| format!("--ca-cert {}", c.display()))?,
            key: std::fs::read_to_string(k).with_context(|| format!("--ca-key {}", k.display()))?,
            chain: match &args.ca_chain {
                Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("--ca-chain {}", p.display()))?),
                None => None,
            },
        }),
        (None, None) => None,
        _ => anyhow::bail!("--ca-cert and --ca-key go together"),
    };
    let opts = RunOptions { store: args.store, grpc: args.grpc, http: args.http, state_dir: args.state_dir, plane };
    run(
        opts,
        |r| eprintln!("control plane ready: gRPC {} (TLS), API http://{} (token in the state dir)", r.grpc, r.http),
        crate::gateway::shutdown_signal_quiet(),
    )
    .await?;
    Ok(())
}
