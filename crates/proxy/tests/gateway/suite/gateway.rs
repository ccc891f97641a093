//! The Gateway tests of the core profiles (features Gateway and ReferenceGrant; with
//! HTTPRoute: GatewayWithAttachedRoutes, GatewayUpdateListenerHostname).

use meshgate_api::Kind;

use super::{INFRA, Suite, kinds, must_have};

fn gateway(name: &str, annotations: &str, listeners: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {INFRA}{annotations}}}\nspec:\n  gatewayClassName: meshgate\n  listeners:\n{listeners}\n"
    )
}

fn route(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

#[tokio::test]
async fn gateway_invalid_route_kind() {
    let yaml = gateway(
        "gateway-only-invalid-route-kind",
        "",
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}, kinds: [{kind: InvalidRoute}]}}",
    ) + &gateway(
        "gateway-supported-and-invalid-route-kind",
        "",
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}, kinds: [{kind: InvalidRoute}, {kind: HTTPRoute}]}}",
    ) + &route(
        INFRA,
        "gateway-supported-and-invalid-route-kind-control",
        "  parentRefs: [{name: gateway-supported-and-invalid-route-kind, sectionName: http}]\n  hostnames: [supported-route-kind.example.com]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    );
    let s = Suite::start(&yaml).await;
    let only = s.listener("gateway-only-invalid-route-kind", "http");
    assert!(kinds(&only).is_empty(), "{only:#}");
    must_have(&only, "ResolvedRefs", false, "InvalidRouteKinds");
    assert_eq!(only["attachedRoutes"], 0);
    let both = s.listener("gateway-supported-and-invalid-route-kind", "http");
    assert_eq!(kinds(&both), ["HTTPRoute"]);
    must_have(&both, "ResolvedRefs", false, "InvalidRouteKinds");
}

#[tokio::test]
async fn gateway_invalid_tls_configuration() {
    let https = |name: &str, cert_ref: &str| {
        gateway(
            name,
            "",
            &format!(
                "  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}\n  - {{name: https, port: 443, protocol: HTTPS, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{cert_ref}]}}}}"
            ),
        )
    };
    let malformed = format!(
        "\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: malformed-certificate, namespace: {INFRA}}}\ntype: kubernetes.io/tls\ndata: {{tls.crt: SGVsbG8gd29ybGQ=, tls.key: SGVsbG8gd29ybGQ=}}\n"
    );
    let cases = [
        ("gateway-certificate-nonexistent-secret", "{group: \"\", kind: Secret, name: nonexistent-certificate}"),
        (
            "gateway-certificate-unsupported-group",
            "{group: wrong.group.company.io, kind: Secret, name: tls-validity-checks-certificate}",
        ),
        (
            "gateway-certificate-unsupported-kind",
            "{group: \"\", kind: WrongKind, name: tls-validity-checks-certificate}",
        ),
        ("gateway-certificate-malformed-secret", "{group: \"\", kind: Secret, name: malformed-certificate}"),
    ];
    let mut yaml = malformed;
    for (name, r) in cases {
        yaml += &https(name, r);
        yaml += &route(
            INFRA,
            &format!("{name}-control"),
            &format!(
                "  parentRefs: [{{name: {name}, sectionName: http}}]\n  hostnames: [{name}.example.com]\n  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]"
            ),
        );
    }
    let s = Suite::start(&yaml).await;
    for (name, _) in cases {
        let l = s.listener(name, "https");
        assert_eq!(kinds(&l), ["HTTPRoute", "GRPCRoute"], "{name}");
        must_have(&l, "ResolvedRefs", false, "InvalidCertificateRef");
        assert_eq!(l["attachedRoutes"], 0, "{name}");
        // The rest of the Gateway is served.
        s.expect_backend(name, &format!("{name}.example.com"), "/", &[], "infra-backend-v1").await;
    }
}

#[tokio::test]
async fn gateway_modify_listeners() {
    let https = "  - {name: https, port: 443, protocol: HTTPS, hostname: secure.test.com, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{name: tls-validity-checks-certificate}]}}";
    let http =
        "  - {name: http, port: 80, protocol: HTTP, hostname: data.test.com, allowedRoutes: {namespaces: {from: All}}}";
    let routes = route(
        INFRA,
        "http-route-1",
        "  parentRefs: [{name: gateway-add-listener}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    ) + &route(
        INFRA,
        "http-route-2",
        "  parentRefs: [{name: gateway-remove-listener}]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    );
    let before = gateway("gateway-add-listener", ", generation: 1", https)
        + &gateway("gateway-remove-listener", ", generation: 1", &format!("{https}\n{http}"))
        + &routes;
    let s = Suite::start(&before).await;
    assert_eq!(s.status(Kind::Gateway, INFRA, "gateway-add-listener")["listeners"].as_array().unwrap().len(), 1);
    let after = gateway("gateway-add-listener", ", generation: 2", &format!("{https}\n{http}"))
        + &gateway("gateway-remove-listener", ", generation: 2", http)
        + &routes;
    s.apply(&after).await;
    for name in ["https", "http"] {
        let l = s.listener("gateway-add-listener", name);
        assert_eq!(kinds(&l)[0], "HTTPRoute");
        must_have(&l, "Accepted", true, "");
        must_have(&l, "ResolvedRefs", true, "");
        assert_eq!(l["attachedRoutes"], 1, "{name}: {l:#}");
    }
    let gw = s.status(Kind::Gateway, INFRA, "gateway-remove-listener");
    let listeners = gw["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{gw:#}");
    assert_eq!((listeners[0]["name"].as_str(), listeners[0]["attachedRoutes"].as_i64()), (Some("http"), Some(1)));
    for c in gw["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], 2, "{gw:#}");
    }
}

/// Every condition of `holder` (and its listeners) observed `generation`.
fn latest(holder: &serde_json::Value, generation: i64) {
    let mut all: Vec<&serde_json::Value> = holder["conditions"].as_array().into_iter().flatten().collect();
    for l in holder["listeners"].as_array().into_iter().flatten() {
        all.extend(l["conditions"].as_array().into_iter().flatten());
    }
    assert!(!all.is_empty());
    for c in all {
        assert_eq!(c["observedGeneration"], generation, "{holder:#}");
    }
}

#[tokio::test]
async fn gateway_observed_generation_bump() {
    let one = "  - {name: same, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}";
    let s = Suite::start(&gateway("gateway-observed-generation-bump", ", generation: 1", one)).await;
    latest(&s.status(Kind::Gateway, INFRA, "gateway-observed-generation-bump"), 1);
    let two = format!(
        "{one}\n  - {{name: alternate, port: 80, protocol: HTTP, hostname: foo.com, allowedRoutes: {{namespaces: {{from: All}}}}}}"
    );
    s.apply(&gateway("gateway-observed-generation-bump", ", generation: 2", &two)).await;
    let gw = s.status(Kind::Gateway, INFRA, "gateway-observed-generation-bump");
    latest(&gw, 2);
    must_have(&gw, "Accepted", true, "Accepted");
}

#[tokio::test]
async fn gateway_class_observed_generation_bump() {
    let class = |generation: i64, description: &str| {
        format!(
            "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: gatewayclass-observed-generation-bump, generation: {generation}}}\nspec: {{controllerName: meshgate.io/gateway-controller, description: {description}}}\n"
        )
    };
    let s = Suite::start(&class(1, "old")).await;
    let c = s.status(Kind::GatewayClass, "", "gatewayclass-observed-generation-bump");
    must_have(&c, "Accepted", true, "Accepted");
    latest(&c, 1);
    s.apply(&class(2, "new")).await;
    let c = s.status(Kind::GatewayClass, "", "gatewayclass-observed-generation-bump");
    must_have(&c, "Accepted", true, "Accepted");
    latest(&c, 2);
}

fn grant(ns: &str, name: &str, from: &str, to: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  from: [{from}]\n  to: [{to}]\n"
    )
}

const WEB_CERT_LISTENER: &str = "  - {name: https, port: 443, protocol: HTTPS, allowedRoutes: {namespaces: {from: All}}, tls: {certificateRefs: [{group: \"\", kind: Secret, name: certificate, namespace: gateway-conformance-web-backend}]}}";

#[tokio::test]
async fn gateway_secret_invalid_reference_grant() {
    let from = "{group: gateway.networking.k8s.io, kind: Gateway, namespace: gateway-conformance-infra}";
    let to = "{group: \"\", kind: Secret, name: certificate}";
    let mut yaml = gateway("gateway-secret-invalid-reference-grant", "", WEB_CERT_LISTENER);
    yaml += &grant(super::APP, "reference-grant-wrong-namespace", from, to);
    yaml += &grant(
        super::WEB,
        "reference-grant-wrong-from-group",
        "{group: not-the-group, kind: Gateway, namespace: gateway-conformance-infra}",
        to,
    );
    yaml += &grant(
        super::WEB,
        "reference-grant-wrong-from-kind",
        "{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-infra}",
        to,
    );
    yaml += &grant(
        super::WEB,
        "reference-grant-wrong-from-namespace",
        "{group: gateway.networking.k8s.io, kind: Gateway, namespace: not-the-namespace}",
        to,
    );
    yaml += &grant(
        super::WEB,
        "reference-grant-wrong-to-group",
        from,
        "{group: not-the-group, kind: Secret, name: certificate}",
    );
    yaml +=
        &grant(super::WEB, "reference-grant-wrong-to-kind", from, "{group: \"\", kind: Service, name: certificate}");
    yaml += &grant(
        super::WEB,
        "reference-grant-wrong-to-name",
        from,
        "{group: \"\", kind: Secret, name: not-the-certificate}",
    );
    let s = Suite::start(&yaml).await;
    let l = s.listener("gateway-secret-invalid-reference-grant", "https");
    assert_eq!(kinds(&l)[0], "HTTPRoute");
    must_have(&l, "ResolvedRefs", false, "RefNotPermitted");
    assert_eq!(l["attachedRoutes"], 0);
}

#[tokio::test]
async fn gateway_secret_missing_reference_grant() {
    let listeners = format!(
        "{WEB_CERT_LISTENER}\n  - {{name: https-nonexistent-secret, port: 443, protocol: HTTPS, hostname: nonexistent.example.com, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{{group: \"\", kind: Secret, name: nonexistent-certificate, namespace: gateway-conformance-web-backend}}]}}}}"
    );
    let s = Suite::start(&gateway("gateway-secret-missing-reference-grant", "", &listeners)).await;
    for name in ["https", "https-nonexistent-secret"] {
        let l = s.listener("gateway-secret-missing-reference-grant", name);
        assert_eq!(kinds(&l)[0], "HTTPRoute");
        must_have(&l, "ResolvedRefs", false, "RefNotPermitted");
        assert_eq!(l["attachedRoutes"], 0);
    }
}

async fn granted(gateway_name: &str, to: &str) {
    let from = "{group: gateway.networking.k8s.io, kind: Gateway, namespace: gateway-conformance-infra}";
    let yaml = gateway(gateway_name, "", WEB_CERT_LISTENER) + &grant(super::WEB, "reference-grant", from, to);
    let s = Suite::start(&yaml).await;
    let l = s.listener(gateway_name, "https");
    assert_eq!(kinds(&l)[0], "HTTPRoute");
    must_have(&l, "Programmed", true, "Programmed");
    must_have(&l, "ResolvedRefs", true, "ResolvedRefs");
    assert_eq!(l["attachedRoutes"], 0);
}

#[tokio::test]
async fn gateway_secret_reference_grant_all_in_namespace() {
    granted("gateway-secret-reference-grant-all-in-namespace", "{group: \"\", kind: Secret}").await;
}

#[tokio::test]
async fn gateway_secret_reference_grant_specific() {
    granted("gateway-secret-reference-grant-specific", "{group: \"\", kind: Secret, name: certificate}").await;
}

#[tokio::test]
async fn gateway_listener_unsupported_protocol() {
    let yaml = gateway(
        "gateway-only-unsupported-protocols",
        ", annotations: {gateway-api/skip-this-for-readiness: \"true\"}",
        "  - {name: invalid, port: 1111, protocol: INVALID}",
    ) + &gateway(
        "gateway-supported-and-unsupported-protocols",
        "",
        "  - {name: http, port: 80, protocol: HTTP}\n  - {name: invalid, port: 1111, protocol: INVALID}",
    ) + &route(
        INFRA,
        "unsupported-protocol-control",
        "  parentRefs: [{name: gateway-supported-and-unsupported-protocols, sectionName: http}]\n  hostnames: [unsupported-protocol.example.com]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    );
    let s = Suite::start(&yaml).await;
    let only = s.status(Kind::Gateway, INFRA, "gateway-only-unsupported-protocols");
    must_have(&only, "Accepted", false, "ListenersNotValid");
    let both = s.status(Kind::Gateway, INFRA, "gateway-supported-and-unsupported-protocols");
    must_have(&both, "Accepted", true, "ListenersNotValid");
    for gw in ["gateway-only-unsupported-protocols", "gateway-supported-and-unsupported-protocols"] {
        let l = s.listener(gw, "invalid");
        assert!(kinds(&l).is_empty(), "{l:#}");
        must_have(&l, "Accepted", false, "UnsupportedProtocol");
        assert_eq!(l["attachedRoutes"], 0);
    }
    let http = s.listener("gateway-supported-and-unsupported-protocols", "http");
    must_have(&http, "Accepted", true, "Accepted");
    s.expect_backend(
        "gateway-supported-and-unsupported-protocols",
        "unsupported-protocol.example.com",
        "/",
        &[],
        "infra-backend-v1",
    )
    .await;
}

#[tokio::test]
async fn gateway_invalid_parameters_ref() {
    let yaml = format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gateway-invalid-parameters-ref, namespace: {INFRA}}}\nspec:\n  gatewayClassName: meshgate\n  infrastructure: {{parametersRef: {{group: \"\", kind: ConfigMap, name: invalid-parameters-ref}}}}\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n"
    );
    let s = Suite::start(&yaml).await;
    must_have(
        &s.status(Kind::Gateway, INFRA, "gateway-invalid-parameters-ref"),
        "Accepted",
        false,
        "InvalidParameters",
    );
}

#[tokio::test]
async fn gateway_name_maximum_length() {
    let name = format!("gateway-name-maximum-length-{}", "a".repeat(253 - "gateway-name-maximum-length-".len()));
    let yaml = gateway(&name, ", generation: 1", "  - {name: http, port: 80, protocol: HTTP}");
    let s = Suite::start(&yaml).await;
    latest(&s.status(Kind::Gateway, INFRA, &name), 1);
}

#[tokio::test]
async fn gateway_overlapping_tls_config_hostnames() {
    let l = |name: &str, port: u16, host: &str| {
        format!(
            "  - {{name: {name}, port: {port}, protocol: HTTPS, hostname: \"{host}\", allowedRoutes: {{namespaces: {{from: Same}}}}, tls: {{mode: Terminate, certificateRefs: [{{name: tls-validity-checks-certificate}}]}}}}"
        )
    };
    let listeners = [
        l("foo-https", 443, "foo.example.com"),
        l("bar-https", 443, "bar.bar.example.com"),
        l("wildcard-https", 443, "*.example.com"),
        l("not-overlapping-https", 443, "example.com"),
        l("not-overlapping-other-port", 9443, "foo.example.com"),
    ]
    .join("\n");
    let s = Suite::start(&gateway("gateway-overlapping-hostnames", "", &listeners)).await;
    for name in ["foo-https", "bar-https", "wildcard-https"] {
        let l = s.listener("gateway-overlapping-hostnames", name);
        must_have(&l, "Accepted", true, "Accepted");
        must_have(&l, "OverlappingTLSConfig", true, "OverlappingHostnames");
    }
    for name in ["not-overlapping-https", "not-overlapping-other-port"] {
        let l = s.listener("gateway-overlapping-hostnames", name);
        must_have(&l, "Accepted", true, "Accepted");
        let overlapping = l["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "OverlappingTLSConfig");
        assert!(!overlapping, "{l:#}");
    }
}

#[tokio::test]
async fn gateway_with_attached_routes() {
    let listener = "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}], namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: gateway-conformance-infra}}}}}";
    let tls = "  - {name: tls, port: 443, protocol: HTTPS, allowedRoutes: {kinds: [{kind: HTTPRoute}], namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: gateway-conformance-infra}}}}, tls: {certificateRefs: [{name: does-not-exist}]}}";
    let to = |gw: &str, backend: &str| {
        format!("  parentRefs: [{{name: {gw}}}]\n  rules: [{{backendRefs: [{{name: {backend}, port: 8080}}]}}]")
    };
    let yaml = gateway("gateway-with-one-attached-route", "", listener)
        + &gateway("gateway-with-two-attached-routes", "", listener)
        + &gateway("unresolved-gateway-with-one-attached-unresolved-route", "", tls)
        + &route(INFRA, "http-route-1", &to("gateway-with-one-attached-route", "infra-backend-v1"))
        + &route(INFRA, "http-route-2", &to("gateway-with-two-attached-routes", "infra-backend-v1"))
        + &route(INFRA, "http-route-3", &to("gateway-with-two-attached-routes", "infra-backend-v1"))
        + &route(INFRA, "http-route-4", &to("unresolved-gateway-with-one-attached-unresolved-route", "does-not-exist"));
    let s = Suite::start(&yaml).await;
    for (gw, n) in [("gateway-with-one-attached-route", 1), ("gateway-with-two-attached-routes", 2)] {
        let l = s.listener(gw, "http");
        assert_eq!(kinds(&l), ["HTTPRoute"]);
        must_have(&l, "Accepted", true, "");
        must_have(&l, "ResolvedRefs", true, "");
        assert_eq!(l["attachedRoutes"], n, "{gw}: {l:#}");
    }
    let l = s.listener("unresolved-gateway-with-one-attached-unresolved-route", "tls");
    assert_eq!(kinds(&l), ["HTTPRoute"]);
    must_have(&l, "Programmed", false, "");
    must_have(&l, "ResolvedRefs", false, "");
    assert_eq!(l["attachedRoutes"], 1, "{l:#}");
    let p = s
        .parent(Kind::HttpRoute, INFRA, "http-route-4", "unresolved-gateway-with-one-attached-unresolved-route")
        .unwrap();
    must_have(&p, "ResolvedRefs", false, "");
}

#[tokio::test]
async fn gateway_update_listener_hostname() {
    let gw = |host: &str| {
        gateway(
            "gateway-update-listener-hostname",
            "",
            &format!(
                "  - {{name: http, port: 80, protocol: HTTP, hostname: {host}, allowedRoutes: {{namespaces: {{from: Same}}}}}}"
            ),
        )
    };
    let r = route(
        INFRA,
        "httproute-update-listener-hostname",
        "  parentRefs: [{name: gateway-update-listener-hostname}]\n  hostnames: [accepted.example.com]\n  rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]",
    );
    let s = Suite::start(&(gw("other.example.com") + &r)).await;
    let p = s
        .parent(Kind::HttpRoute, INFRA, "httproute-update-listener-hostname", "gateway-update-listener-hostname")
        .unwrap();
    must_have(&p, "Accepted", false, "NoMatchingListenerHostname");
    s.apply(&(gw("accepted.example.com") + &r)).await;
    let p = s
        .parent(Kind::HttpRoute, INFRA, "httproute-update-listener-hostname", "gateway-update-listener-hostname")
        .unwrap();
    must_have(&p, "Accepted", true, "Accepted");
    let l = s.listener("gateway-update-listener-hostname", "http");
    must_have(&l, "Accepted", true, "");
    must_have(&l, "ResolvedRefs", true, "");
    assert_eq!(l["attachedRoutes"], 1);
    s.expect_backend("gateway-update-listener-hostname", "accepted.example.com", "/", &[], "infra-backend-v1").await;
}
