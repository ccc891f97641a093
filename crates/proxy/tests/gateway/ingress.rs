//! Kubernetes Ingress at the gateway: served on the ingress ports through the Gateway API
//! route model, and the resources `meshgate migrate ingress` prints answer the same requests
//! the same way.

use meshgate_model::ingress::{IngressPorts, translate};
use meshgate_proxy::GatewayOptions;
use meshgate_testkit::{Client, free_port};

use crate::harness::Mesh;

const INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: meshgate
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: meshgate.io/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  namespace: web
  annotations: {nginx.ingress.kubernetes.io/proxy-buffering: "off"}
spec:
  defaultBackend: {service: {name: fallback, port: {number: 8080}}}
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}
      - {path: /exact, pathType: Exact, backend: {service: {name: api, port: {number: 8080}}}}
      - {path: /loose, pathType: ImplementationSpecific, backend: {service: {name: api, port: {number: 8080}}}}
      - {path: /bad, pathType: Regex, backend: {service: {name: api, port: {number: 8080}}}}
      - {path: /res, pathType: Prefix, backend: {resource: {apiGroup: k8s.example.com, kind: Bucket, name: static}}}
  - http:
      paths:
      - {path: /any-host, pathType: Prefix, backend: {service: {name: api, port: {number: 8080}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: theirs, namespace: web}
spec:
  ingressClassName: nginx
  rules: [{host: theirs.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 8080}}}}]}}]
"#;

/// The requests both configurations answer: host, path, and the backend (or status) expected.
const CASES: [(&str, &str, Result<&str, u16>); 11] = [
    ("shop.example.com", "/api", Ok("api")),
    ("shop.example.com", "/api/v1/items", Ok("api")),
    ("shop.example.com", "/apiary", Ok("fallback")),
    ("shop.example.com", "/exact", Ok("api")),
    ("shop.example.com", "/exact/more", Ok("fallback")),
    ("shop.example.com", "/loose/x", Ok("api")),
    ("shop.example.com", "/bad", Ok("fallback")),
    ("other.example.com", "/any-host", Ok("api")),
    ("other.example.com", "/api", Ok("fallback")),
    ("theirs.example.com", "/x", Ok("fallback")),
    ("shop.example.com", "/", Ok("fallback")),
];

async fn check(addr: std::net::SocketAddr, what: &str) {
    for (host, path, want) in CASES {
        let r = Client::h1().get(addr, host, path, &[]).await;
        match want {
            Ok(backend) => {
                assert_eq!(r.status, 200, "{what}: {host}{path}: {}", r.text());
                assert_eq!(r.echoed().backend, backend, "{what}: {host}{path}");
            }
            Err(status) => assert_eq!(r.status, status, "{what}: {host}{path}"),
        }
    }
}

#[tokio::test]
async fn ingresses_are_served_on_the_ingress_ports_and_migrate_to_resources_that_answer_the_same() {
    let ports = IngressPorts { http: free_port(), https: free_port(), address: Some([127, 0, 0, 1].into()) };
    let options = GatewayOptions { ingress: ports, ..GatewayOptions::default() };
    let backends = ["web/api", "web/fallback"];
    let m = Mesh::start_with(INGRESS, &backends, options).await;
    let ingress_addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports.http));
    check(ingress_addr, "Ingress").await;

    // What could not be served is reported on the Ingress, by field; the other class's Ingress
    // is left alone.
    let snap = m.gateway.core().snapshot();
    let about = |field: &str| {
        snap.conditions
            .iter()
            .find(|c| c.object.name.as_ref() == "shop" && c.field == field)
            .map(|c| (c.reason, c.message.clone()))
            .unwrap_or_else(|| panic!("no condition on {field}: {:#?}", snap.conditions))
    };
    assert_eq!(about("spec.rules[0].http.paths[3].pathType").0, "UnsupportedValue");
    assert_eq!(about("spec.rules[0].http.paths[4].backend").0, "InvalidKind");
    let annotation = about("metadata.annotations[nginx.ingress.kubernetes.io/proxy-buffering]");
    assert!(annotation.1.contains("proxy-buffering"), "{annotation:?}");
    let theirs = snap.conditions.iter().find(|c| c.object.name.as_ref() == "theirs").unwrap();
    assert_eq!(theirs.reason, "NotHandled");
    // status.loadBalancer, for the Ingress served only.
    let lb: Vec<_> = snap.status.iter().filter(|s| s.object.kind == meshgate_api::Kind::Ingress).collect();
    assert_eq!(lb.len(), 1);
    assert_eq!(lb[0].status, serde_json::json!({"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}));
    assert!(
        !snap.status.iter().any(|s| s.object.name.as_ref() == "meshgate-ingress"),
        "no status for resources nobody wrote"
    );

    // The migrated resources, without the Ingresses, answer the same.
    // From the gateway's files: the Ingresses and the Services they name (a port by name).
    let loaded = meshgate_api::load_paths(&[m.dir.path().to_path_buf()]);
    let (set, _) = meshgate_api::ResourceSet::from_objects(loaded.objects);
    let migrated = translate(&set, IngressPorts { http: 0, https: 0, address: None });
    let mut yaml = String::new();
    for (_, doc) in &migrated.docs {
        let mut doc = doc.clone();
        // On the test's own port instead of 80 (and no TLS listener: no Secret here).
        if doc["kind"] == "Gateway" {
            doc["spec"]["listeners"] = serde_json::json!([{"name": "http", "port": "{port}", "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}]);
        }
        yaml += &format!("---\n{}\n", doc.to_string().replace("\"{port}\"", "{port}"));
    }
    let m2 = Mesh::start(&yaml, &backends).await;
    check(m2.addr(), "migrated").await;
}

#[tokio::test]
async fn ingress_nginx_annotations_people_migrate_with() {
    let ca = meshgate_tls::testing::EdgeCa::new().unwrap();
    let cert = ca.issue(&["secure.example.com"], meshgate_tls::testing::KeyAlg::EcdsaP256, -60, 3600).unwrap();
    let yaml = format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {{name: meshgate}}
spec: {{controller: meshgate.io/ingress-controller}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: main
  namespace: web
  annotations: {{nginx.ingress.kubernetes.io/rewrite-target: /v2, nginx.ingress.kubernetes.io/proxy-read-timeout: "30"}}
spec:
  ingressClassName: meshgate
  rules: [{{host: shop.example.com, http: {{paths: [{{path: /api, pathType: Prefix, backend: {{service: {{name: api, port: {{number: 8080}}}}}}}}]}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: main-canary
  namespace: web
  annotations:
    nginx.ingress.kubernetes.io/canary: "true"
    nginx.ingress.kubernetes.io/canary-weight: "0"
    nginx.ingress.kubernetes.io/canary-by-header: X-Canary
spec:
  ingressClassName: meshgate
  rules: [{{host: shop.example.com, http: {{paths: [{{path: /api, pathType: Prefix, backend: {{service: {{name: api-canary, port: {{number: 8080}}}}}}}}]}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: moved
  namespace: web
  annotations: {{nginx.ingress.kubernetes.io/permanent-redirect: "https://new.example.com/landing"}}
spec:
  ingressClassName: meshgate
  rules: [{{host: old.example.com, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: api, port: {{number: 8080}}}}}}}}]}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: secure
  namespace: web
  annotations: {{nginx.ingress.kubernetes.io/server-snippet: "return 418;"}}
spec:
  ingressClassName: meshgate
  tls: [{{hosts: [secure.example.com], secretName: secure-tls}}]
  rules: [{{host: secure.example.com, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: api, port: {{number: 8080}}}}}}}}]}}}}]
{}"#,
        crate::https::secret("web", "secure-tls", &cert)
    );
    let ports = IngressPorts { http: free_port(), https: free_port(), address: None };
    let options = GatewayOptions { ingress: ports, ..GatewayOptions::default() };
    let m = Mesh::start_with(&yaml, &["web/api", "web/api-canary"], options).await;
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], ports.http));
    // rewrite-target: the matched prefix replaced; canary-weight 0 keeps everything on the main
    // backend unless canary-by-header says "always".
    let r = Client::h1().get(http, "shop.example.com", "/api/items", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.echoed();
    assert_eq!((e.backend.as_str(), e.path.as_str()), ("api", "/v2/items"));
    let r = Client::h1().get(http, "shop.example.com", "/api/items", &[("X-Canary", "always")]).await;
    assert_eq!(r.echoed().backend, "api-canary");
    // permanent-redirect.
    let r = Client::h1().get(http, "old.example.com", "/anything", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location").as_deref(), Some("https://new.example.com/landing"));
    // A TLS host: plain HTTP is redirected (308, ingress-nginx's ssl-redirect), HTTPS serves.
    let r = Client::h1().get(http, "secure.example.com", "/page?x=1", &[]).await;
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(r.header("location").as_deref(), Some("https://secure.example.com/page?x=1"));
    let client = ca.client(&[b"http/1.1"], &[13]).unwrap();
    let stream =
        crate::https::connect(([127, 0, 0, 1], ports.https).into(), "secure.example.com", client).await.unwrap();
    let (status, _, body) = crate::https::Sender::new(stream).await.get("secure.example.com", "/page").await.unwrap();
    assert_eq!((status, crate::https::echoed(&body).backend.as_str()), (200, "api"));
    // An annotation meshgate does not map is reported by name, on the Ingress.
    let snap = m.gateway.core().snapshot();
    let snippet = snap.conditions.iter().find(|c| c.field.contains("server-snippet")).expect("reported");
    assert_eq!((snippet.object.name.as_ref(), snippet.reason), ("secure", "UnsupportedValue"));
    assert!(
        !snap.conditions.iter().any(|c| c.field.contains("rewrite-target") || c.field.contains("canary")),
        "{:#?}",
        snap.conditions
    );
}
