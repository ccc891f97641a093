//! A proxy managed by a control plane: bootstrap the identity with a join token, keep it
//! rotated, subscribe to configuration and apply it. Used by `meshgate proxy` and tests.

use std::sync::Arc;

use meshgate_identity::SpiffeId;
use tokio::task::JoinHandle;

use crate::cp::{Apply, ControlPlaneAddr, CpCertifier, subscribe};
use crate::gateway::{Gateway, GatewayOptions};
use crate::identity::{self, Certifier, IdentityError};

/// A running managed gateway.
pub struct ManagedGateway {
    /// The gateway.
    pub gateway: Arc<Gateway>,
    /// Its identity.
    pub id: SpiffeId,
    tasks: Vec<JoinHandle<()>>,
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
        let certifier = CpCertifier::new(target.clone(), token);
        let mesh = identity::bootstrap(certifier.as_ref(), &id).await?;
        certifier.set_mesh(mesh.clone());
        let rotation =
            tokio::spawn(identity::rotate(mesh.clone(), certifier.clone() as Arc<dyn Certifier>, id.clone()));
        options.tls = Some(mesh.clone());
        let gateway = Gateway::new(options);
        let gw = gateway.clone();
        let apply: Apply = Arc::new(move |set| {
            let gw = gw.clone();
            Box::pin(async move {
                let compiled = meshgate_model::compile_gateway(&set);
                for p in compiled.problems() {
                    tracing::warn!("{p}");
                }
                gw.apply(compiled, vec!["control plane".to_string()])
                    .await
                    .map(|_| ())
                    .map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
            })
        });
        let subscription = tokio::spawn(subscribe(target, mesh, "gateway".into(), node, String::new(), apply));
        Ok(ManagedGateway { gateway, id, tasks: vec![rotation, subscription] })
    }

    /// Stops subscribing and drains.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.gateway.drain().await;
    }
}

impl Drop for ManagedGateway {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
