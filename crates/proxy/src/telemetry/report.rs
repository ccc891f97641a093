//! What a proxy reports for the service graph: the change in its metrics since the last
//! report, folded by edge (who called whom, through which Service, how secured). Read from the
//! metrics' series, so reporting adds nothing to the request path.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use meshgate_model::peer::Peer;
use meshgate_proto::meshgate::{EdgeStats, PeerInfo};

use super::Security;
use super::metrics::{Edge, Metrics, RequestKey, TcpKey};

/// A series' counters when last reported.
#[derive(Debug, Default, Clone)]
struct Seen {
    count: u64,
    latency: Vec<u64>,
    latency_sum: u64,
    proxy: Vec<u64>,
    proxy_sum: u64,
    request_bytes: u64,
    response_bytes: u64,
}

/// The counters reported so far, to report only what changed.
#[derive(Debug, Default)]
pub struct Deltas {
    requests: HashMap<RequestKey, Seen>,
    tcp: HashMap<TcpKey, Seen>,
}

fn sub(now: &[u64], before: &[u64]) -> Vec<u64> {
    now.iter().enumerate().map(|(i, n)| n.saturating_sub(before.get(i).copied().unwrap_or(0))).collect()
}

/// Adds bucket counts `more` to `into` (growing it as needed): reports and the graph sum them.
pub fn add(into: &mut Vec<u64>, more: &[u64]) {
    if into.len() < more.len() {
        into.resize(more.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(more) {
        *a += b;
    }
}

fn peer(p: Option<&std::sync::Arc<Peer>>) -> Option<PeerInfo> {
    p.map(|p| PeerInfo {
        workload: p.workload.to_string(),
        namespace: p.namespace.to_string(),
        app: p.app.to_string(),
        version: p.version.to_string(),
    })
}

/// `security` as the report names it: (policy, plaintext reason).
fn security(s: Option<Security>) -> (&'static str, String) {
    let reason = match s {
        Some(Security::Plaintext(why)) => format!("{why:?}"),
        _ => String::new(),
    };
    (Security::name(s), reason)
}

fn stats(edge: &Edge, protocol: &str, sec: Option<Security>) -> EdgeStats {
    let (security, plaintext_reason) = security(sec);
    EdgeStats {
        reporter: edge.reporter.as_str().to_string(),
        source: peer(edge.source.as_ref()),
        destination: peer(edge.destination.as_ref()),
        source_principal: edge.source_principal.as_deref().unwrap_or_default().to_string(),
        destination_principal: edge.destination_principal.as_deref().unwrap_or_default().to_string(),
        service: edge.service.as_deref().unwrap_or_default().to_string(),
        protocol: protocol.to_string(),
        security: security.to_string(),
        plaintext_reason,
        ..EdgeStats::default()
    }
}

impl Deltas {
    /// What changed in `metrics` since the last call, one entry per edge.
    pub fn next(&mut self, metrics: &Metrics) -> Vec<EdgeStats> {
        let mut edges: HashMap<(Edge, &'static str, Option<Security>), EdgeStats> = HashMap::new();
        for (key, s) in metrics.request_series() {
            let (latency, latency_sum) = s.duration.raw();
            let (proxy, proxy_sum) = s.proxy.raw();
            let now = Seen {
                count: s.count.load(Ordering::Relaxed),
                latency,
                latency_sum,
                proxy,
                proxy_sum,
                request_bytes: s.request_bytes.raw().1 / 1000,
                response_bytes: s.response_bytes.raw().1 / 1000,
            };
            let before = self.requests.get(&key).cloned().unwrap_or_default();
            let count = now.count.saturating_sub(before.count);
            if count > 0 {
                let protocol = if key.grpc { "grpc" } else { "http" };
                let e = edges
                    .entry((key.edge.clone(), protocol, key.security))
                    .or_insert_with(|| stats(&key.edge, protocol, key.security));
                e.requests += count;
                let failed = key.code >= 500 || key.grpc_status.is_some_and(|g| g != 0);
                if failed {
                    e.errors += count;
                }
                add(&mut e.latency, &sub(&now.latency, &before.latency));
                add(&mut e.proxy, &sub(&now.proxy, &before.proxy));
                e.latency_sum_us += now.latency_sum.saturating_sub(before.latency_sum);
                e.proxy_sum_us += now.proxy_sum.saturating_sub(before.proxy_sum);
                e.request_bytes += now.request_bytes.saturating_sub(before.request_bytes);
                e.response_bytes += now.response_bytes.saturating_sub(before.response_bytes);
            }
            self.requests.insert(key, now);
        }
        for (key, s) in metrics.tcp_series() {
            let now = Seen {
                count: s.closed.load(Ordering::Relaxed),
                request_bytes: s.sent.load(Ordering::Relaxed),
                response_bytes: s.received.load(Ordering::Relaxed),
                ..Seen::default()
            };
            let before = self.tcp.get(&key).cloned().unwrap_or_default();
            let count = now.count.saturating_sub(before.count);
            if count > 0 {
                let sec = Some(key.security);
                let e = edges.entry((key.edge.clone(), "tcp", sec)).or_insert_with(|| stats(&key.edge, "tcp", sec));
                e.connections += count;
                if !key.flags.is_empty() {
                    e.errors += count;
                }
                e.request_bytes += now.request_bytes.saturating_sub(before.request_bytes);
                e.response_bytes += now.response_bytes.saturating_sub(before.response_bytes);
            }
            self.tcp.insert(key, now);
        }
        edges.into_values().collect()
    }
}
