//! `meshgate control-plane`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use meshgate_control::plane::Options;
use meshgate_control::run::{RunOptions, run};
use meshgate_identity::TrustDomain;

pub(crate) struct Args {
    pub(crate) store: String,
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) trust_domain: String,
    pub(crate) state_dir: PathBuf,
    pub(crate) ca_cert: Option<PathBuf>,
    pub(crate) ca_key: Option<PathBuf>,
    pub(crate) ca_chain: Option<PathBuf>,
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
