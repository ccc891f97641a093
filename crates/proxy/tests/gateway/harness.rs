//! A gateway started in-process from YAML, with echo upstreams behind Services.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshgate_proxy::{Gateway, GatewayOptions, source};
use meshgate_testkit::{Client, EchoServer, Reply, TempDir, free_port};

pub struct Mesh {
    pub gateway: Arc<Gateway>,
    pub port: u16,
    pub dir: TempDir,
    pub backends: HashMap<String, EchoServer>,
}

/// A Service `ns/name` on port 8080 whose EndpointSlice points at `addr`.
pub fn service_yaml(ns: &str, name: &str, addr: SocketAddr, app_protocol: Option<&str>) -> String {
    let proto = app_protocol.map(|p| format!(", appProtocol: {p}")).unwrap_or_default();
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  ports: [{{name: http, port: 8080, targetPort: 3000{proto}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abc12
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
endpoints:
- addresses: ["{ip}"]
  conditions: {{ready: true}}
ports: [{{name: http, port: {port}, protocol: TCP}}]
"#,
        ip = addr.ip(),
        port = addr.port()
    )
}

impl Mesh {
    /// Starts echo backends named `ns/name`, writes `yaml` (with `{port}` replaced by a free
    /// port) next to their Services, and starts a gateway on it.
    pub async fn start(yaml: &str, backends: &[&str]) -> Mesh {
        Mesh::start_with(yaml, backends, GatewayOptions::default()).await
    }

    /// As [`Mesh::start`], with gateway options (an mTLS identity, say).
    pub async fn start_with(yaml: &str, backends: &[&str], options: GatewayOptions) -> Mesh {
        let mut servers = HashMap::new();
        let mut services = String::new();
        for b in backends {
            let (ns, name) = b.split_once('/').unwrap();
            let server = EchoServer::start(name).await;
            services.push_str(&service_yaml(ns, name, server.addr, None));
            servers.insert(name.to_string(), server);
        }
        let port = free_port();
        let dir = TempDir::new("meshgate-gw");
        dir.write("services.yaml", &services);
        dir.write("routes.yaml", &yaml.replace("{port}", &port.to_string()));
        let ingress = options.ingress.clone();
        let gateway = Gateway::new(GatewayOptions { bind: "127.0.0.1".parse().unwrap(), ..options });
        let paths = vec![dir.path().to_path_buf()];
        let (_, compiled) =
            source::load_over(&paths, None, ingress).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        gateway.apply(compiled, vec!["test".into()]).await.unwrap();
        Mesh { gateway, port, dir, backends: servers }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Replaces the routes file and applies it; returns whether it was accepted.
    pub async fn reload(&self, yaml: &str) -> Option<u64> {
        self.dir.write("routes.yaml", &yaml.replace("{port}", &self.port.to_string()));
        source::apply_files(&[self.dir.path().to_path_buf()], &self.gateway).await
    }

    pub async fn get(&self, host: &str, path: &str) -> Reply {
        Client::h1().get(self.addr(), host, path, &[]).await
    }

    pub async fn get_with(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        Client::h1().get(self.addr(), host, path, headers).await
    }

    /// Asserts that a GET is answered by `backend` (a Service name) with status 200.
    pub async fn expect_backend(&self, host: &str, path: &str, headers: &[(&str, &str)], backend: &str) {
        let r = self.get_with(host, path, headers).await;
        assert_eq!(r.status, 200, "{host}{path} {headers:?}: {}", r.text());
        assert_eq!(r.echoed().backend, backend, "{host}{path} {headers:?}");
    }

    pub async fn expect_status(&self, host: &str, path: &str, headers: &[(&str, &str)], status: u16) {
        let r = self.get_with(host, path, headers).await;
        assert_eq!(r.status, status, "{host}{path} {headers:?}: {}", r.text());
    }
}

/// The Gateway most tests use: one HTTP listener admitting routes from every namespace.
pub fn gateway(name: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: infra}}
spec:
  gatewayClassName: meshgate
  listeners:
  - name: http
    port: {{port}}
    protocol: HTTP
    allowedRoutes: {{namespaces: {{from: All}}}}
"#
    )
}

/// The three conformance backends.
pub const V123: [&str; 3] = ["infra/infra-backend-v1", "infra/infra-backend-v2", "infra/infra-backend-v3"];

/// A Service `ns/name` on port 8080 with one EndpointSlice per address (the slices merge).
pub fn multi_service_yaml(ns: &str, name: &str, addrs: &[SocketAddr]) -> String {
    let mut out = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 8080}}]\n"
    );
    for (i, a) in addrs.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-{i}\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"{}\"]}}]\nports: [{{name: http, port: {}}}]\n",
            a.ip(),
            a.port()
        ));
    }
    out
}

impl Mesh {
    /// Starts a gateway on `yaml` alone (the caller writes its own Services).
    pub async fn start_raw(yaml: &str) -> Mesh {
        Mesh::start(yaml, &[]).await
    }
}

/// HTTPRoute `infra/r` on Gateway `gw`: one rule to `backend` port 8080, plus `rule_extra`
/// (more fields of that rule, indented by four spaces).
pub fn route_to(backend: &str, rule_extra: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: infra}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: {backend}, port: 8080}}]\n{rule_extra}\n"
    )
}
