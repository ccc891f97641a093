//! Cases from the Gateway API conformance suite not yet ported one test per upstream test
//! (mirrors, invalid backends beside valid ones, disallowed kinds); the ported ones are in
//! `suite/`.

use crate::harness::{Mesh, V123, gateway};

const V1: &str = "infra-backend-v1";
const V2: &str = "infra-backend-v2";
const V3: &str = "infra-backend-v3";

fn route(name: &str, hostnames: &str, rules: &str) -> String {
    format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: infra}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: {hostnames}
  rules:
{rules}
"#
    )
}

#[tokio::test]
async fn request_mirror() {
    let rules = r#"
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: infra-backend-v2, port: 8080}}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /half}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: infra-backend-v3, port: 8080}, percent: 50}}
    backendRefs: [{name: infra-backend-v1, port: 8080}]"#;
    let m = Mesh::start(&(gateway("gw") + &route("mirror", "[]", rules)), &V123).await;
    let client = meshgate_testkit::Client::h1();
    let r = client
        .send(m.addr(), http::Method::POST, "h", "/mirror", &[], bytes::Bytes::from(vec![7u8; 100_000]))
        .await
        .unwrap();
    assert_eq!(r.echoed().backend, V1);
    assert_eq!(r.echoed().body_bytes, 100_000);
    let mirror = &m.backends[V2];
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = mirror.seen();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen.len(), 1, "the mirror got a copy");
    assert_eq!(seen[0].path, "/mirror");
    assert_eq!(seen[0].body_bytes, 100_000, "with the whole body");
    assert_eq!(seen[0].headers["x-header-set"], "set-overwrites-values");
    for _ in 0..400 {
        assert_eq!(m.get("h", "/half").await.echoed().backend, V1);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let n = m.backends[V3].seen().len();
    assert!((140..=260).contains(&n), "50% of 400 mirrored, got {n}");
}

#[tokio::test]
async fn invalid_backend_refs_get_500_and_siblings_work() {
    let yaml = gateway("gw")
        + r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: refs, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /cross}}]
    backendRefs: [{name: web-backend, namespace: web, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /granted}}]
    backendRefs: [{name: app-backend-v1, namespace: app, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /not-granted}}]
    backendRefs: [{name: app-backend-v2, namespace: app, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /unknown-kind}}]
    backendRefs: [{group: unknown.example.com, kind: Unknown, name: x, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: does-not-exist, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /half}}]
    backendRefs: [{name: does-not-exist, port: 8080}, {name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /ok}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow-infra, namespace: app}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]
  to: [{group: "", kind: Service, name: app-backend-v1}]
"#;
    let mut backends = V123.to_vec();
    backends.extend(["web/web-backend", "app/app-backend-v1", "app/app-backend-v2"]);
    let m = Mesh::start(&yaml, &backends).await;
    m.expect_status("h", "/cross", &[], 500).await;
    m.expect_backend("h", "/granted", &[], "app-backend-v1").await;
    m.expect_status("h", "/not-granted", &[], 500).await;
    m.expect_status("h", "/unknown-kind", &[], 500).await;
    m.expect_status("h", "/missing", &[], 500).await;
    m.expect_backend("h", "/ok", &[], V1).await;
    let mut errors = 0;
    for _ in 0..400 {
        if m.get("h", "/half").await.status == 500 {
            errors += 1;
        }
    }
    assert!((140..=260).contains(&errors), "half of the traffic to the invalid backend: {errors}/400");
    let snap = m.gateway.snapshot();
    let reasons: Vec<&str> =
        snap.conditions.iter().filter(|c| c.kind == "ResolvedRefs" && !c.status).map(|c| c.reason).collect();
    assert_eq!(
        reasons,
        ["RefNotPermitted", "RefNotPermitted", "InvalidKind", "BackendNotFound", "BackendNotFound"],
        "{:#?}",
        snap.conditions
    );
    let accepted = snap.conditions.iter().find(|c| c.kind == "Accepted" && c.object.name.as_ref() == "refs").unwrap();
    assert!(accepted.status, "the route stays Accepted");
}

#[tokio::test]
async fn disallowed_kind_and_namespaces() {
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: meshgate
  listeners:
  - name: tls-only
    port: {port}
    protocol: HTTP
    hostname: tls.example.com
    allowedRoutes: {kinds: [{kind: TLSRoute}]}
  - name: same-ns
    port: {port}
    protocol: HTTP
    hostname: same.example.com
  - name: selected
    port: {port}
    protocol: HTTP
    hostname: selected.example.com
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: web}}}}
---
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {team: web}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: disallowed-kind, namespace: infra}
spec:
  parentRefs: [{name: gw, sectionName: tls-only}]
  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: from-web, namespace: web}
spec:
  parentRefs: [{name: gw, namespace: infra}]
  rules: [{backendRefs: [{name: web-backend, port: 8080}]}]
"#;
    let mut backends = V123.to_vec();
    backends.push("web/web-backend");
    let m = Mesh::start(yaml, &backends).await;
    m.expect_status("tls.example.com", "/", &[], 404).await;
    m.expect_status("same.example.com", "/", &[], 404).await;
    m.expect_backend("selected.example.com", "/", &[], "web-backend").await;
    let snap = m.gateway.snapshot();
    let c =
        snap.conditions.iter().find(|c| c.object.name.as_ref() == "disallowed-kind" && c.kind == "Accepted").unwrap();
    assert_eq!((c.status, c.reason), (false, "NotAllowedByListeners"));
}
