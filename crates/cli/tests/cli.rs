//! The `meshgate` binary end to end: `validate` output and exit codes for every kind of bad
//! input (and output into a closed pipe), and `gateway` start-up, admin endpoint and graceful shutdown on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshgate_testkit::{Client, EchoOptions, EchoServer, TempDir, free_port};

fn meshgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
}

fn validate(dir: &TempDir, extra: &[&str]) -> (i32, String) {
    let out = meshgate().arg("validate").arg("-f").arg(dir.path()).args(extra).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn validate_accepts_the_example() {
    let out = meshgate().args(["validate", "-f", "../../examples/gateway"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("OK: 10 resources, 1 HTTP listener(s) on 1 port(s)"), "{stdout}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_as_head_expects() {
    // `meshgate validate --status | head -1`: the reader is gone before the output is written
    // (here from the start), so every write fails with EPIPE.
    let mut child = meshgate()
        .args(["validate", "-f", "../../examples/lab/mesh.yaml", "--status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn validate_reports_every_error_with_file_resource_and_field() {
    let dir = TempDir::new("meshgate-validate");
    dir.write("a-broken.yaml", "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n  labels: [oops\n");
    dir.write(
        "b-routes.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  rules:
  - backendRefs: [{name: a, port: 80}]
  - backendRefs:
    - {name: b, port: 80, weight: 2000000}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: "bad header", value: x}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: meshgate
  listeners:
  - {name: a, port: 80, protocol: HTTP}
  - {name: b, port: 80, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: svc}
spec: {ports: [{port: 80}], selektor: {app: x}}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
"#,
    );
    dir.write("c-dup.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: svc}\n");
    let (code, out) = validate(&dir, &[]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let a = dir.path().join("a-broken.yaml").display().to_string();
    let b = dir.path().join("b-routes.yaml").display().to_string();
    let c = dir.path().join("c-dup.yaml").display().to_string();
    let expected = [
        format!("error: {a}:5:11: invalid YAML"),
        format!(
            "error: {b}: HTTPRoute default/shop: spec.rules[1].backendRefs[0].weight: must be 0..1000000, got 2000000"
        ),
        format!(
            "error: {b}: HTTPRoute default/shop: spec.rules[1].filters[0].requestHeaderModifier.add[0].name: \"bad header\" is not a valid HTTP header name"
        ),
        format!(
            "error: {b}: Gateway default/gw: spec.listeners[1].protocol: TCP conflicts with listener \"a\" (spec.listeners[0]) on port 80, which is HTTP"
        ),
        format!("error: {b}: Service default/svc: spec.selektor: unknown field (not in the schema of this kind)"),
        format!("error: {b}: kind: unknown kind \"Widget\" (w); meshgate reads"),
        format!(
            "error: {c}: Service default/svc: metadata.name: duplicate: Service default/svc is already defined in {b}:"
        ),
    ];
    // The Service with the typo is rejected, so c-dup's Service is not a duplicate; check the
    // rest in order and then the duplicate case on its own.
    for want in &expected[..6] {
        assert!(lines.iter().any(|l| l.starts_with(want.as_str())), "missing {want:?} in:\n{out}");
    }
    assert!(lines.last().unwrap().ends_with("error(s)"), "{out}");
    std::fs::remove_file(dir.path().join("a-broken.yaml")).unwrap();
    dir.write("b-routes.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: svc}\n");
    let (code, out) = validate(&dir, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.lines().any(|l| l.starts_with(expected[6].as_str())), "missing {:?} in:\n{out}", expected[6]);
}

#[test]
fn dangling_references_are_warnings_and_strict_makes_them_errors() {
    let dir = TempDir::new("meshgate-validate");
    dir.write(
        "routes.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: nowhere}]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
"#,
    );
    let (code, out) = validate(&dir, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: ") && out.contains("HTTPRoute default/r: spec.parentRefs[0]: Accepted=False (NoMatchingParent): Gateway default/nowhere not found"), "{out}");
    assert!(
        out.contains(
            "spec.rules[0].backendRefs[0]: ResolvedRefs=False (BackendNotFound): Service default/missing not found"
        ),
        "{out}"
    );
    let (code, out) = validate(&dir, &["--strict"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error: "), "{out}");
    // The status the route would get, as the spec writes it.
    let (code, out) = validate(&dir, &["--status"]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "kind: HTTPRoute",
        "controllerName: meshgate.io/gateway-controller",
        "reason: NoMatchingParent",
        "reason: BackendNotFound",
        "lastTransitionTime:",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
}

fn config(dir: &TempDir, port: u16, upstream: std::net::SocketAddr) {
    dir.write(
        "gw.yaml",
        &format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  gatewayClassName: meshgate
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: slow, port: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: slow}}
spec:
  selector: {{app: slow}}
  ports: [{{port: 80, targetPort: {upstream_port}}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Workload
metadata: {{name: slow-1, labels: {{app: slow}}}}
spec: {{address: 127.0.0.1}}
"#,
            upstream_port = upstream.port()
        ),
    );
}

async fn wait_ready(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = Client::h1().try_get(([127, 0, 0, 1], admin).into(), "admin", "/ready").await
            && r.status == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway never became ready");
}

#[tokio::test]
async fn gateway_serves_reports_and_drains_on_sigterm() {
    let upstream =
        EchoServer::start_with("slow", EchoOptions { delay: Some(Duration::from_millis(800)), ..Default::default() })
            .await;
    let dir = TempDir::new("meshgate-cli");
    let (port, admin) = (free_port(), free_port());
    config(&dir, port, upstream.addr);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("gateway")
        .arg("-f")
        .arg(dir.path())
        .args(["--bind", "127.0.0.1", "--admin", &format!("127.0.0.1:{admin}"), "--drain-timeout", "5s"])
        .args(["--metrics", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_ready(admin).await;
    let admin_addr = ([127, 0, 0, 1], admin).into();
    let dump = Client::h1().get(admin_addr, "admin", "/config_dump", &[]).await;
    let dump: serde_json::Value = serde_json::from_slice(&dump.body).unwrap();
    assert_eq!(dump["version"], 1);
    assert!(dump["ports"][port.to_string()]["listeners"][0]["routes"]["entries"].is_array(), "{dump}");
    // Gateway API status, as a controller would write it.
    let status = Client::h1().get(admin_addr, "admin", "/status", &[]).await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    let item = |kind: &str| status["items"].as_array().unwrap().iter().find(|i| i["kind"] == kind).unwrap().clone();
    let gw_status = &item("Gateway")["status"];
    assert_eq!(gw_status["addresses"], serde_json::json!([{"type": "IPAddress", "value": "127.0.0.1"}]), "{status}");
    let listener = &gw_status["listeners"][0];
    assert_eq!((listener["name"].as_str(), listener["attachedRoutes"].as_i64()), (Some("http"), Some(1)), "{status}");
    let parent = &item("HTTPRoute")["status"]["parents"][0];
    assert_eq!(parent["parentRef"]["name"], "gw");
    assert!(parent["conditions"].as_array().unwrap().iter().all(|c| c["status"] == "True"), "{status}");

    let gw = ([127, 0, 0, 1], port).into();
    let in_flight = tokio::spawn(async move { Client::h1().get(gw, "h", "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the request in flight finished");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit 0 after draining: {status:?}");
    assert!(tokio::net::TcpStream::connect(gw).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn gateway_refuses_to_start_on_invalid_config() {
    let dir = TempDir::new("meshgate-cli");
    dir.write("bad.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {gatewayClassName: meshgate, listeners: []}\n");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("gateway")
        .arg("-f")
        .arg(dir.path())
        .args(["--admin", "off", "--metrics", "off"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Gateway default/g: spec.listeners: at least one listener is required"), "{stderr}");
}

#[test]
fn a_policy_for_a_missing_service_is_an_error() {
    let dir = TempDir::new("meshgate-validate");
    dir.write(
        "policy.yaml",
        "apiVersion: meshgate.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{kind: Service, name: nope}]\n  retry: {attempts: 1}\n",
    );
    let (code, out) = validate(&dir, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: ") && out.contains("TrafficPolicy default/p: spec.targetRefs[0]: Accepted=False (TargetNotFound): Service default/nope not found"),
        "{out}"
    );
}

/// 64 callers at once against a backend that fails every other request, through a route with
/// two retries: the budget (20% of the requests in flight, a floor of 3, 10 a second) cuts the
/// retries short for some, and the access log says so with URX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_have_their_retries_capped_and_the_access_log_shows_urx() {
    let upstream = EchoServer::start_with(
        "slow",
        EchoOptions { status_cycle: vec![503, 200], delay: Some(Duration::from_millis(150)), ..Default::default() },
    )
    .await;
    let dir = TempDir::new("meshgate-cli");
    let (port, admin) = (free_port(), free_port());
    config(&dir, port, upstream.addr);
    let routes = std::fs::read_to_string(dir.path().join("gw.yaml")).unwrap().replace(
        "rules: [{backendRefs: [{name: slow, port: 80}]}]",
        "rules: [{backendRefs: [{name: slow, port: 80}], retry: {attempts: 2, codes: [503], backoff: 1ms}}]",
    );
    dir.write("gw.yaml", &routes);
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("gateway")
        .arg("-f")
        .arg(dir.path())
        .args(["--bind", "127.0.0.1", "--admin", &format!("127.0.0.1:{admin}"), "--access-log"])
        .args(["--metrics", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_ready(admin).await;
    let gw: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        tasks.push(tokio::spawn(async move {
            let client = Client::h1();
            let mut statuses = Vec::new();
            for _ in 0..4 {
                statuses.push(client.get(gw, "h", "/", &[]).await.status.as_u16());
            }
            statuses
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap().iter().filter(|s| **s != 200).count();
    }
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output()).await.unwrap().unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let requests: Vec<_> = lines.iter().filter(|l| l["kind"] == "request").collect();
    let urx = requests.iter().filter(|l| l["response_flags"].as_str().unwrap_or("").contains("URX")).count();
    assert_eq!(requests.len(), 256, "one access log line per request:\n{log}");
    assert!(requests.iter().all(|l| l["route"].is_string() && l["method"] == "GET" && l["path"] == "/"), "{log}");
    assert!(urx > 0, "no request had its retries cut short at 64 in flight:\n{log}");
    assert_eq!(urx, failed, "every failed request is a URX in the access log");
    // Capped near the budget, not starved: most requests still succeed through their retries.
    assert!(failed < 256 / 2, "{failed} of 256 failed");
}
