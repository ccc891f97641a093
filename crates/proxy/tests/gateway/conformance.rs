//! Extended features' cases from the Gateway API conformance suite (query and method matching,
//! response headers, redirects, rewrites, mirrors, disallowed kinds); the core tests, one per
//! upstream test, are in `suite/`.

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
async fn query_param_matching() {
    let rules = r#"
  - matches: [{queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{queryParams: [{name: animal, value: dolphin}]}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
  - matches: [{queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]}, {queryParams: [{name: ANIMAL, value: Whale}]}]
    backendRefs: [{name: infra-backend-v3, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path1}, queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{headers: [{name: version, value: one}], queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: infra-backend-v3, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], queryParams: [{name: animal, value: kraken}]}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path5}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{queryParams: [{name: animal, value: hydra}]}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
  - matches: [{headers: [{name: version, value: four}]}]
    backendRefs: [{name: infra-backend-v3, port: 8080}]"#;
    let m = Mesh::start(&(gateway("gw") + &route("query", "[]", rules)), &V123).await;
    let cases: [(&str, &[(&str, &str)], Option<&str>); 19] = [
        ("/?animal=whale", &[], Some(V1)),
        ("/?animal=dolphin", &[], Some(V2)),
        ("/?animal=dolphin&color=blue", &[], Some(V3)),
        ("/?ANIMAL=Whale", &[], Some(V3)),
        ("/?animal=whale&otherparam=irrelevant", &[], Some(V1)),
        ("/?animal=dolphin&color=yellow", &[], Some(V2)),
        ("/?color=blue", &[], None),
        ("/?animal=dog", &[], None),
        ("/?animal=whaledolphin", &[], None),
        ("/", &[], None),
        ("/path1?animal=whale", &[], Some(V1)),
        ("/?animal=whale", &[("version", "one")], Some(V2)),
        ("/path2?animal=whale", &[("version", "two")], Some(V3)),
        ("/path3?animal=shark", &[], Some(V1)),
        ("/path4?animal=kraken", &[("version", "three")], Some(V1)),
        ("/?animal=shark", &[], None),
        ("/path4?animal=kraken", &[], None),
        ("/path5?animal=hydra", &[], Some(V1)),
        ("/?animal=hydra", &[("version", "four")], Some(V3)),
    ];
    for (path, headers, want) in cases {
        match want {
            Some(b) => m.expect_backend("h", path, headers, b).await,
            None => m.expect_status("h", path, headers, 404).await,
        }
    }
}

#[tokio::test]
async fn method_matching() {
    let rules = r#"
  - matches: [{method: POST}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{method: GET}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path1}, method: GET}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{headers: [{name: version, value: one}], method: PUT}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], method: POST}]
    backendRefs: [{name: infra-backend-v3, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path3}, method: PATCH}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], method: DELETE}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path5}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{method: PATCH}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
  - matches: [{headers: [{name: version, value: four}]}]
    backendRefs: [{name: infra-backend-v3, port: 8080}]"#;
    let m = Mesh::start(&(gateway("gw") + &route("method", "[]", rules)), &V123).await;
    let c = meshgate_testkit::Client::h1();
    let cases: [(&str, &str, &[(&str, &str)], Option<&str>); 12] = [
        ("POST", "/", &[], Some(V1)),
        ("GET", "/", &[], Some(V2)),
        ("HEAD", "/", &[], None),
        ("GET", "/path1", &[], Some(V1)),
        ("PUT", "/", &[("version", "one")], Some(V2)),
        ("POST", "/path2", &[("version", "two")], Some(V3)),
        ("PATCH", "/path3", &[], Some(V1)),
        ("DELETE", "/path4", &[("version", "three")], Some(V1)),
        ("PUT", "/", &[], None),
        ("DELETE", "/path4", &[], None),
        ("PATCH", "/path5", &[], Some(V1)),
        ("PATCH", "/", &[("version", "four")], Some(V2)),
    ];
    for (method, path, headers, want) in cases {
        let r = c.send(m.addr(), method.parse().unwrap(), "h", path, headers, bytes::Bytes::new()).await.unwrap();
        match want {
            Some(b) => {
                assert_eq!(r.status, 200, "{method} {path}");
                assert_eq!(r.echoed().backend, b, "{method} {path} {headers:?}");
            }
            None => assert_eq!(r.status, 404, "{method} {path} {headers:?}"),
        }
    }
}

fn modifier_rules(filter: &str) -> String {
    format!(
        r#"
  - matches: [{{path: {{type: PathPrefix, value: /set}}}}]
    filters: [{{type: {filter}, {field}: {{set: [{{name: X-Header-Set, value: set-overwrites-values}}]}}}}]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /add}}}}]
    filters: [{{type: {filter}, {field}: {{add: [{{name: X-Header-Add, value: add-appends-values}}]}}}}]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /remove}}}}]
    filters: [{{type: {filter}, {field}: {{remove: [X-Header-Remove]}}}}]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /multiple}}}}]
    filters:
    - type: {filter}
      {field}:
        set: [{{name: X-Header-Set-1, value: header-set-1}}, {{name: X-Header-Set-2, value: header-set-2}}]
        add: [{{name: X-Header-Add-1, value: header-add-1}}, {{name: X-Header-Add-2, value: header-add-2}}, {{name: X-Header-Add-3, value: header-add-3}}]
        remove: [X-Header-Remove-1, X-Header-Remove-2]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /case-insensitivity}}}}]
    filters:
    - type: {filter}
      {field}:
        set: [{{name: X-Header-Set, value: header-set}}]
        add: [{{name: X-Header-Add, value: header-add}}]
        remove: [X-Header-Remove]
    backendRefs: [{{name: infra-backend-v1, port: 8080}}]"#,
        field = if filter == "RequestHeaderModifier" { "requestHeaderModifier" } else { "responseHeaderModifier" }
    )
}

#[tokio::test]
async fn response_header_modifier() {
    let m =
        Mesh::start(&(gateway("gw") + &route("resp", "[]", &modifier_rules("ResponseHeaderModifier"))), &V123).await;
    // The echo upstream answers with every `x-echo-response-NAME` request header as NAME.
    let r = m.get_with("h", "/set", &[("x-echo-response-x-header-set", "some-other-value")]).await;
    assert_eq!(r.header("x-header-set").as_deref(), Some("set-overwrites-values"));
    let r = m.get_with("h", "/add", &[("x-echo-response-x-header-add", "some-other-value")]).await;
    let values: Vec<_> = r.headers.get_all("x-header-add").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(values.join(","), "some-other-value,add-appends-values");
    let r = m.get_with("h", "/remove", &[("x-echo-response-x-header-remove", "val")]).await;
    assert!(r.header("x-header-remove").is_none());
    let r = m.get_with("h", "/multiple", &[("x-echo-response-x-header-remove-1", "x")]).await;
    assert_eq!(r.header("x-header-set-1").as_deref(), Some("header-set-1"));
    assert_eq!(r.header("x-header-add-3").as_deref(), Some("header-add-3"));
    assert!(r.header("x-header-remove-1").is_none());
}

#[tokio::test]
async fn redirects() {
    let redirect = |prefix: &str, spec: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {spec}}}]\n"
        )
    };
    let rules = [
        redirect("/hostname-redirect", "{hostname: example.org}")
            + "    backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        redirect("/host-and-status", "{statusCode: 301, hostname: example.org}"),
        redirect("/original-prefix", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}"),
        redirect("/full", "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}"),
        redirect(
            "/path-and-host",
            "{hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}",
        ),
        redirect(
            "/path-and-status",
            "{statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}",
        ),
        redirect(
            "/full-path-and-host",
            "{hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}",
        ),
        redirect("/port", "{port: 8083}"),
        redirect("/port-and-host", "{port: 8083, hostname: example.org}"),
        redirect("/port-and-temporary", "{port: 8083, hostname: example.org, statusCode: 307}"),
        redirect("/port-and-permanent", "{port: 8083, hostname: example.org, statusCode: 308}"),
        redirect("/scheme", "{scheme: https}"),
        redirect("/scheme-and-host", "{scheme: https, hostname: example.org}"),
        redirect("/scheme-and-status", "{scheme: https, statusCode: 301}"),
        redirect("/scheme-https-and-port-8443", "{scheme: https, port: 8443, hostname: example.org}"),
        redirect("/scheme-nil-and-port-80", "{port: 80, hostname: example.org}"),
    ]
    .concat();
    let m = Mesh::start(&(gateway("gw") + &route("redirect", "[]", &rules)), &V123).await;
    let p = m.port;
    let cases: [(&str, u16, String); 17] = [
        ("/hostname-redirect", 302, format!("http://example.org:{p}/hostname-redirect")),
        ("/host-and-status", 301, format!("http://example.org:{p}/host-and-status")),
        ("/original-prefix/lemon", 302, format!("http://orig.test:{p}/replacement-prefix/lemon")),
        ("/full/path/original", 302, format!("http://orig.test:{p}/full-path-replacement")),
        ("/path-and-host", 302, format!("http://example.org:{p}/replacement-prefix")),
        ("/path-and-status", 301, format!("http://orig.test:{p}/replacement-prefix")),
        ("/full-path-and-host", 302, format!("http://example.org:{p}/replacement-full")),
        ("/port", 302, "http://orig.test:8083/port".to_string()),
        ("/port-and-host", 302, "http://example.org:8083/port-and-host".to_string()),
        ("/port-and-temporary", 307, "http://example.org:8083/port-and-temporary".to_string()),
        ("/port-and-permanent", 308, "http://example.org:8083/port-and-permanent".to_string()),
        ("/scheme", 302, "https://orig.test/scheme".to_string()),
        ("/scheme-and-host", 302, "https://example.org/scheme-and-host".to_string()),
        ("/scheme-and-status", 301, "https://orig.test/scheme-and-status".to_string()),
        ("/scheme-https-and-port-8443", 302, "https://example.org:8443/scheme-https-and-port-8443".to_string()),
        ("/scheme-nil-and-port-80", 302, "http://example.org/scheme-nil-and-port-80".to_string()),
        ("/original-prefix?q=1&r=2", 302, format!("http://orig.test:{p}/replacement-prefix?q=1&r=2")),
    ];
    for (path, status, location) in cases {
        let r = m.get(&format!("orig.test:{p}"), path).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(r.header("location").as_deref(), Some(location.as_str()), "{path}");
    }
}

#[tokio::test]
async fn rewrites() {
    let rules = r#"
  - matches: [{path: {type: PathPrefix, value: /one}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: one.example.org}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - filters: [{type: URLRewrite, urlRewrite: {hostname: example.org}}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}]
    filters:
    - {type: URLRewrite, urlRewrite: {hostname: test.example.org, path: {type: ReplaceFullPath, replaceFullPath: /test}}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    backendRefs: [{name: infra-backend-v2, port: 8080}]"#;
    let m = Mesh::start(&(gateway("gw") + &route("rewrite", "[rewrite.example]", rules)), &V123).await;
    let e = m.get("rewrite.example", "/one").await.echoed();
    assert_eq!((e.backend.as_str(), e.host.as_str(), e.path.as_str()), (V1, "one.example.org", "/one"));
    let e = m.get("rewrite.example", "/two").await.echoed();
    assert_eq!((e.backend.as_str(), e.host.as_str(), e.path.as_str()), (V2, "example.org", "/two"));
    assert_eq!(m.get("rewrite.example", "/prefix/one/two").await.echoed().path, "/one/two");
    assert_eq!(m.get("rewrite.example", "/strip-prefix/three").await.echoed().path, "/three");
    assert_eq!(m.get("rewrite.example", "/strip-prefix").await.echoed().path, "/");
    assert_eq!(m.get("rewrite.example", "/strip-prefix/a?x=1").await.echoed().path, "/a?x=1");
    assert_eq!(m.get("rewrite.example", "/full/one/two").await.echoed().path, "/one");
    let e = m
        .get_with(
            "rewrite.example",
            "/full/rewrite-path-and-modify-headers/test",
            &[("X-Header-Remove", "remove-val"), ("X-Header-Add-Append", "append-val-1"), ("X-Header-Set", "set-val")],
        )
        .await
        .echoed();
    assert_eq!(e.path, "/test");
    assert_eq!(e.host, "test.example.org");
    assert_eq!(e.headers["x-header-add"], "header-val-1");
    assert_eq!(e.headers["x-header-add-append"], "append-val-1,header-val-2");
    assert_eq!(e.headers["x-header-set"], "set-overwrites-values");
    assert!(!e.headers.contains_key("x-header-remove"));
    // The Host the client sent is kept in X-Forwarded-Host.
    assert_eq!(e.headers["x-forwarded-host"], "rewrite.example");
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
