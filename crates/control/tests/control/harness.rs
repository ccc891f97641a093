//! A control plane and managed gateways, in process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use meshgate_control::plane::Options;
use meshgate_control::run::{RunOptions, Running, run};
use meshgate_identity::TrustDomain;
use meshgate_proxy::GatewayOptions;
use meshgate_proxy::cp::ControlPlaneAddr;
use meshgate_proxy::managed::ManagedGateway;
use meshgate_proxy::telemetry::{Telemetry, TelemetryOptions};
use meshgate_testkit::{Client, Reply, TempDir, free_port};
use serde_json::Value;

pub struct Cp {
    pub running: Running,
    pub state: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Cp {
    /// Starts a control plane on `store` with fixed ports (so it can be restarted in place).
    pub async fn start(store: &str, state: &Path, grpc: u16, http: u16, replica: &str) -> Cp {
        let mut plane = Options::new(TrustDomain::new("cluster.local").unwrap());
        plane.replica = replica.to_string();
        let opts = RunOptions {
            store: store.to_string(),
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            state_dir: state.to_path_buf(),
            plane,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            run(
                opts,
                move |r| {
                    let _ = ready_tx.send(r);
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
        });
        let running = tokio::time::timeout(Duration::from_secs(20), ready_rx).await.unwrap().unwrap();
        Cp { running, state: state.to_path_buf(), stop: Some(stop), task: Some(task) }
    }

    /// One replica ("a") on a directory store under `dir` (`dir/store`, state in `dir/state`).
    pub async fn on_dir(dir: &Path) -> Cp {
        let (g, h) = ports();
        Cp::start(&format!("dir:{}", dir.join("store").display()), &dir.join("state"), g, h, "a").await
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub async fn call(&self, method: http::Method, path: &str, body: &str) -> (u16, Value) {
        let auth = format!("Bearer {}", self.running.token);
        let r: Reply = Client::h1()
            .send(self.running.http, method, "cp", path, &[("authorization", &auth)], Bytes::from(body.to_string()))
            .await
            .unwrap();
        (r.status.as_u16(), serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }

    pub async fn apply(&self, yaml: &str) -> Value {
        let (status, v) = self.call(http::Method::POST, "/api/v1/apply", yaml).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    pub async fn token(&self, ns: &str, sa: &str, ttl: u64) -> String {
        let body = format!(r#"{{"namespace":"{ns}","serviceAccount":"{sa}","ttlSeconds":{ttl}}}"#);
        let (status, v) = self.call(http::Method::POST, "/api/v1/tokens", &body).await;
        assert_eq!(status, 200, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    pub fn target(&self) -> ControlPlaneAddr {
        target(&self.running.grpc.to_string(), &self.state)
    }

    pub async fn proxies(&self) -> Vec<Value> {
        let (_, v) = self.call(http::Method::GET, "/api/v1/proxies", "").await;
        v["proxies"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub fn target(addrs: &str, state: &Path) -> ControlPlaneAddr {
    let pem = std::fs::read_to_string(meshgate_control::run::bundle_path(state)).unwrap();
    ControlPlaneAddr::new(addrs, TrustDomain::new("cluster.local").unwrap(), &pem).unwrap()
}

/// A managed gateway proxy (identity infra/gateway) joined with a fresh token.
pub async fn gateway(cp: &Cp, target: ControlPlaneAddr) -> ManagedGateway {
    gateway_on(cp, target, [127, 0, 0, 1]).await
}

/// The same, with listeners on another loopback address.
pub async fn gateway_on(cp: &Cp, target: ControlPlaneAddr, ip: [u8; 4]) -> ManagedGateway {
    let opts = GatewayOptions { bind: std::net::IpAddr::from(ip), ..GatewayOptions::default() };
    gateway_with(cp, target, opts).await
}

/// The same, recording its requests (metrics, reports, taps) as `meshgate gateway` does.
pub async fn recording_gateway_on(cp: &Cp, target: ControlPlaneAddr, ip: [u8; 4]) -> ManagedGateway {
    let options = TelemetryOptions { access_log: false, role: "gateway" };
    let sink: meshgate_proxy::telemetry::Sink = std::sync::Arc::new(Telemetry::new(options));
    let opts = GatewayOptions { bind: std::net::IpAddr::from(ip), sink, ..GatewayOptions::default() };
    gateway_with(cp, target, opts).await
}

async fn gateway_with(cp: &Cp, target: ControlPlaneAddr, opts: GatewayOptions) -> ManagedGateway {
    let token = cp.token("infra", "gateway", 600).await;
    let id = TrustDomain::new("cluster.local").unwrap().workload_id("infra", "gateway").unwrap();
    ManagedGateway::start(target, id, Some(token), opts, "test".into()).await.unwrap()
}

/// A Gateway on `port` routing everything to Service infra/app (port 80 → `upstream`).
pub fn config(port: u16, upstream: SocketAddr, header: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra}}
spec:
  gatewayClassName: meshgate
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: infra}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: app, port: 80}}]
    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-config, value: "{header}"}}]}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: infra}}
spec: {{selector: {{app: app}}, ports: [{{port: 80, targetPort: {}}}]}}
---
apiVersion: meshgate.io/v1alpha1
kind: Workload
metadata: {{name: app-0, namespace: infra, labels: {{app: app}}}}
spec: {{address: 127.0.0.1}}
"#,
        upstream.port()
    )
}

/// Waits until a GET through the gateway answers with `x-config: header`.
pub async fn wait_config(port: u16, header: &str) {
    wait_config_on([127, 0, 0, 1], port, header).await;
}

/// The same, for a gateway on another loopback address.
pub async fn wait_config_on(ip: [u8; 4], port: u16, header: &str) {
    let addr = SocketAddr::from((ip, port));
    for _ in 0..200 {
        if let Ok(r) = Client::h1().try_get(addr, "h", "/").await
            && r.header("x-config").as_deref() == Some(header)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("configuration {header:?} never arrived on port {port}");
}

pub fn ports() -> (u16, u16) {
    (free_port(), free_port())
}

pub fn tmp() -> TempDir {
    TempDir::new("meshgate-cp")
}

/// Two control-plane replicas ("a", "b") on one real etcd, sharing a state directory.
pub struct Replicas {
    /// Kept for the replicas' lifetime: dropping them stops etcd and removes the state.
    _etcd: meshgate_testkit::Etcd,
    _dir: TempDir,
    pub state: PathBuf,
    pub a: Cp,
    pub b: Cp,
}

impl Replicas {
    pub async fn start() -> Replicas {
        let etcd = meshgate_testkit::Etcd::start();
        let store = format!("etcd:{}", etcd.endpoint);
        let dir = tmp();
        let state = dir.path().join("state");
        let (ga, ha) = ports();
        let (gb, hb) = ports();
        let a = Cp::start(&store, &state, ga, ha, "a").await;
        let b = Cp::start(&store, &state, gb, hb, "b").await;
        Replicas { _etcd: etcd, _dir: dir, state, a, b }
    }
}
