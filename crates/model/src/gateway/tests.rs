//! The gateway compiler's rules, as Gateway API states them: precedence between the entries
//! of a listener's table, the hostnames a route answers for on a listener, and every reason a
//! route does not attach.

use http::{HeaderMap, Method};
use meshgate_api::ResourceSet;

use super::compile_gateway;
use crate::attach::effective_hostnames;
use crate::config::Compiled;
use crate::host::HostPattern;
use crate::matching::RequestView;

fn compile(yaml: &str) -> Compiled {
    let loaded = meshgate_api::load_str(&"test.yaml".into(), yaml);
    assert!(loaded.errors.is_empty(), "{}", loaded.errors);
    compile_gateway(&ResourceSet::from_objects(loaded.objects).0)
}

const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: meshgate
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: same, port: 81, protocol: HTTP}
  - {name: wild, port: 82, protocol: HTTP, hostname: "*.example.com", allowedRoutes: {namespaces: {from: All}}}
  - {name: grpc-only, port: 83, protocol: HTTP, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}
  - {name: labelled, port: 84, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: shop}}}}}
"#;

fn route(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

/// The rule names (`route#index`) that answer `method path` with `headers` on port 80, host `host`.
fn winner(c: &Compiled, port: u16, host: &str, method: Method, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let (path, query) = path.split_once('?').map_or((path, None), |(p, q)| (p, Some(q)));
    let view = RequestView { method: &method, path, query, headers: &h };
    let listener = c.config.ports.get(&port)?.select(host)?;
    listener.routes.find(host, &view).map(|e| format!("{}#{}", e.rule.route, e.rule.index))
}

/// The Accepted condition of `route`'s parentRefs[`i`]: (status, reason).
fn accepted(c: &Compiled, route: &str, i: usize) -> (bool, String, String) {
    let field = format!("spec.parentRefs[{i}]");
    let cond = c
        .conditions
        .iter()
        .find(|k| k.object.name.as_ref() == route && k.kind == "Accepted" && k.field == field)
        .unwrap_or_else(|| panic!("no Accepted condition for {route} {field}: {:?}", c.conditions));
    (cond.status, cond.reason.to_string(), cond.message.clone())
}

#[test]
fn precedence_follows_the_gateway_api_order() {
    let backend = "    backendRefs: [{name: b, port: 80}]";
    let yaml = GATEWAY.to_string()
        + &route(
            "infra",
            "prefix-short",
            &format!(
                "  parentRefs: [{{name: gw, sectionName: http}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /a}}}}]\n{backend}"
            ),
        )
        + &route(
            "infra",
            "prefix-long",
            &format!(
                "  parentRefs: [{{name: gw, sectionName: http}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /a/b}}}}]\n{backend}"
            ),
        )
        + &route(
            "infra",
            "exact",
            &format!(
                "  parentRefs: [{{name: gw, sectionName: http}}]\n  rules:\n  - matches: [{{path: {{type: Exact, value: /a/b}}}}]\n{backend}"
            ),
        )
        + &route(
            "infra",
            "method",
            &format!(
                "  parentRefs: [{{name: gw, sectionName: http}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /a/b}}, method: POST}}]\n{backend}"
            ),
        )
        + &route(
            "infra",
            "headers",
            &format!(
                "  parentRefs: [{{name: gw, sectionName: http}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /a/b}}, headers: [{{name: x-v, value: '2'}}]}}]\n{backend}"
            ),
        )
        + &route(
            "infra",
            "host",
            &format!(
                "  parentRefs: [{{name: gw, sectionName: http}}]\n  hostnames: [shop.example.com]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /a}}}}]\n{backend}"
            ),
        );
    let c = compile(&yaml);
    let w = |host, method, path, headers: &[(&str, &str)]| winner(&c, 80, host, method, path, headers);
    // Exact wins over any prefix; a longer prefix over a shorter one.
    assert_eq!(w("h", Method::GET, "/a/b", &[]).as_deref(), Some("infra/exact#0"));
    assert_eq!(w("h", Method::GET, "/a/b/c", &[]).as_deref(), Some("infra/prefix-long#0"));
    assert_eq!(w("h", Method::GET, "/a/x", &[]).as_deref(), Some("infra/prefix-short#0"));
    // Same path: a method match, then more header matches, win.
    assert_eq!(w("h", Method::POST, "/a/b/c", &[]).as_deref(), Some("infra/method#0"));
    assert_eq!(w("h", Method::GET, "/a/b/c", &[("x-v", "2")]).as_deref(), Some("infra/headers#0"));
    // A route for the exact host wins for that host only.
    assert_eq!(w("shop.example.com", Method::GET, "/a/x", &[]).as_deref(), Some("infra/host#0"));
    assert_eq!(w("other.example.com", Method::GET, "/a/x", &[]).as_deref(), Some("infra/prefix-short#0"));
    // Nothing matches /z.
    assert_eq!(w("h", Method::GET, "/z", &[]), None);
}

#[test]
fn hostnames_intersect_between_listener_and_route() {
    let p = |s: &str| HostPattern::parse(s);
    let names = |v: Option<Vec<HostPattern>>| v.map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>());
    // No hostname on either side: any host.
    assert_eq!(names(effective_hostnames(None, &[])), Some(vec![]));
    // The listener's alone, the route's alone.
    assert_eq!(names(effective_hostnames(Some(&p("*.example.com")), &[])), Some(vec!["*.example.com".into()]));
    assert_eq!(names(effective_hostnames(None, &[p("a.example.com")])), Some(vec!["a.example.com".into()]));
    // Both: what both answer for; a wildcard route under a narrower listener becomes the listener's.
    let both = effective_hostnames(
        Some(&p("*.example.com")),
        &[p("a.example.com"), p("x.y.example.com"), p("a.other.org"), p("*.example.com"), p("*")],
    );
    assert_eq!(
        names(both),
        Some(vec!["a.example.com".into(), "x.y.example.com".into(), "*.example.com".into(), "*.example.com".into()])
    );
    assert_eq!(
        names(effective_hostnames(Some(&p("a.example.com")), &[p("*.example.com")])),
        Some(vec!["a.example.com".into()])
    );
    // Nothing shared.
    assert_eq!(names(effective_hostnames(Some(&p("a.example.com")), &[p("b.example.com")])), None);
    assert_eq!(names(effective_hostnames(Some(&p("*.example.com")), &[p("example.com")])), None);
}

#[test]
fn every_reason_a_route_does_not_attach_is_reported() {
    let b = "  rules: [{backendRefs: [{name: b, port: 80}]}]";
    let yaml = GATEWAY.to_string()
        + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: shop}}\n"
        + &route("apps", "ok", &format!("  parentRefs: [{{name: gw, namespace: infra, sectionName: http}}]\n{b}"))
        + &route(
            "apps",
            "other-ns",
            &format!("  parentRefs: [{{name: gw, namespace: infra, sectionName: same}}]\n{b}"),
        )
        + &route(
            "apps",
            "no-host",
            &format!(
                "  parentRefs: [{{name: gw, namespace: infra, sectionName: wild}}]\n  hostnames: [shop.example.org]\n{b}"
            ),
        )
        + &route(
            "apps",
            "kind",
            &format!("  parentRefs: [{{name: gw, namespace: infra, sectionName: grpc-only}}]\n{b}"),
        )
        + &route(
            "apps",
            "selector",
            &format!("  parentRefs: [{{name: gw, namespace: infra, sectionName: labelled}}]\n{b}"),
        )
        + &route(
            "shop",
            "selected",
            &format!("  parentRefs: [{{name: gw, namespace: infra, sectionName: labelled}}]\n{b}"),
        )
        + &route("apps", "missing", &format!("  parentRefs: [{{name: nope, namespace: infra}}]\n{b}"))
        + &route("apps", "section", &format!("  parentRefs: [{{name: gw, namespace: infra, sectionName: nope}}]\n{b}"))
        + &route("apps", "port", &format!("  parentRefs: [{{name: gw, namespace: infra, port: 9999}}]\n{b}"))
        + &route(
            "apps",
            "parent-kind",
            &format!("  parentRefs: [{{name: gw, namespace: infra, group: example.com, kind: Proxy}}]\n{b}"),
        )
        + &route("apps", "mesh", &format!("  parentRefs: [{{name: b, group: '', kind: Service}}]\n{b}"));
    let c = compile(&yaml);
    let (ok, reason, message) = accepted(&c, "ok", 0);
    assert!(ok && reason == "Accepted" && message.contains("attached to 1 listener(s)"), "{message}");
    for (route, want) in [
        ("other-ns", "NotAllowedByListeners"),
        ("no-host", "NoMatchingListenerHostname"),
        ("kind", "NotAllowedByListeners"),
        ("selector", "NotAllowedByListeners"),
        ("missing", "NoMatchingParent"),
        ("section", "NoMatchingParent"),
        ("port", "NoMatchingParent"),
        ("parent-kind", "NoMatchingParent"),
    ] {
        let (status, reason, message) = accepted(&c, route, 0);
        assert!(!status && reason == want, "{route}: {status} {reason} ({message}), want {want}");
    }
    let (ok, _, _) = accepted(&c, "selected", 0);
    assert!(ok, "a namespace whose labels match the selector attaches");
    // A mesh route (a Service parent) is the sidecars': no gateway condition about it.
    assert!(!c.conditions.iter().any(|k| k.object.name.as_ref() == "mesh" && k.kind == "Accepted"));
    // Only the attached routes have entries.
    assert_eq!(winner(&c, 80, "h", Method::GET, "/", &[]).as_deref(), Some("apps/ok#0"));
    assert_eq!(winner(&c, 84, "h", Method::GET, "/", &[]).as_deref(), Some("shop/selected#0"));
    assert_eq!(winner(&c, 81, "h", Method::GET, "/", &[]), None);
}
