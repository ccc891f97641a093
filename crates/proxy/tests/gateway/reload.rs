//! Live reload: valid changes swap in atomically under load with no failed request; invalid
//! changes are refused and the last good configuration stays; ports open and close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use meshgate_proxy::source;
use meshgate_testkit::{Client, free_port};

use crate::harness::{Mesh, V123, gateway, route_to};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request() {
    let m = Arc::new(Mesh::start(&(gateway("gw") + &route_to("infra-backend-v1", "")), &V123).await);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (m, stop, ok, failed) = (m.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let c = if i % 2 == 0 { Client::h1() } else { Client::h2() };
            while !stop.load(Ordering::Relaxed) {
                match c.send(m.addr(), http::Method::POST, "h", "/", &[], bytes::Bytes::from_static(b"payload")).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let mut versions = Vec::new();
    for i in 0..30 {
        let backend = ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"][i % 3];
        versions.push(m.reload(&(gateway("gw") + &route_to(backend, ""))).await.expect("valid config applies"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(versions.windows(2).all(|w| w[1] == w[0] + 1), "{versions:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during reloads");
    assert!(ok.load(Ordering::Relaxed) > 100, "load was applied: {}", ok.load(Ordering::Relaxed));
}

#[tokio::test]
async fn invalid_change_keeps_the_last_good_config() {
    let m = Mesh::start(&(gateway("gw") + &route_to("infra-backend-v1", "")), &V123).await;
    let before = m.gateway.snapshot().version;
    let broken = gateway("gw") + &route_to("infra-backend-v2", "").replace("backendRefs", "backendRefz");
    assert_eq!(m.reload(&broken).await, None);
    assert_eq!(m.gateway.snapshot().version, before);
    m.expect_backend("h", "/", &[], "infra-backend-v1").await;
    let errors = source::load(&[m.dir.path().to_path_buf()]).unwrap_err();
    assert!(errors.to_string().contains("HTTPRoute infra/r: spec.rules[0].backendRefz: unknown field"), "{errors}");
    // Fixed again: applies.
    assert!(m.reload(&(gateway("gw") + &route_to("infra-backend-v2", ""))).await.is_some());
    m.expect_backend("h", "/", &[], "infra-backend-v2").await;
}

#[tokio::test]
async fn ports_open_and_close_with_listeners() {
    let m = Mesh::start(&(gateway("gw") + &route_to("infra-backend-v1", "")), &V123).await;
    let second = free_port();
    let two = gateway("gw")
        + &route_to("infra-backend-v1", "")
        + &format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: other, namespace: infra}}
spec:
  gatewayClassName: meshgate
  listeners: [{{name: http, port: {second}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r2, namespace: infra}}
spec:
  parentRefs: [{{name: other}}]
  rules: [{{backendRefs: [{{name: infra-backend-v3, port: 8080}}]}}]
"#
        );
    m.reload(&two).await.unwrap();
    let addr2 = std::net::SocketAddr::from(([127, 0, 0, 1], second));
    let r = Client::h1().get(addr2, "h", "/", &[]).await;
    assert_eq!(r.echoed().backend, "infra-backend-v3");
    m.expect_backend("h", "/", &[], "infra-backend-v1").await;
    m.reload(&(gateway("gw") + &route_to("infra-backend-v1", ""))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(addr2).await.is_err(), "the removed port is closed");
}

#[tokio::test]
async fn file_watcher_picks_up_changed_new_and_deleted_files() {
    let m = Arc::new(Mesh::start(&(gateway("gw") + &route_to("infra-backend-v1", "")), &V123).await);
    let watcher = tokio::spawn(source::watch(vec![m.dir.path().to_path_buf()], m.gateway.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let wait_for = |backend: &'static str| {
        let m = m.clone();
        async move {
            for _ in 0..100 {
                let r = m.get("h", "/").await;
                if r.status == 200 && r.echoed().backend == backend {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{backend} never took over");
        }
    };
    // Changed.
    m.dir.write(
        "routes.yaml",
        &(gateway("gw") + &route_to("infra-backend-v2", "")).replace("{port}", &m.port.to_string()),
    );
    wait_for("infra-backend-v2").await;
    // New file: a second route with a more specific match.
    m.dir.write(
        "extra.yaml",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: extra, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules: [{matches: [{path: {type: Exact, value: /}}], backendRefs: [{name: infra-backend-v3, port: 8080}]}]
"#,
    );
    wait_for("infra-backend-v3").await;
    // Deleted.
    std::fs::remove_file(m.dir.path().join("extra.yaml")).unwrap();
    wait_for("infra-backend-v2").await;
    // A broken edit is ignored.
    let v = m.gateway.snapshot().version;
    m.dir.write("routes.yaml", "apiVersion: [");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(m.gateway.snapshot().version, v);
    wait_for("infra-backend-v2").await;
    watcher.abort();
}
