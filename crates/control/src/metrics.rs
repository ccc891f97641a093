//! The control plane's own metrics (`GET /metrics`, Prometheus text, unauthenticated as
//! istiod's are): connected proxies, pushes and their acknowledgement latency, NACKs,
//! certificates issued and refused, the configuration version and the roots' expiry.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meshgate_proxy::telemetry::metrics::{Histogram, help};

use crate::plane::ControlPlane;
use crate::store::Store;

/// Counters of the control plane's work.
#[derive(Debug)]
pub struct CpMetrics {
    /// Configuration pushes sent (full, delta or trust bundle).
    pub pushes: AtomicU64,
    /// Pushes acknowledged.
    pub acks: AtomicU64,
    /// Pushes refused by a proxy.
    pub nacks: AtomicU64,
    /// Workload certificates issued.
    pub issued: AtomicU64,
    /// Certificate requests refused (token, CSR).
    pub refused: AtomicU64,
    /// From a push sent to its ACK.
    pub push_ack: Histogram<19>,
}

impl Default for CpMetrics {
    fn default() -> Self {
        CpMetrics {
            pushes: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            nacks: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            push_ack: Histogram::istio(),
        }
    }
}

impl CpMetrics {
    /// Counts one.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// An ACK came `after` its push.
    pub fn acked(&self, after: Duration) {
        Self::count(&self.acks);
        self.push_ack.observe_micros(u64::try_from(after.as_micros()).unwrap_or(u64::MAX));
    }
}

/// The Prometheus text of `cp`'s metrics.
pub fn render<S: Store>(cp: &ControlPlane<S>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let m = &cp.metrics;
    let (mut by_role, mut nacking, mut behind) = (std::collections::BTreeMap::new(), 0u64, 0u64);
    if let Ok(proxies) = cp.proxies.lock() {
        for p in proxies.values() {
            *by_role.entry(p.role.clone()).or_insert(0u64) += 1;
            nacking += u64::from(p.nack.is_some());
            behind += u64::from(p.acked < p.sent);
        }
    }
    help(&mut out, "meshgate_cp_proxies_connected", "gauge", "Proxies connected to this replica, by role.");
    for role in ["gateway", "sidecar"] {
        let _ = writeln!(out, "meshgate_cp_proxies_connected{{role=\"{role}\"}} {}", by_role.get(role).unwrap_or(&0));
    }
    help(&mut out, "meshgate_cp_proxies_nacking", "gauge", "Connected proxies whose last push was refused.");
    let _ = writeln!(out, "meshgate_cp_proxies_nacking {nacking}");
    help(
        &mut out,
        "meshgate_cp_proxies_behind",
        "gauge",
        "Connected proxies that have not acknowledged the last push.",
    );
    let _ = writeln!(out, "meshgate_cp_proxies_behind {behind}");
    for (name, text, v) in [
        ("meshgate_cp_pushes_total", "Configuration pushes sent.", &m.pushes),
        ("meshgate_cp_push_acks_total", "Pushes acknowledged.", &m.acks),
        ("meshgate_cp_push_nacks_total", "Pushes refused by a proxy (NACK).", &m.nacks),
        ("meshgate_cp_certificates_issued_total", "Workload certificates issued.", &m.issued),
        ("meshgate_cp_certificate_requests_refused_total", "Certificate requests refused.", &m.refused),
    ] {
        help(&mut out, name, "counter", text);
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
    help(&mut out, "meshgate_cp_push_ack_duration_milliseconds", "histogram", "From a push sent to the proxy's ACK.");
    m.push_ack.write_to(&mut out, "meshgate_cp_push_ack_duration_milliseconds", "");
    let (edges, reports) = cp.graph.dropped();
    help(
        &mut out,
        "meshgate_cp_graph_dropped_total",
        "counter",
        "Service-graph data lost: edges over the cap, reports proxies could not send.",
    );
    let _ = writeln!(out, "meshgate_cp_graph_dropped_total{{what=\"edges\"}} {edges}");
    let _ = writeln!(out, "meshgate_cp_graph_dropped_total{{what=\"reports\"}} {reports}");
    help(&mut out, "meshgate_cp_config_version", "gauge", "Version of the resources in force.");
    let _ = writeln!(out, "meshgate_cp_config_version {}", cp.state.snapshot().version);
    help(&mut out, "meshgate_cp_root_expiry_timestamp_seconds", "gauge", "When each root of the trust bundle expires.");
    let (bundle, _) = cp.bundle_and_signer();
    for root in &bundle.roots {
        let d = meshgate_tls::svid::describe(root);
        let _ = writeln!(out, "meshgate_cp_root_expiry_timestamp_seconds{{serial=\"{}\"}} {}", d.serial, d.not_after);
    }
    out
}
