//! Proxies managed by a control plane: bootstrap the identity with a join token, keep it
//! rotated, subscribe to configuration and apply it. The gateway role is here; the sidecar
//! role ([`ManagedSidecar`]) joins the same way.

use std::sync::Arc;
use std::time::Duration;

use meshgate_identity::SpiffeId;
use meshgate_tls::MeshTls;
use tokio::task::JoinHandle;

use crate::cp::{Apply, ControlPlaneAddr, CpCertifier, Subscriber, subscribe};
use crate::identity::{self, Certifier, IdentityError, Renewal};
use crate::roles::gateway::{Gateway, GatewayOptions};
use crate::roles::sidecar::{Sidecar, SidecarOptions};

/// Background tasks of a managed proxy, aborted when dropped.
#[derive(Debug, Default)]
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    /// Adds one.
    pub(crate) fn push(&mut self, task: JoinHandle<()>) {
        self.0.push(task);
    }

    /// Aborts them all (again on drop: aborting twice is harmless).
    pub(crate) fn abort(&self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.abort();
    }
}

/// A proxy that has joined the mesh: its TLS state, what its rotation task and its control-plane
/// subscription tell each other, and its background tasks.
pub(crate) struct Joined {
    pub(crate) mesh: Arc<MeshTls>,
    pub(crate) renewal: Arc<Renewal>,
    pub(crate) tasks: Tasks,
}

/// Joins the mesh as `id`: the first certificate through the control plane (presenting the
/// join token), then a task that keeps it rotated.
pub(crate) async fn join(
    target: &ControlPlaneAddr,
    id: &SpiffeId,
    token: Option<String>,
) -> Result<Joined, IdentityError> {
    let certifier = CpCertifier::new(target.clone(), token);
    let mesh = identity::bootstrap(certifier.as_ref(), id).await?;
    certifier.set_mesh(mesh.clone());
    let renewal = Arc::new(Renewal::default());
    let mut tasks = Tasks::default();
    let rotation = identity::rotate(mesh.clone(), certifier as Arc<dyn Certifier>, id.clone(), renewal.clone());
    tasks.push(tokio::spawn(rotation));
    Ok(Joined { mesh, renewal, tasks })
}

/// A running managed gateway.
pub struct ManagedGateway {
    /// The gateway.
    pub gateway: Arc<Gateway>,
    /// Its identity.
    pub id: SpiffeId,
    tasks: Tasks,
}

impl std::fmt::Debug for ManagedGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManagedGateway({})", self.id)
    }
}

impl ManagedGateway {
    /// Bootstraps the identity (a join token first), then subscribes; `options.tls` is filled.
    pub async fn start(
        target: ControlPlaneAddr,
        id: SpiffeId,
        token: Option<String>,
        mut options: GatewayOptions,
        node: String,
    ) -> Result<Self, IdentityError> {
        let Joined { mesh, renewal, mut tasks } = join(&target, &id, token).await?;
        options.tls = Some(mesh.clone());
        let gateway = Gateway::new(options);
        let gw = gateway.clone();
        let apply: Apply = Arc::new(move |set| {
            let gw = gw.clone();
            Box::pin(async move {
                // CPU-bound and as large as the mesh: off the runtime's threads, as file loads are.
                let in_force = gw.snapshot();
                let ingress = gw.options().ingress.clone();
                let compiled = tokio::task::spawn_blocking(move || {
                    let last_good = |secret: &str| in_force.config.served_cert(secret);
                    let inputs = meshgate_model::CompileInputs {
                        last_good: &last_good,
                        now: std::time::SystemTime::now(),
                        ingress,
                    };
                    meshgate_model::compile_gateway_with(&set, &inputs)
                })
                .await
                .map_err(|e| format!("compiling the configuration: {e}"))?;
                for p in compiled.problems() {
                    tracing::warn!("{p}");
                }
                gw.apply(compiled, vec!["control plane".to_string()])
                    .await
                    .map(|_| ())
                    .map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
            })
        });
        let sink = gateway.core().sink().clone();
        let (taps, asks) = tokio::sync::mpsc::channel(4);
        tasks.push(tokio::spawn(crate::cp::report(target.clone(), mesh.clone(), "gateway".into(), sink, asks)));
        let bind = gateway.options().bind;
        let addresses = if bind.is_unspecified() { Vec::new() } else { vec![bind.to_string()] };
        let sub = Subscriber {
            target,
            mesh,
            renewal,
            role: "gateway".into(),
            node,
            workload: String::new(),
            addresses,
            taps: Some(taps),
        };
        tasks.push(tokio::spawn(subscribe(sub, apply)));
        Ok(ManagedGateway { gateway, id, tasks })
    }

    /// Stops subscribing and drains.
    pub async fn stop(self) {
        self.tasks.abort();
        self.gateway.drain().await;
    }
}

/// A sidecar managed by a control plane: identity bootstrapped with a join token and kept
/// rotated, configuration subscribed to and applied.
pub struct ManagedSidecar {
    /// The sidecar.
    pub sidecar: Arc<Sidecar>,
    /// Its identity.
    pub id: SpiffeId,
    tasks: Tasks,
}

impl std::fmt::Debug for ManagedSidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManagedSidecar({})", self.id)
    }
}

/// Why a managed sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// No certificate.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A port could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

impl ManagedSidecar {
    /// Bootstraps the identity, binds the ports, subscribes. `opts.workload` (`namespace/name`)
    /// names the Workload whose view of the mesh is compiled.
    pub async fn start(
        target: ControlPlaneAddr,
        id: SpiffeId,
        token: Option<String>,
        opts: SidecarOptions,
        node: String,
    ) -> Result<Self, SidecarError> {
        let workload = opts.workload.clone();
        let Joined { mesh, renewal, mut tasks } = join(&target, &id, token).await?;
        let sidecar = Sidecar::start(opts, Some(mesh.clone())).await?;
        let (ns, name) =
            workload.split_once('/').map_or((String::new(), workload.clone()), |(a, b)| (a.into(), b.into()));
        let sc = sidecar.clone();
        let apply: Apply = Arc::new(move |set| {
            let sc = sc.clone();
            let (ns, name) = (ns.clone(), name.clone());
            Box::pin(async move {
                // CPU-bound and as large as the mesh: off the runtime's threads.
                let config = tokio::task::spawn_blocking(move || meshgate_model::mesh::compile_mesh(&set, &ns, &name))
                    .await
                    .map_err(|e| format!("compiling the configuration: {e}"))?;
                sc.apply(config, vec!["control plane".to_string()]).await.map(|_| ())
            })
        });
        let sink = sidecar.core.sink().clone();
        let (taps, asks) = tokio::sync::mpsc::channel(4);
        tasks.push(tokio::spawn(crate::cp::report(target.clone(), mesh.clone(), "sidecar".into(), sink, asks)));
        let sub = Subscriber {
            target,
            mesh,
            renewal,
            role: "sidecar".into(),
            node,
            workload,
            addresses: Vec::new(),
            taps: Some(taps),
        };
        tasks.push(tokio::spawn(subscribe(sub, apply)));
        Ok(ManagedSidecar { sidecar, id, tasks })
    }

    /// Waits until the first configuration is applied.
    pub async fn configured(&self) {
        while !self.sidecar.is_configured() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops subscribing and drains.
    pub async fn stop(self) {
        self.tasks.abort();
        self.sidecar.drain().await;
    }
}

impl Drop for ManagedSidecar {
    fn drop(&mut self) {
        // The accept loops hold the sidecar and the inbound proxy: end them, or the ports stay
        // bound.
        self.sidecar.stop_accepting();
    }
}
