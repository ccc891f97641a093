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
    let ports = IngressPorts { http: free_port(), https: free_port(), addresses: vec![[127, 0, 0, 1].into()] };
    let options = GatewayOptions { ingress: ports.clone(), ..GatewayOptions::default() };
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
    let migrated = translate(&set, &IngressPorts { http: 0, https: 0, addresses: Vec::new() });
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

/// Ingresses with the ingress-nginx annotations people migrate with (the TLS one is added by
/// the test with its Secret).
const ANNOTATED: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: meshgate}
spec: {controller: meshgate.io/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: main
  namespace: web
  annotations: {nginx.ingress.kubernetes.io/rewrite-target: /v2/$2, nginx.ingress.kubernetes.io/proxy-read-timeout: "30"}
spec:
  ingressClassName: meshgate
  rules: [{host: shop.example.com, http: {paths: [{path: "/api(/|$)(.*)", pathType: ImplementationSpecific, backend: {service: {name: api, port: {number: 8080}}}}]}}]
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
  rules: [{host: shop.example.com, http: {paths: [{path: "/api(/|$)(.*)", pathType: ImplementationSpecific, backend: {service: {name: api-canary, port: {number: 8080}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: flat
  namespace: web
  annotations: {nginx.ingress.kubernetes.io/rewrite-target: /}
spec:
  ingressClassName: meshgate
  rules: [{host: flat.example.com, http: {paths: [{path: /old, pathType: Prefix, backend: {service: {name: api, port: {number: 8080}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: limits
  namespace: web
  annotations:
    nginx.ingress.kubernetes.io/proxy-body-size: 1k
    nginx.ingress.kubernetes.io/whitelist-source-range: "10.0.0.0/8, 127.0.0.0/8"
    nginx.ingress.kubernetes.io/backend-protocol: GRPC
spec:
  ingressClassName: meshgate
  rules: [{host: limits.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 8080}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: private
  namespace: web
  annotations: {nginx.ingress.kubernetes.io/whitelist-source-range: 192.0.2.0/24}
spec:
  ingressClassName: meshgate
  rules: [{host: private.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 8080}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: broken
  namespace: web
  annotations: {nginx.ingress.kubernetes.io/use-regex: "true", nginx.ingress.kubernetes.io/proxy-body-size: lots}
spec:
  ingressClassName: meshgate
  rules: [{host: broken.example.com, http: {paths: [{path: "/ok/[0-9]+", pathType: Prefix, backend: {service: {name: api, port: {number: 8080}}}}, {path: "/bad(", pathType: Prefix, backend: {service: {name: api, port: {number: 8080}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: moved
  namespace: web
  annotations: {nginx.ingress.kubernetes.io/permanent-redirect: "https://new.example.com/landing"}
spec:
  ingressClassName: meshgate
  rules: [{host: old.example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 8080}}}}]}}]
"#;

/// A chunked POST of `size` bytes over a fresh connection; the status line's code.
async fn chunked_post(addr: std::net::SocketAddr, host: &str, size: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // In pieces of 256 bytes: the limit is crossed mid-stream, not on a declared length.
    for _ in 0..size / 256 {
        let chunk = format!("100\r\n{}\r\n", "x".repeat(256));
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line: {text:?}"))
}

/// What the annotations do over plain HTTP, the same through the Ingresses and through the
/// resources `meshgate migrate ingress` prints for them.
async fn check_annotations(http: std::net::SocketAddr, what: &str) {
    let c = Client::h1();
    // rewrite-target with capture groups (use-regex implied): the whole path becomes the
    // target with the groups in it; canary-weight 0 keeps everything on the main backend
    // unless canary-by-header says "always" (the canary gets the main Ingress's rewrite).
    for (path, want) in [("/api/items", "/v2/items"), ("/API/a/b?q=1", "/v2/a/b?q=1"), ("/api", "/v2/")] {
        let r = c.get(http, "shop.example.com", path, &[]).await;
        assert_eq!(r.status, 200, "{what} {path}: {}", r.text());
        let e = r.echoed();
        assert_eq!((e.backend.as_str(), e.path.as_str()), ("api", want), "{what} {path}");
    }
    let r = c.get(http, "shop.example.com", "/api/items", &[("X-Canary", "always")]).await;
    assert_eq!((r.echoed().backend.as_str(), r.echoed().path.as_str()), ("api-canary", "/v2/items"), "{what}");
    // Without capture groups the whole path is replaced (ingress-nginx since 0.22).
    assert_eq!(c.get(http, "flat.example.com", "/old/deep/page", &[]).await.echoed().path, "/", "{what}");
    // proxy-body-size 1k: a declared length over it is refused before the backend sees it,
    // a chunked body where it crosses the limit; the allowed range serves loopback; the
    // backend is spoken to over HTTP/2 (backend-protocol GRPC).
    let e = c.get(http, "limits.example.com", "/x", &[]).await.echoed();
    assert_eq!(e.proto, "HTTP/2.0", "{what}");
    let post = |n: usize| c.send(http, http::Method::POST, "limits.example.com", "/up", &[], vec![b'x'; n].into());
    assert_eq!(post(1024).await.unwrap().status, 200, "{what}");
    let r = post(1025).await.unwrap();
    assert_eq!(r.status, 413, "{what}: {}", r.text());
    assert!(r.text().contains("limit of 1024 bytes"), "{what}: {}", r.text());
    assert_eq!(chunked_post(http, "limits.example.com", 768).await, 200, "{what}");
    assert_eq!(chunked_post(http, "limits.example.com", 4096).await, 413, "{what}");
    // whitelist-source-range without the client's address.
    let r = c.get(http, "private.example.com", "/", &[]).await;
    assert_eq!(r.status, 403, "{what}");
    assert!(r.text().contains("127.0.0.1 is not in the allowed source ranges"), "{what}: {}", r.text());
    // use-regex: a path that compiles is served as a regex, the one that does not is left out.
    assert_eq!(c.get(http, "broken.example.com", "/ok/42", &[]).await.status, 200, "{what}");
    assert_eq!(c.get(http, "broken.example.com", "/ok/x", &[]).await.status, 404, "{what}");
    // permanent-redirect.
    let r = c.get(http, "old.example.com", "/anything", &[]).await;
    assert_eq!(r.status, 301, "{what}");
    assert_eq!(r.header("location").as_deref(), Some("https://new.example.com/landing"), "{what}");
}

#[tokio::test]
async fn ingress_nginx_annotations_people_migrate_with() {
    let ca = meshgate_tls::testing::EdgeCa::new().unwrap();
    let cert = ca.issue(&["secure.example.com"], meshgate_tls::testing::KeyAlg::EcdsaP256, -60, 3600).unwrap();
    let yaml = format!(
        r#"{ANNOTATED}
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
    let ports = IngressPorts { http: free_port(), https: free_port(), addresses: Vec::new() };
    let options = GatewayOptions { ingress: ports.clone(), ..GatewayOptions::default() };
    let m = Mesh::start_with(&yaml, &["web/api", "web/api-canary"], options).await;
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], ports.http));
    // What could not be applied is reported by name and field, on its Ingress; the rest not.
    let snap = m.gateway.core().snapshot();
    let reported: Vec<(&str, &str, &str, &str)> = snap
        .conditions
        .iter()
        .filter(|c| !c.status || c.kind == "Conflicted")
        .map(|c| (c.object.name.as_ref(), c.field.as_str(), c.reason, c.message.as_str()))
        .collect();
    for (name, field) in [
        ("secure", "metadata.annotations[nginx.ingress.kubernetes.io/server-snippet]"),
        ("broken", "metadata.annotations[nginx.ingress.kubernetes.io/proxy-body-size]"),
        ("broken", "spec.rules[0].http.paths[1].path"),
    ] {
        assert!(
            reported.iter().any(|r| (r.0, r.1, r.2) == (name, field, "UnsupportedValue")),
            "{name} {field}: {reported:#?}"
        );
    }
    assert!(
        !reported.iter().any(|r| ["main", "main-canary", "flat", "limits", "private", "moved"].contains(&r.0)),
        "{reported:#?}"
    );

    check_annotations(http, "ingress").await;
    // A TLS host: plain HTTP is redirected (308, ingress-nginx's ssl-redirect), HTTPS serves.
    let r = Client::h1().get(http, "secure.example.com", "/page?x=1", &[]).await;
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(r.header("location").as_deref(), Some("https://secure.example.com/page?x=1"));
    let client = ca.client(&[b"http/1.1"], &[13]).unwrap();
    let stream =
        crate::https::connect(([127, 0, 0, 1], ports.https).into(), "secure.example.com", client).await.unwrap();
    let (status, _, body) = crate::https::Sender::new(stream).await.get("secure.example.com", "/page").await.unwrap();
    assert_eq!((status, crate::https::echoed(&body).backend.as_str()), (200, "api"));
    // The same requests through what `meshgate migrate ingress` prints, on one HTTP listener.
    let loaded = meshgate_api::load_str(&"annotated.yaml".into(), ANNOTATED);
    assert!(loaded.errors.is_empty(), "{}", loaded.errors);
    let set = meshgate_api::ResourceSet::from_objects(loaded.objects).0;
    let migrated = translate(&set, &IngressPorts::default());
    let mut yaml = String::new();
    for (_, doc) in &migrated.docs {
        let mut doc = doc.clone();
        if doc["kind"] == "Gateway" {
            doc["spec"]["listeners"] = serde_json::json!([{"name": "http", "port": "{port}", "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}]);
        }
        yaml += &format!("---\n{}\n", doc.to_string().replace("\"{port}\"", "{port}"));
    }
    assert!(yaml.contains("\"kind\":\"HTTPRouteFilter\""), "{yaml}");
    let m2 = Mesh::start(&yaml, &["web/api", "web/api-canary"]).await;
    check_annotations(m2.addr(), "migrated").await;
}
