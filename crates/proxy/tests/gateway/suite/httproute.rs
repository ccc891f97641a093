//! The HTTPRoute tests of GATEWAY-HTTP core.

use meshgate_api::Kind;

use super::{APP, INFRA, SAME, Suite, V1, V2, V3, WEB, must_have};

fn route(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

/// A route on `same-namespace` with `rules` (YAML list items, indented by two).
fn on_same(name: &str, rules: &str) -> String {
    route(INFRA, name, &format!("  parentRefs: [{{name: same-namespace}}]\n  rules:\n{rules}"))
}

fn grant(ns: &str, name: &str, to: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-infra}}]\n  to: [{to}]\n"
    )
}

/// The route `ns/name` is Accepted by `gateway`, with ResolvedRefs `resolved` (and `reason`).
#[track_caller]
fn accepted(s: &Suite, ns: &str, name: &str, gateway: &str, resolved: bool, reason: &str) {
    let p = s.parent(Kind::HttpRoute, ns, name, gateway).unwrap_or_else(|| panic!("{name}: no parent {gateway}"));
    must_have(&p, "Accepted", true, "Accepted");
    must_have(&p, "ResolvedRefs", resolved, reason);
    assert_eq!(p["controllerName"], "meshgate.io/gateway-controller");
}

#[tokio::test]
async fn http_route_simple_same_namespace() {
    let s = Suite::start(&on_same(
        "gateway-conformance-infra-test",
        "  - backendRefs: [{name: infra-backend-v1, port: 8080}]",
    ))
    .await;
    accepted(&s, INFRA, "gateway-conformance-infra-test", SAME, true, "ResolvedRefs");
    s.expect_backend(SAME, "any", "/", &[], V1).await;
}

#[tokio::test]
async fn http_route_cross_namespace() {
    let yaml = route(
        WEB,
        "cross-namespace",
        "  parentRefs: [{name: backend-namespaces, namespace: gateway-conformance-infra}]\n  rules: [{backendRefs: [{name: web-backend, port: 8080}]}]",
    );
    let s = Suite::start(&yaml).await;
    accepted(&s, WEB, "cross-namespace", "backend-namespaces", true, "ResolvedRefs");
    s.expect_backend("backend-namespaces", "any", "/", &[], "web-backend").await;
}

#[tokio::test]
async fn http_exact_path_matching() {
    let rules = "  - matches: [{path: {type: Exact, value: /one}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: Exact, value: /two}}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]";
    let s = Suite::start(&on_same("exact-matching", rules)).await;
    s.expect_backend(SAME, "any", "/one", &[], V1).await;
    s.expect_backend(SAME, "any", "/two", &[], V2).await;
    for path in ["/", "/one/example", "/two/", "/Two"] {
        s.expect_status(SAME, "any", path, &[], 404).await;
    }
}

#[tokio::test]
async fn http_route_header_matching() {
    let rules = r#"  - matches: [{headers: [{name: version, value: one}]}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{headers: [{name: version, value: two}]}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
  - matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]"#;
    let s = Suite::start(&on_same("header-matching", rules)).await;
    let cases: [(&[(&str, &str)], Option<&str>); 11] = [
        (&[("Version", "one")], Some(V1)),
        (&[("Version", "two")], Some(V2)),
        (&[("Version", "two"), ("Color", "orange")], Some(V1)),
        (&[("Version", "two"), ("Color", "blue")], Some(V2)),
        (&[("Color", "orange")], None),
        (&[("Some-Other-Header", "one")], None),
        (&[("Color", "blue")], Some(V1)),
        (&[("Color", "green")], Some(V1)),
        (&[("Color", "red")], Some(V2)),
        (&[("Color", "yellow")], Some(V2)),
        (&[("Color", "purple")], None),
    ];
    for (headers, backend) in cases {
        match backend {
            Some(b) => s.expect_backend(SAME, "any", "/", headers, b).await,
            None => s.expect_status(SAME, "any", "/", headers, 404).await,
        }
    }
}

#[tokio::test]
async fn http_route_hostname_intersection() {
    let gw = format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: httproute-hostname-intersection, namespace: {INFRA}}}
spec:
  gatewayClassName: meshgate
  listeners:
  - {{name: listener-1, port: 80, protocol: HTTP, hostname: very.specific.com, allowedRoutes: {{namespaces: {{from: Same}}}}}}
  - {{name: listener-2, port: 80, protocol: HTTP, hostname: "*.wildcard.io", allowedRoutes: {{namespaces: {{from: Same}}}}}}
  - {{name: listener-3, port: 80, protocol: HTTP, hostname: "*.anotherwildcard.io", allowedRoutes: {{namespaces: {{from: Same}}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: httproute-hostname-intersection-all, namespace: {INFRA}}}
spec:
  gatewayClassName: meshgate
  listeners:
  - {{name: listener-1, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}
"#
    );
    let r = |name: &str, gw: &str, hosts: &str, prefix: &str, backend: &str| {
        route(
            INFRA,
            name,
            &format!(
                "  parentRefs: [{{name: {gw}, namespace: {INFRA}}}]\n  hostnames: {hosts}\n  rules: [{{matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}], backendRefs: [{{name: {backend}, port: 8080}}]}}]"
            ),
        )
    };
    let g = "httproute-hostname-intersection";
    let yaml =
        gw + &r(
            "specific-host-matches-listener-specific-host",
            g,
            "[non.matching.com, \"*.nonmatchingwildcard.io\", very.specific.com]",
            "/s1",
            V1,
        ) + &r(
            "specific-host-matches-listener-wildcard-host",
            g,
            "[non.matching.com, wildcard.io, foo.wildcard.io, bar.wildcard.io, foo.bar.wildcard.io]",
            "/s2",
            V2,
        ) + &r("wildcard-host-matches-listener-specific-host", g, "[non.matching.com, \"*.specific.com\"]", "/s3", V3)
            + &r("wildcard-host-matches-listener-wildcard-host", g, "[\"*.anotherwildcard.io\"]", "/s4", V1)
            + &r("no-intersecting-hosts", g, "[specific.but.wrong.com, wildcard.io]", "/s5", V2)
            + &r(
                "httproute-hostname-intersection-all",
                "httproute-hostname-intersection-all",
                "[first.com, \"*.first.com\", second.com, \"*.second.com\"]",
                "/",
                V2,
            );
    let s = Suite::start(&yaml).await;
    for name in [
        "specific-host-matches-listener-specific-host",
        "specific-host-matches-listener-wildcard-host",
        "wildcard-host-matches-listener-specific-host",
        "wildcard-host-matches-listener-wildcard-host",
    ] {
        accepted(&s, INFRA, name, g, true, "ResolvedRefs");
    }
    let cases: [(&str, &str, Option<&str>); 25] = [
        ("very.specific.com", "/s1", Some(V1)),
        ("very.specific.com:1234", "/s1", Some(V1)),
        ("non.matching.com", "/s1", None),
        ("foo.nonmatchingwildcard.io", "/s1", None),
        ("foo.wildcard.io", "/s1", None),
        ("very.specific.com", "/non-matching-prefix", None),
        ("foo.wildcard.io", "/s2", Some(V2)),
        ("bar.wildcard.io", "/s2", Some(V2)),
        ("foo.bar.wildcard.io", "/s2", Some(V2)),
        ("non.matching.com", "/s2", None),
        ("wildcard.io", "/s2", None),
        ("very.specific.com", "/s2", None),
        ("foo.wildcard.io", "/non-matching-prefix", None),
        ("very.specific.com", "/s3", Some(V3)),
        ("non.matching.com", "/s3", None),
        ("foo.specific.com", "/s3", None),
        ("foo.wildcard.io", "/s3", None),
        ("very.specific.com", "/non-matching-prefix", None),
        ("foo.anotherwildcard.io", "/s4", Some(V1)),
        ("bar.anotherwildcard.io", "/s4", Some(V1)),
        ("foo.bar.anotherwildcard.io", "/s4", Some(V1)),
        ("anotherwildcard.io", "/s4", None),
        ("foo.wildcard.io", "/s4", None),
        ("very.specific.com", "/s4", None),
        ("foo.anotherwildcard.io", "/non-matching-prefix", None),
    ];
    for (host, path, backend) in cases {
        match backend {
            Some(b) => s.expect_backend(g, host, path, &[], b).await,
            None => s.expect_status(g, host, path, &[], 404).await,
        }
    }
    let none = s.status(Kind::HttpRoute, INFRA, "no-intersecting-hosts");
    let parents = none["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 1, "{none:#}");
    assert_eq!(
        parents[0]["parentRef"],
        serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": INFRA, "name": g})
    );
    must_have(&parents[0], "Accepted", false, "NoMatchingListenerHostname");
    s.expect_status(g, "specific.but.wrong.com", "/s5", &[], 404).await;
    s.expect_status(g, "wildcard.io", "/s5", &[], 404).await;
    for (l, n) in [("listener-1", 2), ("listener-2", 1), ("listener-3", 1)] {
        let l = s.listener(g, l);
        must_have(&l, "Accepted", true, "");
        must_have(&l, "ResolvedRefs", true, "");
        assert_eq!(l["attachedRoutes"], n, "{l:#}");
    }
    let all = "httproute-hostname-intersection-all";
    for host in ["first.com", "sub.first.com", "second.com", "sub.second.com"] {
        s.expect_backend(all, host, "/", &[], V2).await;
    }
    for host in ["third.com", "sub.third.com"] {
        s.expect_status(all, host, "/", &[], 404).await;
    }
}

#[tokio::test]
async fn http_route_https_listener() {
    let gw = "same-namespace-with-https-listener";
    let yaml = route(
        INFRA,
        "httproute-https-test",
        &format!(
            "  parentRefs: [{{name: {gw}}}]\n  hostnames: [example.org]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]"
        ),
    ) + &route(
        INFRA,
        "httproute-https-test-no-hostname",
        &format!(
            "  parentRefs: [{{name: {gw}, sectionName: https-with-hostname}}]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]"
        ),
    );
    let s = Suite::start(&yaml).await;
    accepted(&s, INFRA, "httproute-https-test", gw, true, "ResolvedRefs");
    accepted(&s, INFRA, "httproute-https-test-no-hostname", gw, true, "ResolvedRefs");
    let client = s.pki.ca.client(&[b"http/1.1"], &[13, 12]).unwrap();
    for (sni, host, backend) in [
        ("example.org", "example.org", Some(V1)),
        ("unknown-example.org", "second-example.org", None),
        ("second-example.org", "second-example.org", Some(V1)),
        ("unknown-example.org", "unknown-example.org", None),
    ] {
        let stream = crate::https::connect(s.addr(gw, 443), sni, client.clone()).await.unwrap();
        let (status, _, body) = crate::https::Sender::new(stream).await.get(host, "/").await.unwrap();
        match backend {
            Some(b) => {
                assert_eq!(status, 200, "{sni} {host}");
                assert_eq!(crate::https::echoed(&body).backend, b);
            }
            None => assert_eq!(status, 404, "{sni} {host}"),
        }
    }
}

#[tokio::test]
async fn http_route_invalid_backend_ref_unknown_kind() {
    let rules = "  - matches: [{path: {type: PathPrefix, value: /v2}}]\n    backendRefs: [{group: unknownkind.example.com, kind: NonExistent, name: infra-backend-v2, port: 8080}]";
    let s = Suite::start(&on_same("invalid-backend-ref-unknown-kind", rules)).await;
    accepted(&s, INFRA, "invalid-backend-ref-unknown-kind", SAME, false, "InvalidKind");
    s.expect_status(SAME, "any", "/v2", &[], 500).await;
}

#[tokio::test]
async fn http_route_invalid_cross_namespace_backend_ref() {
    let rules = "  - backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]";
    let s = Suite::start(&on_same("invalid-cross-namespace-backend-ref", rules)).await;
    accepted(&s, INFRA, "invalid-cross-namespace-backend-ref", SAME, false, "RefNotPermitted");
    s.expect_status(SAME, "any", "/", &[], 500).await;
}

/// No parent of `ns/name` accepted it, and no listener of `gateway` counts it.
fn refused(s: &Suite, ns: &str, name: &str, gateway: &str, reason: &str) {
    let p = s.parent(Kind::HttpRoute, ns, name, gateway).unwrap();
    must_have(&p, "Accepted", false, reason);
    let r = s.status(Kind::HttpRoute, ns, name);
    assert!(!r["parents"].as_array().unwrap().iter().any(|p| super::has(p, "Accepted", true, "")), "{r:#}");
    let gw = s.status(Kind::Gateway, INFRA, gateway);
    assert!(gw["listeners"].as_array().unwrap().iter().all(|l| l["attachedRoutes"] == 0), "{gw:#}");
}

#[tokio::test]
async fn http_route_invalid_cross_namespace_parent_ref() {
    let yaml = route(
        WEB,
        "invalid-cross-namespace-parent-ref",
        "  parentRefs: [{name: same-namespace, namespace: gateway-conformance-infra}]\n  rules: [{backendRefs: [{name: web-backend, port: 8080}]}]",
    );
    let s = Suite::start(&yaml).await;
    let p = s.parent(Kind::HttpRoute, WEB, "invalid-cross-namespace-parent-ref", SAME).unwrap();
    must_have(&p, "ResolvedRefs", true, "");
    refused(&s, WEB, "invalid-cross-namespace-parent-ref", SAME, "NotAllowedByListeners");
}

#[tokio::test]
async fn http_route_invalid_non_existent_backend_ref() {
    let s =
        Suite::start(&on_same("invalid-nonexistent-backend-ref", "  - backendRefs: [{name: nonexistent, port: 8080}]"))
            .await;
    accepted(&s, INFRA, "invalid-nonexistent-backend-ref", SAME, false, "BackendNotFound");
    s.expect_status(SAME, "any", "/", &[], 500).await;
}

#[tokio::test]
async fn http_route_invalid_parent_ref_not_matching_section_name() {
    let yaml = route(
        INFRA,
        "httproute-listener-not-matching-section-name",
        "  parentRefs: [{name: same-namespace, namespace: gateway-conformance-infra, sectionName: http1}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    );
    let s = Suite::start(&yaml).await;
    refused(&s, INFRA, "httproute-listener-not-matching-section-name", SAME, "NoMatchingParent");
}

#[tokio::test]
async fn http_route_invalid_reference_grant() {
    let yaml = route(
        INFRA,
        "reference-grant",
        "  parentRefs: [{name: same-namespace}]\n  rules: [{backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]}]",
    ) + &grant(WEB, "not-matching", "{group: \"\", kind: Service, name: not-web-backend}");
    let s = Suite::start(&yaml).await;
    accepted(&s, INFRA, "reference-grant", SAME, false, "RefNotPermitted");
    s.expect_status(SAME, "any", "/", &[], 500).await;
}

#[tokio::test]
async fn http_route_listener_hostname_matching() {
    let gw = super::hostname_matching_gateway("httproute-listener-hostname-matching");
    let g = "httproute-listener-hostname-matching";
    let r = |name: &str, sections: &[&str], backend: &str| {
        let parents: Vec<String> =
            sections.iter().map(|s| format!("{{name: {g}, namespace: {INFRA}, sectionName: {s}}}")).collect();
        route(
            INFRA,
            name,
            &format!(
                "  parentRefs: [{}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]",
                parents.join(", ")
            ),
        )
    };
    let yaml = gw
        + &r("backend-v1", &["listener-1"], V1)
        + &r("backend-v2", &["listener-2"], V2)
        + &r("backend-v3", &["listener-3", "listener-4"], V3);
    let s = Suite::start(&yaml).await;
    for (host, backend) in [
        ("bar.com", Some(V1)),
        ("foo.bar.com", Some(V2)),
        ("baz.bar.com", Some(V3)),
        ("boo.bar.com", Some(V3)),
        ("multiple.prefixes.bar.com", Some(V3)),
        ("multiple.prefixes.foo.com", Some(V3)),
        ("foo.com", None),
        ("no.matching.host", None),
    ] {
        match backend {
            Some(b) => s.expect_backend(g, host, "/", &[], b).await,
            None => s.expect_status(g, host, "/", &[], 404).await,
        }
    }
}

#[tokio::test]
async fn http_route_matching_across_routes() {
    let yaml = route(
        INFRA,
        "matching-part1",
        "  parentRefs: [{name: same-namespace}]\n  hostnames: [example.com, example.net]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]",
    ) + &route(
        INFRA,
        "matching-part2",
        "  parentRefs: [{name: same-namespace}]\n  hostnames: [\"*.com\"]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]",
    );
    let s = Suite::start(&yaml).await;
    for (host, path, headers, backend) in [
        ("example.com", "/", &[][..], V1),
        ("example.com", "/example", &[], V1),
        ("example.net", "/example", &[], V1),
        ("example.com", "/example", &[("Version", "one")], V1),
        ("example.com", "/v2", &[], V2),
        ("example.net", "/v2", &[], V1),
        ("example.com", "/v2/example", &[], V2),
        ("example.com", "/", &[("Version", "two")], V2),
    ] {
        s.expect_backend(SAME, host, path, headers, backend).await;
    }
}

#[tokio::test]
async fn http_route_matching() {
    let rules = "  - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]";
    let s = Suite::start(&on_same("matching", rules)).await;
    for (path, headers, backend) in [
        ("/", &[][..], V1),
        ("/example", &[], V1),
        ("/", &[("Version", "one")], V1),
        ("/v2", &[], V2),
        ("/v2/example", &[], V2),
        ("/", &[("Version", "two")], V2),
        ("/v2/", &[], V2),
        ("/v2example", &[], V1),
        ("/foo/v2/example", &[], V1),
    ] {
        s.expect_backend(SAME, "any", path, headers, backend).await;
    }
}

#[tokio::test]
async fn http_route_observed_generation_bump() {
    let r = |generation: i64, backend: &str| {
        format!(
            "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: observed-generation-bump, namespace: {INFRA}, generation: {generation}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]\n"
        )
    };
    let s = Suite::start(&r(1, V1)).await;
    let check = |generation: i64| {
        let p = s.parent(Kind::HttpRoute, INFRA, "observed-generation-bump", SAME).unwrap();
        must_have(&p, "Accepted", true, "Accepted");
        for c in p["conditions"].as_array().unwrap() {
            assert_eq!(c["observedGeneration"], generation, "{p:#}");
        }
    };
    check(1);
    s.apply(&r(2, V2)).await;
    check(2);
    s.expect_backend(SAME, "any", "/", &[], V2).await;
}

#[tokio::test]
async fn http_route_partially_invalid_via_invalid_reference_grant() {
    let yaml = grant(APP, "reference-grant", "{group: \"\", kind: Service, name: app-backend-v1}")
        + &on_same(
            "invalid-reference-grant",
            "  - matches: [{path: {type: PathPrefix, value: /v2}}]\n    backendRefs: [{name: app-backend-v2, namespace: gateway-conformance-app-backend, port: 8080}]\n  - backendRefs: [{name: app-backend-v1, namespace: gateway-conformance-app-backend, port: 8080}]",
        );
    let s = Suite::start(&yaml).await;
    accepted(&s, INFRA, "invalid-reference-grant", SAME, false, "RefNotPermitted");
    s.expect_status(SAME, "any", "/v2", &[], 500).await;
    s.expect_backend(SAME, "any", "/", &[], "app-backend-v1").await;
}

#[tokio::test]
async fn http_route_path_match_order() {
    let m = |kind: &str, path: &str, backend: &str| {
        format!(
            "  - matches: [{{path: {{type: {kind}, value: {path}}}}}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n"
        )
    };
    let rules = [
        m("Exact", "/match", V1),
        m("Exact", "/match/exact", V2),
        m("Exact", "/match/exact/one", V3),
        m("PathPrefix", "/match/", V3),
        m("PathPrefix", "/match/prefix/", V1),
        m("PathPrefix", "/match/prefix/one", V2),
    ]
    .concat();
    let s = Suite::start(&on_same("path-matching-order", rules.trim_end())).await;
    for (path, backend) in [
        ("/match/exact/one", V3),
        ("/match/exact", V2),
        ("/match", V1),
        ("/match/prefix/one/any", V2),
        ("/match/prefix/any", V1),
        ("/match/any", V3),
    ] {
        s.expect_backend(SAME, "any", path, &[], backend).await;
    }
}

#[tokio::test]
async fn http_route_redirect_host_and_status() {
    let rules = r#"  - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /status-code-301}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, hostname: example.org}}]"#;
    let s = Suite::start(&on_same("redirect-host-and-status", rules)).await;
    for (path, status) in [("/hostname-redirect", 302), ("/host-and-status", 301)] {
        let r = s.get(SAME, "any", path, &[]).await;
        assert_eq!(r.status, status, "{path}");
        let location = r.header("location").unwrap_or_default();
        let url: http::Uri = location.parse().unwrap();
        assert_eq!(url.host(), Some("example.org"), "{path}: {location}");
    }
}

#[tokio::test]
async fn http_route_reference_grant() {
    let yaml = grant(WEB, "reference-grant", "{group: \"\", kind: Service, name: web-backend}")
        + &on_same(
            "reference-grant",
            "  - backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]",
        );
    let s = Suite::start(&yaml).await;
    accepted(&s, INFRA, "reference-grant", SAME, true, "ResolvedRefs");
    s.expect_backend(SAME, "any", "/", &[], "web-backend").await;
}

#[tokio::test]
async fn http_route_request_header_modifier() {
    let rules = r#"  - matches: [{path: {type: PathPrefix, value: /set}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /add}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Header-Add, value: add-appends-values}]}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /remove}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [X-Header-Remove]}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /multiple}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}]
        add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}]
        remove: [X-Header-Remove-1, X-Header-Remove-2]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /case-insensitivity}}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]"#;
    let s = Suite::start(&on_same("request-header-modifier", rules)).await;
    let seen = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let s = &s;
        async move {
            let r = s.get(SAME, "any", path, headers).await;
            assert_eq!(r.status, 200, "{path}");
            let e = r.echoed();
            assert_eq!(e.backend, V1);
            e.headers
        }
    };
    let h = seen("/set", &[("Some-Other-Header", "val")]).await;
    assert_eq!(
        (h.get("some-other-header").map(String::as_str), h.get("x-header-set").map(String::as_str)),
        (Some("val"), Some("set-overwrites-values"))
    );
    let h = seen("/set", &[("X-Header-Set", "some-other-value")]).await;
    assert_eq!(h.get("x-header-set").map(String::as_str), Some("set-overwrites-values"));
    let h = seen("/add", &[]).await;
    assert_eq!(h.get("x-header-add").map(String::as_str), Some("add-appends-values"));
    let h = seen("/add", &[("X-Header-Add", "some-other-value")]).await;
    assert_eq!(h.get("x-header-add").map(String::as_str), Some("some-other-value,add-appends-values"));
    let h = seen("/remove", &[("X-Header-Remove", "val")]).await;
    assert!(!h.contains_key("x-header-remove"), "{h:?}");
    let h = seen(
        "/multiple",
        &[
            ("X-Header-Set-2", "set-val-2"),
            ("X-Header-Add-2", "add-val-2"),
            ("X-Header-Remove-2", "remove-val-2"),
            ("Another-Header", "another-header-val"),
        ],
    )
    .await;
    for (k, v) in [
        ("x-header-set-1", "header-set-1"),
        ("x-header-set-2", "header-set-2"),
        ("x-header-add-1", "header-add-1"),
        ("x-header-add-2", "add-val-2,header-add-2"),
        ("x-header-add-3", "header-add-3"),
        ("another-header", "another-header-val"),
    ] {
        assert_eq!(h.get(k).map(String::as_str), Some(v), "{k}: {h:?}");
    }
    assert!(!h.contains_key("x-header-remove-1") && !h.contains_key("x-header-remove-2"), "{h:?}");
    let h = seen(
        "/case-insensitivity",
        &[
            ("x-header-set", "original-val-set"),
            ("x-header-add", "original-val-add"),
            ("x-header-remove", "original-val-remove"),
        ],
    )
    .await;
    assert_eq!(h.get("x-header-set").map(String::as_str), Some("header-set"));
    assert_eq!(h.get("x-header-add").map(String::as_str), Some("original-val-add,header-add"));
    assert!(!h.contains_key("x-header-remove"), "{h:?}");
}

#[tokio::test]
async fn http_route_weight() {
    let s = Suite::start(&on_same(
        "weighted-backends",
        "  - backendRefs: [{name: infra-backend-v1, port: 8080, weight: 70}, {name: infra-backend-v2, port: 8080, weight: 30}, {name: infra-backend-v3, port: 8080, weight: 0}]",
    ))
    .await;
    accepted(&s, INFRA, "weighted-backends", SAME, true, "ResolvedRefs");
    let addr = s.addr(SAME, 80);
    let round = || async move {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..50 {
                    let r = meshgate_testkit::Client::h1().get(addr, "any", "/", &[]).await;
                    assert_eq!(r.status, 200);
                    seen.push(r.echoed().backend);
                }
                seen
            }));
        }
        tasks
    };
    super::assert_split(round, V1, V2).await;
}

#[tokio::test]
async fn http_route_service_types() {
    // The Services of upstream's test, their endpoints the infra-backend-v1 echo server's
    // address: written as EndpointSlices, or (manual-endpoints) as a v1 Endpoints object.
    let v1 = meshgate_testkit::EchoServer::start("infra-backend-v1").await;
    let (ip, port) = (v1.addr.ip(), v1.addr.port());
    let service = |name: &str, headless: bool| {
        let cluster_ip = if headless { ", clusterIP: None" } else { "" };
        format!(
            "\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec: {{ports: [{{name: first-port, port: 8080, targetPort: 3000}}]{cluster_ip}}}\n"
        )
    };
    let slice = |name: &str| {
        format!(
            "\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-slice, namespace: {INFRA}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true, serving: true}}}}]\nports: [{{name: first-port, port: {port}, protocol: TCP}}]\n"
        )
    };
    let endpoints = |name: &str| {
        format!(
            "\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: {INFRA}}}\nsubsets: [{{addresses: [{{ip: \"{ip}\"}}], ports: [{{name: first-port, port: {port}, protocol: TCP}}]}}]\n"
        )
    };
    let mut yaml = String::new();
    let mut rules = String::new();
    for (name, headless, manual) in [
        ("manual-endpoints", false, "endpoints"),
        ("manual-endpointslices", false, "slices"),
        ("headless", true, "slices"),
        ("headless-manual-endpoints", true, "endpoints"),
        ("headless-manual-endpointslices", true, "slices"),
    ] {
        yaml += &service(name, headless);
        yaml += &if manual == "endpoints" { endpoints(name) } else { slice(name) };
        rules += &format!(
            "  - matches: [{{path: {{type: Exact, value: /{name}}}}}]\n    backendRefs: [{{name: {name}, port: 8080}}]\n"
        );
    }
    let s = Suite::start(&(yaml + &on_same("service-types", rules.trim_end()))).await;
    for name in [
        "manual-endpoints",
        "manual-endpointslices",
        "headless",
        "headless-manual-endpoints",
        "headless-manual-endpointslices",
    ] {
        s.expect_backend(SAME, "any", &format!("/{name}"), &[], V1).await;
    }
}

#[tokio::test]
async fn http_route_multiple_gateways() {
    let yaml = route(
        INFRA,
        "multiple-gateways-shared-route",
        "  parentRefs: [{name: same-namespace}, {name: all-namespaces}]\n  rules: [{matches: [{path: {type: PathPrefix, value: /shared}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    ) + &route(
        INFRA,
        "same-namespace-dedicated-route",
        "  parentRefs: [{name: same-namespace}]\n  rules: [{backendRefs: [{name: infra-backend-v2, port: 8080}]}]",
    ) + &route(
        INFRA,
        "all-namespaces-dedicated-route",
        "  parentRefs: [{name: all-namespaces}]\n  rules: [{backendRefs: [{name: infra-backend-v3, port: 8080}]}]",
    );
    let s = Suite::start(&yaml).await;
    for gw in [SAME, "all-namespaces"] {
        accepted(&s, INFRA, "multiple-gateways-shared-route", gw, true, "");
    }
    s.expect_backend(SAME, "any", "/shared", &[], V1).await;
    s.expect_backend(SAME, "any", "/", &[], V2).await;
    s.expect_backend("all-namespaces", "any", "/shared", &[], V1).await;
    s.expect_backend("all-namespaces", "any", "/", &[], V3).await;
}

#[tokio::test]
async fn http_route_hostname_precedence() {
    let yaml = route(
        INFRA,
        "hostname-precedence-without-specific",
        "  parentRefs: [{name: same-namespace}]\n  rules: [{matches: [{path: {type: PathPrefix, value: /hostname-precedence}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    ) + &route(
        INFRA,
        "hostname-precedence-with-specific",
        "  parentRefs: [{name: same-namespace}]\n  hostnames: [test.com]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /hostname-precedence}}]\n    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: test, value: \"true\"}]}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]",
    );
    let s = Suite::start(&yaml).await;
    let r = s.get(SAME, "test.com", "/hostname-precedence", &[]).await;
    assert_eq!((r.status.as_u16(), r.header("test").as_deref()), (200, Some("true")));
    let r = s.get(SAME, "127.0.0.1", "/hostname-precedence", &[]).await;
    assert_eq!((r.status.as_u16(), r.header("test")), (200, None));
}

#[tokio::test]
async fn http_route_all_backends_weight_zero() {
    let s = Suite::start(&on_same(
        "all-backends-weight-zero",
        "  - backendRefs: [{name: infra-backend-v1, port: 8080, weight: 0}, {name: infra-backend-v2, port: 8080, weight: 0}]",
    ))
    .await;
    accepted(&s, INFRA, "all-backends-weight-zero", SAME, true, "ResolvedRefs");
    s.expect_status(SAME, "any", "/", &[], 500).await;
}
