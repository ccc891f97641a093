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

/// The status of `kind` `name`, as the spec writes it.
fn status_of(c: &Compiled, kind: meshgate_api::Kind, name: &str) -> serde_json::Value {
    c.status
        .iter()
        .find(|s| s.object.kind == kind && s.object.name.as_ref() == name)
        .map(|s| s.status.clone())
        .unwrap_or_else(|| panic!("no status for {kind:?} {name}: {:?}", c.status))
}

/// (type, status, reason) of each condition in `conds`.
fn conds(v: &serde_json::Value) -> Vec<(String, String, String)> {
    v["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("type"), s("status"), s("reason"))
        })
        .collect()
}

fn has(v: &serde_json::Value, kind: &str, status: &str, reason: &str) -> bool {
    conds(v).contains(&(kind.to_string(), status.to_string(), reason.to_string()))
}

#[test]
fn status_as_the_spec_writes_it() {
    let yaml = format!(
        "{GATEWAY}{}{}{}{}{}",
        route(
            "infra",
            "a",
            "  parentRefs: [{name: gw, namespace: infra, sectionName: http}, {name: gw, sectionName: same}]\n  rules: [{backendRefs: [{name: missing, port: 80}]}]"
        ),
        route("shop", "b", "  parentRefs: [{name: gw, namespace: infra, sectionName: same}]"),
        route("infra", "c", "  parentRefs: [{name: gw, sectionName: http}, {name: gw, port: 80}]"),
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: other, namespace: infra}\nspec:\n  gatewayClassName: theirs\n  listeners: [{name: x, port: 90, protocol: HTTP}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: theirs}\nspec: {controllerName: example.com/other}\n",
        route("infra", "d", "  parentRefs: [{name: other}, {name: gw, sectionName: grpc-only}]"),
    );
    let c = compile(&yaml);
    let gw = status_of(&c, meshgate_api::Kind::Gateway, "gw");
    assert!(has(&gw, "Accepted", "True", "Accepted"), "{gw:#}");
    assert!(has(&gw, "Programmed", "True", "Programmed"), "{gw:#}");
    let listeners = gw["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 5);
    let l = |name: &str| listeners.iter().find(|l| l["name"] == name).unwrap().clone();
    // Route a (two parentRefs, one per listener) and route c (two parentRefs to one listener:
    // counted once) on `http`; a on `same`, and b refused there (another namespace).
    assert_eq!(l("http")["attachedRoutes"], 2, "{gw:#}");
    assert_eq!(l("same")["attachedRoutes"], 1, "{gw:#}");
    assert_eq!(l("grpc-only")["attachedRoutes"], 0, "{gw:#}");
    for name in ["http", "same", "wild", "grpc-only", "labelled"] {
        let l = l(name);
        assert!(has(&l, "Accepted", "True", "Accepted"), "{l:#}");
        assert!(has(&l, "Programmed", "True", "Programmed"), "{l:#}");
        assert!(has(&l, "ResolvedRefs", "True", "ResolvedRefs"), "{l:#}");
        assert!(has(&l, "Conflicted", "False", "NoConflicts"), "{l:#}");
    }
    let kinds = |l: &serde_json::Value| {
        l["supportedKinds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kind"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&l("http")), ["HTTPRoute", "GRPCRoute"]);
    assert_eq!(kinds(&l("grpc-only")), ["GRPCRoute"]);

    let a = status_of(&c, meshgate_api::Kind::HttpRoute, "a");
    let parents = a["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2);
    assert_eq!(
        parents[0]["parentRef"],
        serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw", "namespace": "infra", "sectionName": "http"})
    );
    assert_eq!(parents[0]["controllerName"], "meshgate.io/gateway-controller");
    for p in parents {
        assert!(has(p, "Accepted", "True", "Accepted"), "{p:#}");
        assert!(has(p, "ResolvedRefs", "False", "BackendNotFound"), "{p:#}");
    }
    let b = status_of(&c, meshgate_api::Kind::HttpRoute, "b");
    assert!(has(&b["parents"][0], "Accepted", "False", "NotAllowedByListeners"), "{b:#}");
    assert!(has(&b["parents"][0], "ResolvedRefs", "True", "ResolvedRefs"), "{b:#}");
    // The parent of another controller is left to it; ours says the kind is not allowed.
    let d = status_of(&c, meshgate_api::Kind::HttpRoute, "d");
    assert_eq!(d["parents"].as_array().unwrap().len(), 1, "{d:#}");
    assert!(has(&d["parents"][0], "Accepted", "False", "NotAllowedByListeners"), "{d:#}");
    assert!(c.status.iter().all(|s| s.object.name.as_ref() != "other" && s.object.name.as_ref() != "theirs"));
}

#[test]
fn listener_status_reasons() {
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: mine}
spec: {controllerName: meshgate.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: mine
  listeners:
  - {name: a, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}, {kind: TCPRoute}]}}
  - {name: d, port: 81, protocol: UDP}
  - {name: e, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: nope}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw2, namespace: infra}
spec:
  gatewayClassName: mine
  listeners: [{name: b, port: 80, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw3, namespace: infra}
spec:
  gatewayClassName: mine
  listeners: [{name: c, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: params, namespace: infra}
spec:
  gatewayClassName: with-params
  listeners: [{name: a, port: 82, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: with-params}
spec: {controllerName: meshgate.io/gateway-controller, parametersRef: {group: "", kind: ConfigMap, name: cfg}}
"#;
    let c = compile(yaml);
    let class = status_of(&c, meshgate_api::Kind::GatewayClass, "mine");
    assert!(has(&class, "Accepted", "True", "Accepted"), "{class:#}");
    assert!(has(&class, "SupportedVersion", "True", "SupportedVersion"), "{class:#}");
    let class = status_of(&c, meshgate_api::Kind::GatewayClass, "with-params");
    assert!(has(&class, "Accepted", "False", "InvalidParameters"), "{class:#}");
    let params = status_of(&c, meshgate_api::Kind::Gateway, "params");
    assert!(has(&params, "Accepted", "False", "InvalidParameters"), "{params:#}");
    assert!(!c.config.ports.contains_key(&82));

    let gw = status_of(&c, meshgate_api::Kind::Gateway, "gw");
    assert!(has(&gw, "Accepted", "True", "ListenersNotValid"), "{gw:#}");
    assert!(has(&gw, "Programmed", "True", "Programmed"), "{gw:#}");
    let l = |name: &str| gw["listeners"].as_array().unwrap().iter().find(|l| l["name"] == name).unwrap().clone();
    let a = l("a");
    assert!(has(&a, "ResolvedRefs", "False", "InvalidRouteKinds"), "{a:#}");
    assert_eq!(a["supportedKinds"], serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]));
    assert!(has(&a, "Programmed", "True", "Programmed"), "{a:#}");
    // The newer Gateway's listeners on the same port: one speaks another protocol, one
    // claims the same hostname; neither is served, the Gateway is, without listeners.
    let gw2 = status_of(&c, meshgate_api::Kind::Gateway, "gw2");
    assert!(has(&gw2, "Accepted", "False", "ListenersNotValid"), "{gw2:#}");
    assert!(has(&gw2, "Programmed", "False", "Invalid"), "{gw2:#}");
    let b = &gw2["listeners"][0];
    assert!(has(b, "Conflicted", "True", "ProtocolConflict"), "{b:#}");
    assert!(has(b, "Programmed", "False", "Invalid"), "{b:#}");
    let gw3 = status_of(&c, meshgate_api::Kind::Gateway, "gw3");
    assert!(has(&gw3["listeners"][0], "Conflicted", "True", "HostnameConflict"), "{gw3:#}");
    let d = l("d");
    assert!(has(&d, "Accepted", "False", "UnsupportedProtocol"), "{d:#}");
    assert_eq!(d["supportedKinds"], serde_json::json!([]));
    let e = l("e");
    assert!(has(&e, "ResolvedRefs", "False", "InvalidCertificateRef"), "{e:#}");
    assert!(has(&e, "Programmed", "False", "Invalid"), "{e:#}");
}

#[test]
fn transition_times_stay_while_a_condition_holds() {
    use crate::gwstatus::stamp;
    let c = compile(&format!("{GATEWAY}{}", route("infra", "a", "  parentRefs: [{name: gw, sectionName: same}]")));
    let mut first = status_of(&c, meshgate_api::Kind::HttpRoute, "a");
    stamp(&mut first, None, "2026-01-01T00:00:00Z");
    assert_eq!(first["parents"][0]["conditions"][0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
    let mut again = status_of(&c, meshgate_api::Kind::HttpRoute, "a");
    stamp(&mut again, Some(&first), "2026-01-02T00:00:00Z");
    assert_eq!(again, first, "an unchanged status is written the same");
    // The route's Service goes missing: ResolvedRefs turns False now, Accepted keeps its time.
    let c = compile(&format!(
        "{GATEWAY}{}",
        route(
            "infra",
            "a",
            "  parentRefs: [{name: gw, sectionName: same}]\n  rules: [{backendRefs: [{name: gone, port: 80}]}]"
        )
    ));
    let mut later = status_of(&c, meshgate_api::Kind::HttpRoute, "a");
    stamp(&mut later, Some(&first), "2026-01-03T00:00:00Z");
    let p = &later["parents"][0]["conditions"];
    assert_eq!(p[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
    assert_eq!(
        (p[1]["status"].as_str(), p[1]["lastTransitionTime"].as_str()),
        (Some("False"), Some("2026-01-03T00:00:00Z"))
    );
}
