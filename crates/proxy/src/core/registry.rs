//! What outlives a configuration change: each backend's counters (circuit breakers, retry
//! budget) and each endpoint's pool of connections, found again by key when the next
//! configuration names them, dropped when no configuration does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use meshgate_model::ProxyConfig;
use meshgate_model::rule::UpstreamProtocol;

use crate::upstream::balance::BackendRt;
use crate::upstream::pool::{EndpointPool, TlsDial};
use crate::upstream::state::BackendState;

/// Pools are per backend (so limits count per Service port) and per settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    backend: Arc<str>,
    addr: SocketAddr,
    protocol: UpstreamProtocol,
    connect: Duration,
    idle: Duration,
    identity: Option<String>,
    /// The workload behind it (its labels name it in records).
    workload: Option<Arc<meshgate_model::peer::Peer>>,
    /// The BackendTLSPolicy's TLS: policy, server name, roots.
    origination: Option<(Arc<str>, String, u64)>,
}

/// Backend counters and endpoint pools by key, held weakly: the snapshots hold them.
#[derive(Debug, Default)]
pub(super) struct Registry {
    pools: Mutex<HashMap<PoolKey, Weak<EndpointPool>>>,
    states: Mutex<HashMap<Arc<str>, Weak<BackendState>>>,
    /// Tests: endpoints served by in-memory upstreams, by address.
    #[cfg(test)]
    pub(super) memory: Mutex<HashMap<SocketAddr, crate::upstream::memory::Upstream>>,
}

impl Registry {
    /// The runtime state of every backend of `config`, reusing what exists.
    pub(super) fn prepare(
        &self,
        config: &ProxyConfig,
        tls: Option<&Arc<meshgate_tls::MeshTls>>,
    ) -> Vec<Arc<BackendRt>> {
        let (Ok(mut pools), Ok(mut states)) = (self.pools.lock(), self.states.lock()) else { return Vec::new() };
        config
            .backends
            .iter()
            .map(|b| {
                let state = match states.get(&b.id).and_then(Weak::upgrade) {
                    Some(s) => s,
                    None => {
                        let s = Arc::new(BackendState::default());
                        states.insert(b.id.clone(), Arc::downgrade(&s));
                        s
                    }
                };
                let endpoints = b
                    .endpoints
                    .iter()
                    .map(|e| {
                        let key = PoolKey {
                            backend: b.id.clone(),
                            addr: e.addr,
                            protocol: b.protocol,
                            connect: b.policy.connect_timeout,
                            idle: b.policy.idle_timeout,
                            identity: e.identity.clone(),
                            workload: e.workload.clone(),
                            origination: b.tls.as_ref().map(|t| (t.policy.clone(), t.hostname.clone(), t.roots_hash)),
                        };
                        match pools.get(&key).and_then(Weak::upgrade) {
                            Some(p) => p,
                            None => {
                                #[allow(unused_mut)]
                                let mut pool = EndpointPool::with_tls(
                                    e.addr,
                                    b.protocol,
                                    tls_dial(tls, e),
                                    state.clone(),
                                    b.policy.connect_timeout,
                                    b.policy.idle_timeout,
                                );
                                if let Some(tls) = &b.tls {
                                    pool.originate_tls(tls.clone());
                                }
                                pool.set_workload(e.workload.clone());
                                #[cfg(test)]
                                {
                                    pool.memory = self.memory.lock().ok().and_then(|m| m.get(&e.addr).cloned());
                                }
                                let p = Arc::new(pool);
                                pools.insert(key, Arc::downgrade(&p));
                                p
                            }
                        }
                    })
                    .collect();
                Arc::new(BackendRt::new(b.clone(), endpoints, state))
            })
            .collect()
    }

    /// Forgets what no configuration holds any more.
    pub(super) fn prune(&self) {
        if let Ok(mut pools) = self.pools.lock() {
            pools.retain(|_, p| p.strong_count() > 0);
        }
        if let Ok(mut states) = self.states.lock() {
            states.retain(|_, s| s.strong_count() > 0);
        }
    }

    /// Every pool still in use.
    pub(super) fn live_pools(&self) -> Vec<Arc<EndpointPool>> {
        self.pools.lock().map(|p| p.values().filter_map(Weak::upgrade).collect()).unwrap_or_default()
    }
}

/// mTLS settings for an endpoint that expects them (and for which this proxy has an identity).
fn tls_dial(tls: Option<&Arc<meshgate_tls::MeshTls>>, e: &meshgate_model::rule::Endpoint) -> Option<TlsDial> {
    let expected = e.identity.as_deref()?;
    let Some(mesh) = tls else {
        tracing::warn!(endpoint = %e.addr, %expected, "endpoint expects mTLS but this proxy has no identity; dialling plaintext");
        return None;
    };
    match meshgate_identity::SpiffeId::parse(expected) {
        Ok(expected) => Some(TlsDial { mesh: mesh.clone(), expected }),
        Err(err) => {
            tracing::warn!(endpoint = %e.addr, %err, "endpoint identity is not a SPIFFE ID; dialling plaintext");
            None
        }
    }
}
