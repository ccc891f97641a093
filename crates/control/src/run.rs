//! Running a control plane: the store, the CA, its own serving identity, the gRPC API for
//! proxies and the HTTP API for the CLI, until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::plane::{ControlPlane, Options};
use crate::store::{AnyStore, Store, StoreError};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `dir:PATH` or `etcd:HOST:PORT,...`.
    pub store: String,
    /// gRPC (TLS) for proxies.
    pub grpc: SocketAddr,
    /// HTTP API for the CLI.
    pub http: SocketAddr,
    /// Where to write the admin token and the CA bundle for local tools.
    pub state_dir: PathBuf,
    /// CA and identity setup.
    pub plane: Options,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A socket.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// TLS setup.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Paths of the files local tools read.
pub fn token_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("admin-token")
}

/// The CA bundle file local proxies bootstrap with.
pub fn bundle_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("ca-bundle.pem")
}

fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, data)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// A running control plane's addresses.
#[derive(Debug, Clone)]
pub struct Running {
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP API address.
    pub http: SocketAddr,
    /// The admin token.
    pub token: String,
}

/// Starts everything and runs until `shutdown` resolves.
pub async fn run(
    opts: RunOptions,
    started: impl FnOnce(Running),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let store = AnyStore::open(&opts.store).await?;
    let cp = ControlPlane::new(store, opts.plane.clone()).await?;
    // The admin token: the first replica makes it; every replica serves it.
    let fresh = format!("mga.{}", meshgate_tls::hex(&meshgate_tls::random_bytes(24)));
    cp.store.create_blob("admin/token", fresh.as_bytes()).await?;
    let token =
        cp.store.get_blob("admin/token").await?.map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or(fresh);
    write_private(&token_path(&opts.state_dir), token.as_bytes()).map_err(StoreError::Io)?;
    let pem = cp.bundle().to_pem();
    write_private(&bundle_path(&opts.state_dir), pem.as_bytes()).map_err(StoreError::Io)?;

    let svid = cp.own_svid(Duration::from_secs(24 * 3600))?;
    let tls_config = meshgate_tls::config::control_plane_server(&svid, Arc::new(cp.bundle()))
        .map_err(|e| RunError::Tls(e.to_string()))?;
    let tls = Arc::new(ArcSwap::new(tls_config));

    let grpc = TcpListener::bind(opts.grpc).await.map_err(|source| RunError::Listen { addr: opts.grpc, source })?;
    let http = TcpListener::bind(opts.http).await.map_err(|source| RunError::Listen { addr: opts.http, source })?;
    let running = Running {
        grpc: grpc.local_addr().unwrap_or(opts.grpc),
        http: http.local_addr().unwrap_or(opts.http),
        token: token.clone(),
    };
    tracing::info!(
        store = %cp.store.describe(),
        grpc = %running.grpc,
        http = %running.http,
        trust_domain = %cp.options.trust_domain,
        "control plane serving"
    );
    let tasks = vec![
        tokio::spawn(cp.clone().watch_store()),
        tokio::spawn(crate::api::serve(cp.clone(), http, Arc::new(token))),
        tokio::spawn({
            let (cp, tls) = (cp.clone(), tls.clone());
            async move {
                if let Err(e) = crate::grpc::serve(cp, grpc, tls).await {
                    tracing::error!(error = %e, "gRPC server stopped");
                }
            }
        }),
        tokio::spawn(renew_own(cp.clone(), tls, bundle_path(&opts.state_dir))),
        tokio::spawn(cp.clone().publish_proxies()),
        tokio::spawn(crate::taps::share(cp.clone())),
    ];
    started(running);
    shutdown.await;
    let _ = cp.stopping.send(true);
    for t in tasks {
        t.abort();
    }
    cp.unpublish_proxies().await;
    tracing::info!("control plane stopped");
    Ok(())
}

/// Renews the control plane's serving certificate every hour and whenever the trust bundle
/// changes; then also rewrites the bundle file local tools and proxies bootstrap with.
async fn renew_own<S: Store>(
    cp: Arc<ControlPlane<S>>,
    tls: Arc<ArcSwap<tokio_rustls::rustls::ServerConfig>>,
    bundle_file: PathBuf,
) {
    let mut bundle = cp.bundle_version.subscribe();
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    hourly.tick().await;
    loop {
        tokio::select! {
            changed = bundle.changed() => {
                if changed.is_err() {
                    return;
                }
                if let Err(e) = write_private(&bundle_file, cp.bundle().to_pem().as_bytes()) {
                    tracing::warn!(error = %e, file = %bundle_file.display(), "cannot rewrite the CA bundle file");
                }
            }
            _ = hourly.tick() => {}
        }
        match cp.own_svid(Duration::from_secs(24 * 3600)) {
            Ok(svid) => match meshgate_tls::config::control_plane_server(&svid, Arc::new(cp.bundle())) {
                Ok(c) => tls.store(c),
                Err(e) => tracing::error!(error = %e, "cannot renew the control plane certificate"),
            },
            Err(e) => tracing::error!(error = %e, "cannot renew the control plane certificate"),
        }
    }
}
