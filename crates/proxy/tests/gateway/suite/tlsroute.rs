//! The TLSRoute tests of GATEWAY-TLS core: TLS passed through by SNI to backends that terminate
//! it themselves (line servers answering with their name, with certificates from the suite's
//! CA, as upstream's backends serve `tls-checks-certificate`).

use std::time::SystemTime;

use meshgate_api::Kind;
use meshgate_tls::edge::EdgeCert;
use meshgate_tls::testing::KeyAlg;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::{APP, INFRA, Suite, has, must_have};
use crate::harness::service_yaml;

/// A TLS backend `ns/name` of the suite's CA, its Service on port 443, as YAML.
async fn backend(s_ca: &meshgate_tls::testing::EdgeCa, ns: &str, name: &'static str) -> String {
    let (crt, key) =
        s_ca.issue(&["abc.example.com", "*.example.com", "example.com"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
    let cert = EdgeCert::from_pem("test/backend", crt.as_bytes(), key.as_bytes(), SystemTime::now()).unwrap();
    let addr = crate::l4::line_server(name, Some(cert)).await;
    service_yaml(ns, name, addr, None).replace("port: 8080", "port: 443")
}

fn gateway(name: &str, listeners: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: meshgate\n  listeners:\n{listeners}\n"
    )
}

fn passthrough(name: &str, hostname: Option<&str>) -> String {
    let host = hostname.map(|h| format!(", hostname: \"{h}\"")).unwrap_or_default();
    format!(
        "  - {{name: {name}, port: 443, protocol: TLS{host}, tls: {{mode: Passthrough}}, allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}}}"
    )
}

fn route(name: &str, gateway: &str, hostnames: &str, backend: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: {gateway}}}]\n  hostnames: {hostnames}\n  rules: [{{backendRefs: [{backend}]}}]\n"
    )
}

/// A TLS connection through `gateway` with SNI `name`, verifying the backend's certificate:
/// the backend that answered, or the error.
async fn dial(s: &Suite, gateway: &str, name: &str) -> Result<String, String> {
    let client = tokio_rustls::TlsConnector::from(s.pki.ca.client(&[], &[13]).unwrap());
    let tcp = TcpStream::connect(s.addr(gateway, 443)).await.map_err(|e| e.to_string())?;
    let mut tls =
        client.connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await.map_err(|e| e.to_string())?;
    let answer = crate::l4::ask(&mut tls, "hello").await;
    Ok(answer.split(':').next().unwrap_or("").to_string())
}

fn accepted(s: &Suite, name: &str, gateway: &str) -> serde_json::Value {
    let p = s.parent(Kind::TlsRoute, INFRA, name, gateway).unwrap_or_else(|| panic!("{name}: no parent {gateway}"));
    must_have(&p, "Accepted", true, "Accepted");
    p
}

#[tokio::test]
async fn tls_route_simple_same_namespace() {
    let pki_ca = super::Pki::shared_ca();
    let yaml = backend(&pki_ca, INFRA, "tls-backend").await
        + &gateway("gateway-tlsroute", &passthrough("https", Some("*.example.com")))
        + &route(
            "gateway-conformance-infra-test",
            "gateway-tlsroute",
            "[abc.example.com]",
            "{name: tls-backend, port: 443}",
        );
    let s = Suite::start_with_ca(&yaml, pki_ca).await;
    let p = accepted(&s, "gateway-conformance-infra-test", "gateway-tlsroute");
    must_have(&p, "ResolvedRefs", true, "ResolvedRefs");
    assert_eq!(dial(&s, "gateway-tlsroute", "abc.example.com").await, Ok("tls-backend".to_string()));
}

#[tokio::test]
async fn tls_route_invalid_reference_grant() {
    let pki_ca = super::Pki::shared_ca();
    let grant = |ns: &str, name: &str, from: &str, to: &str| {
        format!(
            "\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  from: [{from}]\n  to: [{to}]\n"
        )
    };
    let from = "{group: gateway.networking.k8s.io, kind: TLSRoute, namespace: gateway-conformance-infra}";
    let to = "{group: \"\", kind: Service, name: tls-backend}";
    let mut yaml = backend(&pki_ca, APP, "tls-backend").await
        + &gateway("gateway-tlsroute-referencegrant", &passthrough("https", Some("*.example.com")))
        + &route(
            "gateway-conformance-infra-test",
            "gateway-tlsroute-referencegrant",
            "[abc.example.com]",
            "{name: tls-backend, namespace: gateway-conformance-app-backend, port: 443}",
        );
    yaml += &grant(INFRA, "wrong-namespace", from, to);
    yaml += &grant(
        APP,
        "wrong-from-group",
        "{group: not-the-group, kind: TLSRoute, namespace: gateway-conformance-infra}",
        to,
    );
    yaml += &grant(
        APP,
        "wrong-from-kind",
        "{group: gateway.networking.k8s.io, kind: Gateway, namespace: gateway-conformance-infra}",
        to,
    );
    yaml += &grant(
        APP,
        "wrong-from-namespace",
        "{group: gateway.networking.k8s.io, kind: TLSRoute, namespace: not-the-namespace}",
        to,
    );
    yaml += &grant(APP, "wrong-to-group", from, "{group: not-the-group, kind: Service, name: tls-backend}");
    yaml += &grant(APP, "wrong-to-kind", from, "{group: \"\", kind: Secret, name: tls-backend}");
    yaml += &grant(APP, "wrong-to-name", from, "{group: \"\", kind: Service, name: not-tls-backend}");
    let s = Suite::start_with_ca(&yaml, pki_ca).await;
    let p = accepted(&s, "gateway-conformance-infra-test", "gateway-tlsroute-referencegrant");
    must_have(&p, "ResolvedRefs", false, "RefNotPermitted");
}

/// No parent accepted `name`.
fn unattached(s: &Suite, name: &str) {
    let r = s.status(Kind::TlsRoute, INFRA, name);
    assert!(!r["parents"].as_array().unwrap().iter().any(|p| has(p, "Accepted", true, "")), "{r:#}");
}

fn zero_routes(s: &Suite, gateway: &str) {
    let gw = s.status(Kind::Gateway, INFRA, gateway);
    assert!(gw["listeners"].as_array().unwrap().iter().all(|l| l["attachedRoutes"] == 0), "{gw:#}");
}

#[tokio::test]
async fn tls_route_invalid_no_matching_listener() {
    let to = "{name: tls-backend, port: 443}";
    let yaml = gateway(
        "gateway-http-only",
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}, kinds: [{kind: TLSRoute}]}}",
    ) + &gateway(
        "gateway-tls-httproute-only",
        "  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}, kinds: [{kind: HTTPRoute}]}}",
    ) + &gateway(
        "gateway-https-only",
        "  - {name: https, port: 443, protocol: HTTPS, allowedRoutes: {namespaces: {from: Same}, kinds: [{kind: TLSRoute}]}, tls: {mode: Terminate, certificateRefs: [{name: tls-validity-checks-certificate}]}}",
    ) + &route("tlsroute-no-matching-listener", "gateway-http-only", "[tls.example.com]", to)
        + &route("tlsroute-not-allowed-kind", "gateway-tls-httproute-only", "[tls.example.com]", to)
        + &route("tlsroute-wrong-protocol", "gateway-https-only", "[tls.example.com]", to)
        + &route("tlsroute-wrong-section-name", "gateway-http-only", "[tls.example.com]", to).replace(
            "parentRefs: [{name: gateway-http-only}]",
            "parentRefs: [{name: gateway-http-only, sectionName: nonexistent-listener}]",
        );
    let s = Suite::start(&yaml).await;
    for (name, gw, reason) in [
        ("tlsroute-no-matching-listener", "gateway-http-only", "NotAllowedByListeners"),
        ("tlsroute-not-allowed-kind", "gateway-tls-httproute-only", "NotAllowedByListeners"),
        ("tlsroute-wrong-protocol", "gateway-https-only", "NotAllowedByListeners"),
        ("tlsroute-wrong-section-name", "gateway-http-only", "NoMatchingParent"),
    ] {
        let p = s.parent(Kind::TlsRoute, INFRA, name, gw).unwrap();
        must_have(&p, "Accepted", false, reason);
        unattached(&s, name);
    }
    for gw in ["gateway-http-only", "gateway-tls-httproute-only", "gateway-https-only"] {
        zero_routes(&s, gw);
    }
}

#[tokio::test]
async fn tls_route_invalid_no_matching_listener_hostname() {
    let to = "{name: tls-backend, port: 443}";
    let yaml = gateway("gateway-tls-exact-hostname", &passthrough("tls", Some("www.example.com")))
        + &gateway("gateway-tls-wildcard-hostname", &passthrough("tls", Some("*.example.com")))
        + &route("tlsroute-hostname-mismatch-1", "gateway-tls-exact-hostname", "[www.example1.com]", to)
        + &route("tlsroute-hostname-mismatch-2", "gateway-tls-wildcard-hostname", "[www.example1.com]", to);
    let s = Suite::start(&yaml).await;
    for (name, gw) in [
        ("tlsroute-hostname-mismatch-1", "gateway-tls-exact-hostname"),
        ("tlsroute-hostname-mismatch-2", "gateway-tls-wildcard-hostname"),
    ] {
        let p = s.parent(Kind::TlsRoute, INFRA, name, gw).unwrap();
        must_have(&p, "Accepted", false, "NoMatchingListenerHostname");
        unattached(&s, name);
        zero_routes(&s, gw);
    }
}

#[tokio::test]
async fn tls_route_invalid_backend_ref_nonexistent() {
    let gw = "gateway-tlsroute-invalid-backend-ref-nonexistent";
    let yaml = gateway(gw, &passthrough("tls", None))
        + &route("invalid-backend-ref-nonexistent", gw, "[example.com]", "{name: nonexistent, port: 443}");
    let s = Suite::start(&yaml).await;
    let p = accepted(&s, "invalid-backend-ref-nonexistent", gw);
    must_have(&p, "ResolvedRefs", false, "BackendNotFound");
    assert!(dial(&s, gw, "example.com").await.is_err(), "the connection is refused");
}

#[tokio::test]
async fn tls_route_hostname_intersection() {
    let pki_ca = super::Pki::shared_ca();
    let one = "{name: tls-backend, port: 443}";
    let two = "{name: tls-backend-2, port: 443}";
    let yaml = backend(&pki_ca, INFRA, "tls-backend").await
        + &backend(&pki_ca, INFRA, "tls-backend-2").await
        + &gateway("gw-tlsroute-exact-hostname-x-1", &passthrough("tls", Some("abc.example.com")))
        + &route(
            "tlsroute-more-specific-wc-hostname-x-1",
            "gw-tlsroute-exact-hostname-x-1",
            "[\"*.example.com\"]",
            one,
        )
        + &gateway("gw-tlsroute-more-specific-wc-hostname-x-2", &passthrough("tls", Some("*.example.com")))
        + &route("tlsroute-exact-hostname-x-2", "gw-tlsroute-more-specific-wc-hostname-x-2", "[abc.example.com]", one)
        + &route(
            "tlsroute-less-specific-wc-hostname-x-2",
            "gw-tlsroute-more-specific-wc-hostname-x-2",
            "[\"*.com\"]",
            two,
        )
        + &gateway("gw-tlsroute-less-specific-wc-hostname-x-3", &passthrough("tls", Some("*.com")))
        + &route("tlsroute-exact-hostname-x-3", "gw-tlsroute-less-specific-wc-hostname-x-3", "[abc.example.com]", one)
        + &route(
            "tlsroute-more-specific-wc-hostname-x-3",
            "gw-tlsroute-less-specific-wc-hostname-x-3",
            "[\"*.example.com\"]",
            two,
        )
        + &gateway("gw-tlsroute-empty-hostname-x-4", &passthrough("tls", None))
        + &route("tlsroute-exact-hostname-x-4", "gw-tlsroute-empty-hostname-x-4", "[abc.example.com]", one)
        + &route("tlsroute-less-specific-wc-hostname-x-4", "gw-tlsroute-empty-hostname-x-4", "[\"*.com\"]", two);
    let s = Suite::start_with_ca(&yaml, pki_ca).await;
    for (name, gw) in [
        ("tlsroute-more-specific-wc-hostname-x-1", "gw-tlsroute-exact-hostname-x-1"),
        ("tlsroute-exact-hostname-x-2", "gw-tlsroute-more-specific-wc-hostname-x-2"),
        ("tlsroute-less-specific-wc-hostname-x-2", "gw-tlsroute-more-specific-wc-hostname-x-2"),
        ("tlsroute-exact-hostname-x-3", "gw-tlsroute-less-specific-wc-hostname-x-3"),
        ("tlsroute-more-specific-wc-hostname-x-3", "gw-tlsroute-less-specific-wc-hostname-x-3"),
        ("tlsroute-exact-hostname-x-4", "gw-tlsroute-empty-hostname-x-4"),
        ("tlsroute-less-specific-wc-hostname-x-4", "gw-tlsroute-empty-hostname-x-4"),
    ] {
        must_have(&accepted(&s, name, gw), "ResolvedRefs", true, "ResolvedRefs");
    }
    let ok = |b: &str| Ok::<String, String>(b.to_string());
    for (gw, sni, want) in [
        ("gw-tlsroute-exact-hostname-x-1", "abc.example.com", Some("tls-backend")),
        ("gw-tlsroute-exact-hostname-x-1", "non.matching.com", None),
        ("gw-tlsroute-more-specific-wc-hostname-x-2", "abc.example.com", Some("tls-backend")),
        ("gw-tlsroute-more-specific-wc-hostname-x-2", "other.example.com", Some("tls-backend-2")),
        ("gw-tlsroute-more-specific-wc-hostname-x-2", "non.matching.com", None),
        ("gw-tlsroute-less-specific-wc-hostname-x-3", "abc.example.com", Some("tls-backend")),
        ("gw-tlsroute-less-specific-wc-hostname-x-3", "other.example.com", Some("tls-backend-2")),
        ("gw-tlsroute-less-specific-wc-hostname-x-3", "non.matching.com", None),
        ("gw-tlsroute-empty-hostname-x-4", "abc.example.com", Some("tls-backend")),
        ("gw-tlsroute-empty-hostname-x-4", "other.example.com", Some("tls-backend-2")),
        ("gw-tlsroute-empty-hostname-x-4", "non.matching.org", None),
    ] {
        let got = dial(&s, gw, sni).await;
        match want {
            Some(b) => assert_eq!(got, ok(b), "{gw} {sni}"),
            None => assert!(got.is_err(), "{gw} {sni}: {got:?}"),
        }
    }
}
