//! The Gateway API conformance suite, test by test (the upstream ShortName in snake case is
//! each test's name), over the upstream base resources and each test's own, with the same
//! requests and the same expectations. Adapted to run without a cluster:
//! - the base namespaces, Gateways and backends are written as resources beside each test's
//!   (`BASE`); the backends are echo servers named like the upstream pods, behind Services of
//!   the same names and ports;
//! - upstream gives every Gateway its own address and keeps the listeners' ports; here all
//!   Gateways share 127.0.0.1, so each (Gateway, port) gets a port of its own, and requests go
//!   to the port of the Gateway and listener the upstream test addresses;
//! - what the upstream test reads from the API server (status) is read from the gateway's
//!   status, which a control plane writes to its store the same way; `metadata.generation`,
//!   which the API server counts, is written into the resources (the control plane's counting
//!   is tested in the control-plane tests).
//!
//! `docs/conformance.md` lists every test of the core profiles with its result;
//! `scripts/conformance-report` runs this module and writes upstream's ConformanceReport.

mod extended;
mod gateway;
mod grpcroute;
mod httproute;
mod tlsroute;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshgate_api::{Kind, Resource, ResourceSet};
use meshgate_proxy::{Gateway, GatewayOptions};
use meshgate_testkit::{Client, EchoServer, Reply, free_port};
use serde_json::Value;

use crate::harness::service_yaml;

pub const INFRA: &str = "gateway-conformance-infra";
pub const APP: &str = "gateway-conformance-app-backend";
pub const WEB: &str = "gateway-conformance-web-backend";
/// The base's backends in the infra namespace, and its Gateway in it.
pub const V1: &str = "infra-backend-v1";
pub const V2: &str = "infra-backend-v2";
pub const V3: &str = "infra-backend-v3";
pub const SAME: &str = "same-namespace";

/// Upstream's `conformance/base/manifests.yaml`, its Gateways and namespaces (the backends'
/// Services are written from the echo servers).
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: gateway-conformance-infra, labels: {gateway-conformance: infra}}
---
apiVersion: v1
kind: Namespace
metadata: {name: gateway-conformance-app-backend, labels: {gateway-conformance: backend}}
---
apiVersion: v1
kind: Namespace
metadata: {name: gateway-conformance-web-backend, labels: {gateway-conformance: backend}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: same-namespace, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: meshgate
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: same-namespace-with-https-listener, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: meshgate
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    allowedRoutes: {namespaces: {from: Same}}
    tls: {certificateRefs: [{group: "", kind: Secret, name: tls-validity-checks-certificate}]}
  - name: https-with-hostname
    port: 443
    protocol: HTTPS
    hostname: second-example.org
    allowedRoutes: {namespaces: {from: Same}}
    tls: {certificateRefs: [{group: "", kind: Secret, name: tls-validity-checks-certificate}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: all-namespaces, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: meshgate
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: backend-namespaces, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: meshgate
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {gateway-conformance: backend}}}}
"#;

/// The backends of the base, as `namespace/name`.
const BACKENDS: [&str; 6] = [
    "gateway-conformance-infra/infra-backend-v1",
    "gateway-conformance-infra/infra-backend-v2",
    "gateway-conformance-infra/infra-backend-v3",
    "gateway-conformance-app-backend/app-backend-v1",
    "gateway-conformance-app-backend/app-backend-v2",
    "gateway-conformance-web-backend/web-backend",
];

/// The certificates the upstream suite creates in code: in the infra namespace and the
/// web-backend one.
pub struct Pki {
    pub ca: meshgate_tls::testing::EdgeCa,
    pub infra: (String, String),
    pub web: (String, String),
}

impl Pki {
    /// A CA for a test's own certificates (its TLS backends), then given to the suite.
    pub fn shared_ca() -> meshgate_tls::testing::EdgeCa {
        meshgate_tls::testing::EdgeCa::new().unwrap()
    }

    fn new(ca: meshgate_tls::testing::EdgeCa) -> Pki {
        use meshgate_tls::testing::KeyAlg;
        // Upstream's SANs, `*` and `*.org`, and the names its TLS tests dial by (webpki refuses a
        // wildcard over a public suffix such as `*.org`).
        let infra = ca
            .issue(
                &["*", "*.org", "example.org", "second-example.org", "unknown-example.org"],
                KeyAlg::EcdsaP256,
                -60,
                3600,
            )
            .unwrap();
        let web = ca.issue(&["*"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
        Pki { ca, infra, web }
    }

    fn secrets(&self) -> String {
        crate::https::secret(INFRA, "tls-validity-checks-certificate", &self.infra)
            + &crate::https::secret(WEB, "certificate", &self.web)
    }
}

/// One test's gateway: the base and the test's resources, served.
pub struct Suite {
    pub gateway: Arc<Gateway>,
    pub pki: Pki,
    ports: std::sync::Mutex<HashMap<(String, i32), u16>>,
    services: String,
    backends: Vec<EchoServer>,
}

impl Suite {
    /// Serves the base and `yaml`.
    pub async fn start(yaml: &str) -> Suite {
        Suite::start_with_ca(yaml, Pki::shared_ca()).await
    }

    /// Serves the base and `yaml`, the suite's certificates issued by `ca`.
    pub async fn start_with_ca(yaml: &str, ca: meshgate_tls::testing::EdgeCa) -> Suite {
        let mut services = String::new();
        let mut backends = Vec::new();
        for b in BACKENDS {
            let (ns, name) = b.split_once('/').unwrap();
            let server = EchoServer::start(name).await;
            services.push_str(&service_yaml(ns, name, server.addr, None));
            backends.push(server);
        }
        let gateway = Gateway::new(GatewayOptions { bind: "127.0.0.1".parse().unwrap(), ..Default::default() });
        let suite = Suite { gateway, pki: Pki::new(ca), ports: Default::default(), services, backends };
        suite.apply(yaml).await;
        suite
    }

    /// The requests backend `name` (of the base's six) has seen.
    pub fn seen_by(&self, name: &str) -> Vec<meshgate_testkit::Echoed> {
        let i = BACKENDS.iter().position(|b| b.ends_with(&format!("/{name}"))).unwrap_or_else(|| panic!("no {name}"));
        self.backends[i].seen()
    }

    /// Applies the base and `yaml` in place of what was served (an edit, as `kubectl apply`).
    pub async fn apply(&self, yaml: &str) {
        let all = format!("{BASE}\n---\n{}\n{}\n---\n{yaml}", self.services, self.pki.secrets());
        let loaded = meshgate_api::load_str(&"conformance.yaml".into(), &all);
        assert!(loaded.errors.is_empty(), "test resources invalid:\n{}", loaded.errors);
        let mut objects = loaded.objects;
        {
            let mut ports = self.ports.lock().unwrap();
            for o in &mut objects {
                if let Resource::Gateway(g) = &mut o.resource {
                    let gw = format!("{}/{}", o.id.ns(), o.id.name);
                    for l in &mut std::sync::Arc::make_mut(g).spec.listeners {
                        let port = match ports.get(&(gw.clone(), l.port)) {
                            Some(port) => *port,
                            None => {
                                // A port the kernel hands out again (the probe socket is closed)
                                // would put two listeners of the base on one port, and the
                                // later one would be left out as conflicting.
                                let mut port = free_port();
                                while ports.values().any(|p| *p == port) {
                                    port = free_port();
                                }
                                ports.insert((gw.clone(), l.port), port);
                                port
                            }
                        };
                        l.port = i32::from(port);
                    }
                }
            }
        }
        let (set, errors) = ResourceSet::from_objects(objects);
        assert!(errors.is_empty(), "{errors}");
        let compiled = meshgate_model::compile_gateway(&set);
        self.gateway.apply(compiled, vec!["conformance".into()]).await.unwrap();
    }

    /// Where Gateway `name` (in the infra namespace unless `ns/name`) listens for upstream's
    /// `port`.
    pub fn addr(&self, gateway: &str, port: i32) -> SocketAddr {
        let gw = if gateway.contains('/') { gateway.to_string() } else { format!("{INFRA}/{gateway}") };
        let ports = self.ports.lock().unwrap();
        let p = ports.get(&(gw.clone(), port)).unwrap_or_else(|| panic!("no port {port} on Gateway {gw}"));
        SocketAddr::from(([127, 0, 0, 1], *p))
    }

    /// A GET through Gateway `gateway`'s port 80.
    pub async fn get(&self, gateway: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        Client::h1().get(self.addr(gateway, 80), host, path, headers).await
    }

    /// Asserts a GET through `gateway` is answered 200 by `backend`.
    pub async fn expect_backend(&self, gateway: &str, host: &str, path: &str, headers: &[(&str, &str)], backend: &str) {
        let r = self.get(gateway, host, path, headers).await;
        assert_eq!(r.status, 200, "{host}{path} {headers:?}: {}", r.text());
        assert_eq!(r.echoed().backend, backend, "{host}{path} {headers:?}");
    }

    /// Asserts a GET through `gateway` is answered `status`.
    pub async fn expect_status(&self, gateway: &str, host: &str, path: &str, headers: &[(&str, &str)], status: u16) {
        let r = self.get(gateway, host, path, headers).await;
        assert_eq!(r.status, status, "{host}{path} {headers:?}: {}", r.text());
    }

    /// The status of `kind` `ns/name`.
    pub fn status(&self, kind: Kind, ns: &str, name: &str) -> Value {
        let snap = self.gateway.core().snapshot();
        let s = snap.status.iter().find(|s| s.object.kind == kind && s.object.ns() == ns && &*s.object.name == name);
        s.map(|s| s.status.clone()).unwrap_or_else(|| panic!("no status for {kind:?} {ns}/{name}"))
    }

    /// The status of listener `listener` of Gateway `gateway` (infra namespace).
    pub fn listener(&self, gateway: &str, listener: &str) -> Value {
        let gw = self.status(Kind::Gateway, INFRA, gateway);
        let found = gw["listeners"].as_array().and_then(|l| l.iter().find(|l| l["name"] == listener)).cloned();
        found.unwrap_or_else(|| panic!("no listener {listener} in {gw:#}"))
    }

    /// The status entry of route `kind` `ns/name` for Gateway `gateway` (infra namespace), or
    /// `None`.
    pub fn parent(&self, kind: Kind, ns: &str, name: &str, gateway: &str) -> Option<Value> {
        let r = self.status(kind, ns, name);
        r["parents"].as_array()?.iter().find(|p| p["parentRef"]["name"] == gateway).cloned()
    }
}

/// Whether `holder` has a condition `kind` with `status` (and `reason`, when not empty).
pub fn has(holder: &Value, kind: &str, status: bool, reason: &str) -> bool {
    let want = if status { "True" } else { "False" };
    holder["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == want && (reason.is_empty() || c["reason"] == reason))
}

/// Asserts `has`, printing `holder` when it does not.
#[track_caller]
pub fn must_have(holder: &Value, kind: &str, status: bool, reason: &str) {
    assert!(has(holder, kind, status, reason), "expected {kind}={status} ({reason}) in {holder:#}");
}

/// The kinds of a listener's `supportedKinds`.
pub fn kinds(listener: &Value) -> Vec<String> {
    listener["supportedKinds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| k["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Upstream's `*-listener-hostname-matching` Gateway: four HTTP listeners on port 80, for
/// `bar.com`, `foo.bar.com`, `*.bar.com` and `*.foo.com`.
pub fn hostname_matching_gateway(name: &str) -> String {
    let listener = |n: u8, host: &str| {
        format!(
            "  - {{name: listener-{n}, port: 80, protocol: HTTP, hostname: \"{host}\", allowedRoutes: {{namespaces: {{from: Same}}}}}}\n"
        )
    };
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: meshgate\n  listeners:\n{}{}{}{}",
        listener(1, "bar.com"),
        listener(2, "foo.bar.com"),
        listener(3, "*.bar.com"),
        listener(4, "*.foo.com")
    )
}

/// Upstream's weight check: the backends a round of 500 requests (`round` starts them) saw,
/// exactly two of them — the zero-weight one never — `a` about 70% and `b` about 30% (within 5
/// points). The shares are random draws (2.4 standard deviations wide at 500 requests): as
/// upstream's harness retries until the result holds, a round outside them is run again, three
/// rounds at most.
pub async fn assert_split<F, Fut>(mut round: F, a: &str, b: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<tokio::task::JoinHandle<Vec<String>>>>,
{
    for attempt in 1..=3 {
        let mut counts = HashMap::<String, usize>::new();
        for t in round().await {
            for backend in t.await.unwrap() {
                *counts.entry(backend).or_default() += 1;
            }
        }
        let total = counts.values().sum::<usize>() as f64;
        let share = |b: &str| counts.get(b).copied().unwrap_or(0) as f64 / total;
        assert_eq!(counts.len(), 2, "{counts:?}");
        let within = (share(a) - 0.7).abs() <= 0.05 && (share(b) - 0.3).abs() <= 0.05;
        assert!(within || attempt < 3, "three rounds outside 70/30 ± 5: the last {counts:?}");
        if within {
            return;
        }
    }
}
