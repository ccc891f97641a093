//! Extended features' tests of GATEWAY-HTTP, one per upstream test (its ShortName in snake
//! case), over the same base as the core tests.

use bytes::Bytes;
use meshgate_api::Kind;
use meshgate_testkit::{Client, Echoed};

use super::{INFRA, SAME, Suite, V1, V2, V3, must_have};

fn on_same(name: &str, extra: &str, rules: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n{extra}  rules:\n{rules}\n"
    )
}

async fn ready(s: &Suite, name: &str) {
    let p = s.parent(Kind::HttpRoute, INFRA, name, SAME).unwrap_or_else(|| panic!("{name}: no parent"));
    must_have(&p, "Accepted", true, "Accepted");
    must_have(&p, "ResolvedRefs", true, "ResolvedRefs");
}

/// `method path` with `headers` through `same-namespace`: status, and what the backend saw.
async fn call(
    s: &Suite,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<Echoed>, Option<String>) {
    let method: http::Method = method.parse().unwrap();
    let r = Client::h1().send(s.addr(SAME, 80), method, host, path, headers, Bytes::new()).await.unwrap();
    let echoed = (r.status == 200).then(|| r.echoed());
    (r.status.as_u16(), echoed, r.header("location"))
}

async fn expect(s: &Suite, method: &str, path: &str, headers: &[(&str, &str)], want: Option<&str>) {
    let (status, echoed, _) = call(s, method, "any", path, headers).await;
    match want {
        Some(backend) => {
            assert_eq!(status, 200, "{method} {path} {headers:?}");
            let e = echoed.unwrap();
            assert_eq!(
                (e.backend.as_str(), e.method.as_str(), e.path.as_str()),
                (backend, method, path),
                "{method} {path} {headers:?}"
            );
        }
        None => assert_eq!(status, 404, "{method} {path} {headers:?}"),
    }
}

fn rule(matches: &str, backend: &str) -> String {
    format!("  - matches: [{matches}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n")
}

#[tokio::test]
async fn http_route_query_param_matching() {
    let rules = [
        rule("{queryParams: [{name: animal, value: whale}]}", V1),
        rule("{queryParams: [{name: animal, value: dolphin}]}", V2),
        rule("{queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]}, {queryParams: [{name: ANIMAL, value: Whale}]}", V3),
        rule("{path: {type: PathPrefix, value: /path1}, queryParams: [{name: animal, value: whale}]}", V1),
        rule("{headers: [{name: version, value: one}], queryParams: [{name: animal, value: whale}]}", V2),
        rule("{path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], queryParams: [{name: animal, value: whale}]}", V3),
        rule("{path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], queryParams: [{name: animal, value: kraken}]}", V1),
        rule("{path: {type: PathPrefix, value: /path5}}", V1),
        rule("{queryParams: [{name: animal, value: hydra}]}", V2),
        rule("{headers: [{name: version, value: four}]}", V3),
    ]
    .concat();
    let s = Suite::start(&on_same("query-param-matching", "", rules.trim_end())).await;
    ready(&s, "query-param-matching").await;
    for (path, headers, want) in [
        ("/?animal=whale", &[][..], Some(V1)),
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
    ] {
        expect(&s, "GET", path, headers, want).await;
    }
}

#[tokio::test]
async fn http_route_method_matching() {
    let rules = [
        rule("{method: POST}", V1),
        rule("{method: GET}", V2),
        rule("{path: {type: PathPrefix, value: /path1}, method: GET}", V1),
        rule("{headers: [{name: version, value: one}], method: PUT}", V2),
        rule("{path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], method: POST}", V3),
        rule("{path: {type: PathPrefix, value: /path3}, method: PATCH}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], method: DELETE}", V1),
        rule("{path: {type: PathPrefix, value: /path5}}", V1),
        rule("{method: PATCH}", V2),
        rule("{headers: [{name: version, value: four}]}", V3),
    ]
    .concat();
    let s = Suite::start(&on_same("method-matching", "", rules.trim_end())).await;
    ready(&s, "method-matching").await;
    for (method, path, headers, want) in [
        ("POST", "/", &[][..], Some(V1)),
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
    ] {
        expect(&s, method, path, headers, want).await;
    }
}

/// A redirect's Location: scheme, host, port (`None` when absent) and path.
fn location(l: &str) -> (String, String, Option<u16>, String) {
    let u: http::Uri = l.parse().unwrap_or_else(|e| panic!("Location {l:?}: {e}"));
    (u.scheme_str().unwrap_or("").to_string(), u.host().unwrap_or("").to_string(), u.port_u16(), u.path().to_string())
}

/// Asserts a GET of `path` redirects with `status` to a Location with `scheme`, `host` (when
/// given), `port` (when given; else the scheme's own or none) and `path`.
/// (status, Location scheme, host when checked, port when given, path).
type Redirected<'a> = (u16, &'a str, Option<&'a str>, Option<u16>, &'a str);

async fn redirects(s: &Suite, method: &str, path: &str, want: Redirected<'_>) {
    let (status, scheme, host, port, to) = want;
    let (got, _, l) = call(s, method, "any", path, &[]).await;
    assert_eq!(got, status, "{path}");
    let (sch, h, p, lp) = location(&l.unwrap_or_else(|| panic!("{path}: no Location")));
    assert_eq!(sch, scheme, "{path}");
    if let Some(host) = host {
        assert_eq!(h, host, "{path}");
    }
    // Upstream expects the listener's port, 80, or none: a redirect that names no port and no
    // scheme keeps the listener's port (the spec's rule), here the port standing in for 80.
    let listener = s.addr(SAME, 80).port();
    match port {
        Some(port) => assert_eq!(p, Some(port), "{path}"),
        None if scheme == "https" => assert!(p.is_none() || p == Some(443), "{path}: port {p:?}"),
        None => assert!(p.is_none() || p == Some(listener), "{path}: port {p:?} (listener {listener})"),
    }
    assert_eq!(lp, to, "{path}");
}

fn redirect_rule(prefix: &str, redirect: &str) -> String {
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]\n"
    )
}

#[tokio::test]
async fn http_route_redirect_path() {
    let rules = [
        redirect_rule(
            "/original-prefix",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}",
        ),
        redirect_rule("/full", "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}"),
        redirect_rule(
            "/path-and-host",
            "{hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}",
        ),
        redirect_rule(
            "/path-and-status",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 301}",
        ),
        redirect_rule(
            "/full-path-and-host",
            "{hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}",
        ),
        redirect_rule(
            "/full-path-and-status",
            "{path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 301}",
        ),
    ]
    .concat();
    let s = Suite::start(&on_same("redirect-path", "", rules.trim_end())).await;
    ready(&s, "redirect-path").await;
    redirects(&s, "GET", "/original-prefix/lemon", (302, "http", None, None, "/replacement-prefix/lemon")).await;
    redirects(&s, "GET", "/full/path/original", (302, "http", None, None, "/full-path-replacement")).await;
    redirects(&s, "GET", "/path-and-host", (302, "http", Some("example.org"), None, "/replacement-prefix")).await;
    redirects(&s, "GET", "/path-and-status", (301, "http", None, None, "/replacement-prefix")).await;
    redirects(&s, "GET", "/full-path-and-host", (302, "http", Some("example.org"), None, "/replacement-full")).await;
    redirects(&s, "GET", "/full-path-and-status", (301, "http", None, None, "/replacement-full")).await;
}

#[tokio::test]
async fn http_route_redirect_port() {
    let rules = [
        redirect_rule("/port", "{port: 8083}"),
        redirect_rule("/port-and-host", "{hostname: example.org, port: 8083}"),
        redirect_rule("/port-and-status", "{port: 8083, statusCode: 301}"),
        redirect_rule("/port-and-host-and-status", "{port: 8083, hostname: example.org, statusCode: 302}"),
    ]
    .concat();
    let s = Suite::start(&on_same("redirect-port", "", rules.trim_end())).await;
    ready(&s, "redirect-port").await;
    redirects(&s, "GET", "/port", (302, "http", None, Some(8083), "/port")).await;
    redirects(&s, "GET", "/port-and-host", (302, "http", Some("example.org"), Some(8083), "/port-and-host")).await;
    redirects(&s, "GET", "/port-and-status", (301, "http", None, Some(8083), "/port-and-status")).await;
    redirects(
        &s,
        "GET",
        "/port-and-host-and-status",
        (302, "http", Some("example.org"), Some(8083), "/port-and-host-and-status"),
    )
    .await;
}

#[tokio::test]
async fn http_route_redirect_scheme() {
    let rules = [
        redirect_rule("/scheme", "{scheme: https}"),
        redirect_rule("/scheme-and-host", "{hostname: example.org, scheme: https}"),
        redirect_rule("/scheme-and-status", "{scheme: https, statusCode: 301}"),
        redirect_rule("/scheme-and-host-and-status", "{scheme: https, statusCode: 302, hostname: example.org}"),
    ]
    .concat();
    let s = Suite::start(&on_same("redirect-scheme", "", rules.trim_end())).await;
    ready(&s, "redirect-scheme").await;
    redirects(&s, "GET", "/scheme", (302, "https", None, None, "/scheme")).await;
    redirects(&s, "GET", "/scheme-and-host", (302, "https", Some("example.org"), None, "/scheme-and-host")).await;
    redirects(&s, "GET", "/scheme-and-status", (301, "https", None, None, "/scheme-and-status")).await;
    redirects(
        &s,
        "GET",
        "/scheme-and-host-and-status",
        (302, "https", Some("example.org"), None, "/scheme-and-host-and-status"),
    )
    .await;
}

#[tokio::test]
async fn http_route303_redirect() {
    let s =
        Suite::start(&on_same("303-redirect", "", redirect_rule("/see-other", "{statusCode: 303}").trim_end())).await;
    ready(&s, "303-redirect").await;
    redirects(&s, "POST", "/see-other", (303, "http", None, None, "/see-other")).await;
}

#[tokio::test]
async fn http_route307_redirect() {
    let s =
        Suite::start(&on_same("307-redirect", "", redirect_rule("/temporary", "{statusCode: 307}").trim_end())).await;
    ready(&s, "307-redirect").await;
    redirects(&s, "GET", "/temporary", (307, "http", None, None, "/temporary")).await;
}

#[tokio::test]
async fn http_route308_redirect() {
    let s =
        Suite::start(&on_same("308-redirect", "", redirect_rule("/permanent", "{statusCode: 308}").trim_end())).await;
    ready(&s, "308-redirect").await;
    redirects(&s, "GET", "/permanent", (308, "http", None, None, "/permanent")).await;
}

const MODIFY: &str = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";

/// Asserts the headers rules 3 of HTTPRouteRewriteHost and 4–5 of HTTPRouteRewritePath set.
fn modified(e: &Echoed) {
    let h = |k: &str| e.headers.get(k).map(String::as_str);
    assert_eq!(
        (h("x-header-add"), h("x-header-add-append"), h("x-header-set")),
        (Some("header-val-1"), Some("append-val-1,header-val-2"), Some("set-overwrites-values")),
        "{:?}",
        e.headers
    );
    assert!(!e.headers.contains_key("x-header-remove"), "{:?}", e.headers);
}

#[tokio::test]
async fn http_route_rewrite_host() {
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /one}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{hostname: one.example.org}}}}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n  - filters: [{{type: URLRewrite, urlRewrite: {{hostname: example.org}}}}]\n    backendRefs: [{{name: {V2}, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /rewrite-host-and-modify-headers}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{hostname: test.example.org}}}}, {MODIFY}]\n    backendRefs: [{{name: {V2}, port: 8080}}]"
    );
    let s = Suite::start(&on_same("rewrite-host", "  hostnames: [rewrite.example]\n", &rules)).await;
    ready(&s, "rewrite-host").await;
    for (path, backend, host) in [("/one", V1, "one.example.org"), ("/two", V2, "example.org")] {
        let (status, e, _) = call(&s, "GET", "rewrite.example", path, &[]).await;
        assert_eq!(status, 200, "{path}");
        let e = e.unwrap();
        assert_eq!((e.backend.as_str(), e.path.as_str(), e.host.as_str()), (backend, path, host));
    }
    let path = "/rewrite-host-and-modify-headers";
    let (status, e, _) = call(
        &s,
        "GET",
        "rewrite.example",
        path,
        &[("X-Header-Remove", "remove-val"), ("X-Header-Add-Append", "append-val-1")],
    )
    .await;
    assert_eq!(status, 200);
    let e = e.unwrap();
    assert_eq!((e.backend.as_str(), e.path.as_str(), e.host.as_str()), (V2, path, "test.example.org"));
    modified(&e);
}

#[tokio::test]
async fn http_route_rewrite_path() {
    let r = |prefix: &str, filters: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{filters}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n"
        )
    };
    let rules = [
        r("/prefix/one", "{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}"),
        r("/strip-prefix", "{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}"),
        r("/full/one", "{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}"),
        r("/full/rewrite-path-and-modify-headers", &format!("{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /test}}}}}}, {MODIFY}")),
        r("/prefix/rewrite-path-and-modify-headers", &format!("{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}}}}}, {MODIFY}")),
    ]
    .concat();
    let bare = r(
        "/",
        "{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}",
    );
    let yaml = on_same("rewrite-path", "", rules.trim_end())
        + &on_same("rewrite-path-bare-slash-prefix", "  hostnames: [rewrite-bare-slash.example]\n", bare.trim_end());
    let s = Suite::start(&yaml).await;
    ready(&s, "rewrite-path").await;
    ready(&s, "rewrite-path-bare-slash-prefix").await;
    let seen = |host: &'static str, path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let s = &s;
        async move {
            let (status, e, _) = call(s, "GET", host, path, headers).await;
            assert_eq!(status, 200, "{host}{path}");
            let e = e.unwrap();
            assert_eq!(e.backend, V1);
            e
        }
    };
    for (path, to) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
    ] {
        assert_eq!(seen("any", path, &[]).await.path, to, "{path}");
    }
    let sent: &[(&str, &str)] =
        &[("X-Header-Remove", "remove-val"), ("X-Header-Add-Append", "append-val-1"), ("X-Header-Set", "set-val")];
    for (path, to) in [
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        let e = seen("any", path, sent).await;
        assert_eq!(e.path, to, "{path}");
        modified(&e);
    }
    for (path, to) in
        [("/foo/bar", "/replacement-prefix/foo/bar"), ("/foo", "/replacement-prefix/foo"), ("/", "/replacement-prefix")]
    {
        assert_eq!(seen("rewrite-bare-slash.example", path, &[]).await.path, to, "{path}");
    }
}

#[tokio::test]
async fn http_route_response_header_modifier() {
    let r = |prefix: &str, modifier: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {modifier}}}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n"
        )
    };
    let rules = [
        r("/set", "{set: [{name: X-Header-Set, value: set-overwrites-values}]}"),
        r("/add", "{add: [{name: X-Header-Add, value: add-appends-values}]}"),
        r("/remove", "{remove: [X-Header-Remove]}"),
        r("/multiple", "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}], remove: [X-Header-Remove-1, X-Header-Remove-2]}"),
        r("/case-insensitivity", "{set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}, {name: x-lowercase-add, value: lowercase-add}, {name: x-Mixedcase-ADD-1, value: mixedcase-add-1}, {name: X-mixeDcase-add-2, value: mixedcase-add-2}, {name: X-UPPERCASE-ADD, value: uppercase-add}], remove: [X-Header-Remove]}"),
    ]
    .concat();
    let s = Suite::start(&on_same("response-header-modifier", "", rules.trim_end())).await;
    ready(&s, "response-header-modifier").await;
    // (path, what the backend answers with, headers the client must see, headers it must not).
    let cases: [(&str, &str, &[(&str, &str)], &[&str]); 7] = [
        (
            "/set",
            "Some-Other-Header:val",
            &[("some-other-header", "val"), ("x-header-set", "set-overwrites-values")],
            &[],
        ),
        (
            "/set",
            "Some-Other-Header:val,X-Header-Set:some-other-value",
            &[("some-other-header", "val"), ("x-header-set", "set-overwrites-values")],
            &[],
        ),
        ("/add", "Some-Other-Header:val", &[("some-other-header", "val"), ("x-header-add", "add-appends-values")], &[]),
        (
            "/add",
            "Some-Other-Header:val,X-Header-Add:some-other-value",
            &[("some-other-header", "val"), ("x-header-add", "some-other-value,add-appends-values")],
            &[],
        ),
        ("/remove", "X-Header-Remove:val", &[], &["x-header-remove"]),
        (
            "/multiple",
            "X-Header-Set-2:set-val-2,X-Header-Add-2:add-val-2,X-Header-Remove-2:remove-val-2,Another-Header:another-header-val,X-Header-Remove-1:val",
            &[
                ("x-header-set-1", "header-set-1"),
                ("x-header-set-2", "header-set-2"),
                ("x-header-add-1", "header-add-1"),
                ("x-header-add-2", "add-val-2,header-add-2"),
                ("x-header-add-3", "header-add-3"),
                ("another-header", "another-header-val"),
            ],
            &["x-header-remove-1", "x-header-remove-2"],
        ),
        (
            "/case-insensitivity",
            "x-header-set:original-val-set,x-header-add:original-val-add,x-header-remove:original-val-remove,Another-Header:another-header-val",
            &[
                ("x-header-set", "header-set"),
                ("x-header-add", "original-val-add,header-add"),
                ("x-lowercase-add", "lowercase-add"),
                ("x-mixedcase-add-1", "mixedcase-add-1"),
                ("x-mixedcase-add-2", "mixedcase-add-2"),
                ("x-uppercase-add", "uppercase-add"),
                ("another-header", "another-header-val"),
            ],
            &["x-header-remove"],
        ),
    ];
    for (path, backend_sets, present, absent) in cases {
        let r = Client::h1().get(s.addr(SAME, 80), "any", path, &[("X-Echo-Set-Header", backend_sets)]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.echoed().backend, V1);
        for (k, v) in present {
            let got: Vec<String> =
                r.headers.get_all(*k).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
            assert_eq!(got.join(","), *v, "{path}: {k}");
        }
        for k in absent {
            assert!(r.headers.get(*k).is_none(), "{path}: {k} present");
        }
    }
}

/// Waits until backend `name` has seen a request for `path` (mirrors are sent beside the
/// request, not before its answer); how many it saw.
async fn mirrored(s: &Suite, name: &str, path: &str) -> usize {
    for _ in 0..100 {
        let n = s.seen_by(name).iter().filter(|e| e.path == path).count();
        if n > 0 {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    0
}

fn mirror(backend: &str) -> String {
    format!(
        "{{type: RequestMirror, requestMirror: {{backendRef: {{name: {backend}, namespace: {INFRA}, port: 8080}}}}}}"
    )
}

#[tokio::test]
async fn http_route_request_mirror() {
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /mirror}}}}]\n    filters: [{m}]\n    backendRefs: [{{name: {V1}, namespace: {INFRA}, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /mirror-and-modify-headers}}}}]\n    filters: [{MODIFY}, {m}]\n    backendRefs: [{{name: {V1}, namespace: {INFRA}, port: 8080}}]",
        m = mirror(V2)
    );
    let s = Suite::start(&on_same("request-mirror", "", &rules)).await;
    let p = s.parent(Kind::HttpRoute, INFRA, "request-mirror", SAME).expect("parent");
    must_have(&p, "Accepted", true, "Accepted");
    expect(&s, "GET", "/mirror", &[], Some(V1)).await;
    assert_eq!(mirrored(&s, V2, "/mirror").await, 1, "the mirror saw it once");
    let path = "/mirror-and-modify-headers";
    let (status, e, _) =
        call(&s, "GET", "any", path, &[("X-Header-Remove", "remove-val"), ("X-Header-Add-Append", "append-val-1")])
            .await;
    assert_eq!(status, 200);
    let e = e.unwrap();
    assert_eq!((e.backend.as_str(), e.path.as_str()), (V1, path));
    modified(&e);
    assert_eq!(mirrored(&s, V2, path).await, 1);
    // The mirror gets the request as modified.
    let copy = s.seen_by(V2).into_iter().find(|e| e.path == path).unwrap();
    modified(&copy);
    assert!(s.seen_by(V1).iter().all(|e| !e.headers.contains_key("x-header-remove")));
}

#[tokio::test]
async fn http_route_request_multiple_mirrors() {
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /multi-mirror}}}}]\n    filters: [{a}, {b}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /multi-mirror-and-modify-headers}}}}]\n    filters: [{MODIFY}, {a}, {b}]\n    backendRefs: [{{name: {V1}, port: 8080}}]",
        a = mirror(V2),
        b = mirror(V3)
    );
    let s = Suite::start(&on_same("request-multiple-mirrors", "", &rules)).await;
    ready(&s, "request-multiple-mirrors").await;
    for path in ["/multi-mirror", "/multi-mirror-and-modify-headers"] {
        let (status, e, _) = call(&s, "GET", "any", path, &[("X-Header-Remove", "remove-val")]).await;
        assert_eq!((status, e.unwrap().backend), (200, V1.to_string()), "{path}");
        for m in [V2, V3] {
            assert_eq!(mirrored(&s, m, path).await, 1, "{path} mirrored to {m}");
        }
    }
}

#[tokio::test]
async fn http_route_request_percentage_mirror() {
    let frac = |name: &str, extra: &str| {
        format!("{{type: RequestMirror, requestMirror: {{backendRef: {{name: {name}, port: 8080}}, {extra}}}}}")
    };
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /percent-mirror}}}}]\n    filters: [{}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /percent-mirror-fraction}}}}]\n    filters: [{}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /percent-mirror-and-modify-headers}}}}]\n    filters: [{MODIFY}, {}]\n    backendRefs: [{{name: {V1}, port: 8080}}]",
        frac(V2, "percent: 20"),
        frac(V2, "fraction: {numerator: 25, denominator: 1000}"),
        frac(V2, "percent: 35"),
    );
    let s = Suite::start(&on_same("request-percentage-mirror", "", &rules)).await;
    ready(&s, "request-percentage-mirror").await;
    // Upstream sends 1000 requests per case and accepts the mirrored share within 5 points.
    for (path, share) in
        [("/percent-mirror", 0.20), ("/percent-mirror-fraction", 0.025), ("/percent-mirror-and-modify-headers", 0.35)]
    {
        let n = 1000;
        let c = Client::h1();
        for _ in 0..n {
            let r = c.send(s.addr(SAME, 80), http::Method::GET, "any", path, &[], Bytes::new()).await.unwrap();
            assert_eq!(r.status, 200, "{path}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let got = s.seen_by(V2).iter().filter(|e| e.path == path).count() as f64 / f64::from(n);
        assert!((got - share).abs() <= 0.05, "{path}: mirrored {got}, want {share} ± 0.05");
    }
}

/// The upstream timeout tests' cases: GET `path`, a 200 or a timeout (504; 408 also counts).
async fn timeouts(s: &Suite, cases: &[(&str, bool)]) {
    for (path, times_out) in cases {
        let (status, _, _) = call(s, "GET", "any", path, &[]).await;
        if *times_out {
            assert!(matches!(status, 504 | 408), "{path}: {status}");
        } else {
            assert_eq!(status, 200, "{path}");
        }
    }
}

#[tokio::test]
async fn http_route_timeout_request() {
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /request-timeout}}}}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n    timeouts: {{request: 500ms}}\n  - matches: [{{path: {{type: PathPrefix, value: /disable-request-timeout}}}}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n    timeouts: {{request: 0s}}"
    );
    let s = Suite::start(&on_same("request-timeout", "", &rules)).await;
    ready(&s, "request-timeout").await;
    timeouts(
        &s,
        &[
            ("/request-timeout", false),
            ("/request-timeout?delay=1s", true),
            ("/disable-request-timeout?delay=1s", false),
        ],
    )
    .await;
}

#[tokio::test]
async fn http_route_timeout_backend_request() {
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /backend-timeout}}}}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n    timeouts: {{backendRequest: 500ms}}\n  - matches: [{{path: {{type: PathPrefix, value: /disable-backend-timeout}}}}]\n    backendRefs: [{{name: {V1}, port: 8080}}]\n    timeouts: {{backendRequest: 0s}}"
    );
    let s = Suite::start(&on_same("backend-request-timeout", "", &rules)).await;
    ready(&s, "backend-request-timeout").await;
    timeouts(
        &s,
        &[
            ("/backend-timeout", false),
            ("/backend-timeout?delay=1s", true),
            ("/disable-backend-timeout?delay=1s", false),
        ],
    )
    .await;
}
