//! The MESH-HTTP core tests of the Gateway API conformance suite (v1.7.0-rc.1), one test per
//! upstream test, named after its ShortName: upstream's mesh base (namespace
//! `gateway-conformance-mesh`, Deployments `echo-v1` and `echo-v2` labelled `app: echo` and
//! `version`, Services `echo`, `echo-v1`, `echo-v2` on port 80) as `meshgate run` workloads, the
//! routes as HTTPRoutes with the Service `echo` as parent, and the same requests sent from a
//! workload of the mesh (upstream sends them from the echo-v1 pod; here from a client beside
//! it), through its sidecar, to `http://echo`.

use serde_json::{Value, json};

use crate::harness::*;

const NS: &str = "gateway-conformance-mesh";

/// Sends each case (`{"path", "headers", "status", "backend"}`), retrying it for up to 20 s
/// until it is answered as expected (routes propagate to the sidecars), and prints every
/// answer as JSON: status, backend, the backend's view of the request headers, Location.
const CLIENT: &str = r#"
import http.client, json, sys, time
cases = json.loads(sys.argv[1])
out = []
for c in cases:
    deadline = time.time() + 20
    while True:
        got = {"status": 0}
        try:
            conn = http.client.HTTPConnection("echo", 80, timeout=5)
            conn.request("GET", c["path"], headers=c.get("headers", {}))
            r = conn.getresponse()
            body = r.read()
            got = {"status": r.status, "location": r.getheader("location")}
            if r.status == 200:
                e = json.loads(body)
                got["backend"] = e["backend"]
                got["headers"] = e["headers"]
        except Exception as e:
            got["error"] = str(e)
        if (got["status"] == c["status"] and got.get("backend") == c.get("backend")) or time.time() > deadline:
            break
        time.sleep(0.2)
    out.append(got)
print(json.dumps(out))
"#;

/// 500 GETs of `/` from 10 threads: the backends that answered, counted.
const SPLIT: &str = r#"
import collections, http.client, json, threading, time
counts = collections.Counter()
lock = threading.Lock()
def worker():
    conn = None
    for _ in range(50):
        for attempt in range(50):
            try:
                conn = conn or http.client.HTTPConnection("echo", 80, timeout=5)
                conn.request("GET", "/")
                r = conn.getresponse()
                b = json.loads(r.read())["backend"]
                break
            except Exception:
                conn = None
                time.sleep(0.1)
        with lock:
            counts[b] += 1
threads = [threading.Thread(target=worker) for _ in range(10)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(counts))
"#;

/// The mesh base, with `routes` applied.
fn lab(routes: &str) -> Lab {
    let mut lab = Lab::start();
    let service = |name: &str, selector: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  selector: {selector}\n  ports: [{{name: http, port: 80, targetPort: 8080, appProtocol: http}}]\n"
        )
    };
    lab.apply(
        &(service("echo", "{app: echo}")
            + &service("echo-v1", "{app: echo, version: v1}")
            + &service("echo-v2", "{app: echo, version: v2}")),
    );
    for v in ["v1", "v2"] {
        let name = format!("echo-{v}");
        lab.spawn(
            &["-n", NS, "--name", &name, "--label", "app=echo", "--label", &format!("version={v}")],
            &["python3", ECHO, "--name", &name, "--port", "8080"],
        );
        let ip = lab.workload_ip(NS, &name);
        wait_plain_ok(std::net::SocketAddr::from((ip, 8080)));
    }
    if !routes.is_empty() {
        lab.apply(routes);
    }
    lab
}

/// Runs `cases` from a client in the mesh; the answers, in order.
fn send(lab: &Lab, cases: &Value) -> Vec<Value> {
    let out = lab
        .run(
            &["-n", NS, "--name", &format!("client-{}", fastrand_name())],
            &["python3", "-c", CLIENT, &cases.to_string()],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or("[]")).unwrap()
}

/// Asserts each case was answered as expected.
fn expect(lab: &Lab, cases: Value) -> Vec<Value> {
    let got = send(lab, &cases);
    for (c, g) in cases.as_array().unwrap().iter().zip(&got) {
        assert_eq!(g["status"], c["status"], "{c}: {g}");
        if let Some(b) = c.get("backend") {
            assert_eq!(&g["backend"], b, "{c}: {g}");
        }
    }
    got
}

fn route(name: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n  rules:\n{rules}\n"
    )
}

fn to(backend: &str) -> String {
    format!("[{{name: {backend}, port: 80}}]")
}

#[test]
fn mesh_basic() {
    let lab = lab("");
    let got = expect(&lab, json!([{"path": "/", "status": 200}]));
    assert!(got[0]["backend"].as_str().unwrap().starts_with("echo-v"), "{got:?}");
}

#[test]
fn mesh_traffic_split() {
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]\n    backendRefs: {}\n  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}]\n    backendRefs: {}",
        to("echo-v1"),
        to("echo-v2")
    );
    let lab = lab(&route("mesh-split", &rules));
    expect(
        &lab,
        json!([{"path": "/v1", "status": 200, "backend": "echo-v1"}, {"path": "/v2", "status": 200, "backend": "echo-v2"}]),
    );
}

#[test]
fn mesh_http_route_matching() {
    let rules = format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /}}}}, {{headers: [{{name: version, value: one}}]}}]\n    backendRefs: {}\n  - matches: [{{path: {{type: PathPrefix, value: /v2}}}}, {{headers: [{{name: version, value: two}}]}}]\n    backendRefs: {}",
        to("echo-v1"),
        to("echo-v2")
    );
    let lab = lab(&route("mesh-matching", &rules));
    let case = |path: &str, headers: Value, backend: &str| json!({"path": path, "headers": headers, "status": 200, "backend": backend});
    expect(
        &lab,
        json!([
            case("/", json!({}), "echo-v1"),
            case("/example", json!({}), "echo-v1"),
            case("/", json!({"Version": "one"}), "echo-v1"),
            case("/v2", json!({}), "echo-v2"),
            case("/v2/example", json!({}), "echo-v2"),
            case("/", json!({"Version": "two"}), "echo-v2"),
            case("/v2/", json!({}), "echo-v2"),
            case("/v2example", json!({}), "echo-v1"),
            case("/foo/v2/example", json!({}), "echo-v1"),
        ]),
    );
}

#[test]
fn mesh_http_route_simple_same_namespace() {
    let lab = lab(&route("mesh-simple", &format!("  - backendRefs: {}", to("echo-v1"))));
    expect(&lab, json!([{"path": "/", "status": 200, "backend": "echo-v1"}]));
}

#[test]
fn mesh_http_route_weight() {
    let rules = "  - backendRefs: [{name: echo-v1, port: 80, weight: 70}, {name: echo-v2, port: 80, weight: 30}]";
    let lab = lab(&route("mesh-weight", rules));
    // Programmed: the split shows both backends before it is measured.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = lab
            .run(&["-n", NS, "--name", &format!("client-{}", fastrand_name())], &["python3", "-c", SPLIT])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let counts: std::collections::HashMap<String, f64> =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap()).unwrap();
        let total: f64 = counts.values().sum();
        let share = |b: &str| counts.get(b).copied().unwrap_or(0.0) / total;
        if counts.len() == 2 && (share("echo-v1") - 0.7).abs() <= 0.05 && (share("echo-v2") - 0.3).abs() <= 0.05 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "not a 70/30 split: {counts:?}");
    }
}

#[test]
fn mesh_http_route_redirect_host_and_status() {
    let redirect = |path: &str, r: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {r}}}]\n"
        )
    };
    let rules = [
        redirect("/hostname-redirect", "{hostname: example.org}"),
        redirect("/host-and-status", "{statusCode: 301, hostname: example.org}"),
        redirect("/host-and-temporary", "{statusCode: 307, hostname: example.org}"),
        redirect("/host-and-permanent", "{statusCode: 308, hostname: example.org}"),
    ]
    .concat();
    let lab = lab(&route("mesh-redirect-host-and-status", rules.trim_end()));
    let got = expect(
        &lab,
        json!([
            {"path": "/hostname-redirect", "status": 302},
            {"path": "/host-and-status", "status": 301},
            {"path": "/host-and-temporary", "status": 307},
            {"path": "/host-and-permanent", "status": 308},
        ]),
    );
    for g in got {
        let location: http::Uri = g["location"].as_str().unwrap().parse().unwrap();
        assert_eq!(location.host(), Some("example.org"), "{g}");
    }
}

#[test]
fn mesh_http_route_request_header_modifier() {
    let m = |path: &str, modifier: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n"
        )
    };
    let rules = [
        m("/set", "{set: [{name: X-Header-Set, value: set-overwrites-values}]}"),
        m("/add", "{add: [{name: X-Header-Add, value: add-appends-values}]}"),
        m("/remove", "{remove: [X-Header-Remove]}"),
        m("/multiple", "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}], remove: [X-Header-Remove-1, X-Header-Remove-2]}"),
        m("/case-insensitivity", "{set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}"),
    ]
    .concat();
    let lab = lab(&route("mesh-request-header-modifier", rules.trim_end()));
    let case =
        |path: &str, headers: Value| json!({"path": path, "headers": headers, "status": 200, "backend": "echo-v1"});
    let got = expect(
        &lab,
        json!([
            case("/set", json!({"Some-Other-Header": "val"})),
            case("/set", json!({"X-Header-Set": "some-other-value"})),
            case("/add", json!({})),
            case("/add", json!({"X-Header-Add": "some-other-value"})),
            case("/remove", json!({"X-Header-Remove": "val"})),
            case(
                "/multiple",
                json!({"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2", "X-Header-Remove-2": "remove-val-2", "Another-Header": "another-header-val"})
            ),
            case(
                "/case-insensitivity",
                json!({"x-header-set": "original-val-set", "x-header-add": "original-val-add", "x-header-remove": "original-val-remove"})
            ),
        ]),
    );
    let h = |i: usize, k: &str| got[i]["headers"][k].as_str().map(str::to_string);
    assert_eq!(
        (h(0, "some-other-header").as_deref(), h(0, "x-header-set").as_deref()),
        (Some("val"), Some("set-overwrites-values"))
    );
    assert_eq!(h(1, "x-header-set").as_deref(), Some("set-overwrites-values"));
    assert_eq!(h(2, "x-header-add").as_deref(), Some("add-appends-values"));
    assert_eq!(h(3, "x-header-add").as_deref(), Some("some-other-value,add-appends-values"));
    assert_eq!(h(4, "x-header-remove"), None);
    for (k, v) in [
        ("x-header-set-1", "header-set-1"),
        ("x-header-set-2", "header-set-2"),
        ("x-header-add-1", "header-add-1"),
        ("x-header-add-2", "add-val-2,header-add-2"),
        ("x-header-add-3", "header-add-3"),
        ("another-header", "another-header-val"),
    ] {
        assert_eq!(h(5, k).as_deref(), Some(v), "{k}: {}", got[5]);
    }
    assert_eq!((h(5, "x-header-remove-1"), h(5, "x-header-remove-2")), (None, None));
    assert_eq!(h(6, "x-header-set").as_deref(), Some("header-set"));
    assert_eq!(h(6, "x-header-add").as_deref(), Some("original-val-add,header-add"));
    assert_eq!(h(6, "x-header-remove"), None);
}
