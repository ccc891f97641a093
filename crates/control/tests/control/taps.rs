//! Taps through the control plane (the dashboard's recent requests): asked through one replica,
//! answered by a proxy connected to another, read the same through either, on the directory
//! store and on etcd (and proxy-status lists every replica's proxies); a tap of a workload with no connected proxy, or of no tap, is refused.

use std::time::Duration;

use meshgate_testkit::{Client, EchoServer, free_port};
use serde_json::Value;

use crate::harness::{Cp, Replicas, config, ports, recording_gateway_on, target, tmp, wait_config_on};

async fn tap(cp: &Cp, body: &str) -> (u16, Value) {
    cp.call(http::Method::POST, "/api/v1/taps", body).await
}

async fn read(cp: &Cp, id: u64) -> (u16, Value) {
    cp.call(http::Method::GET, &format!("/api/v1/taps/{id}"), "").await
}

/// Asks through `a` for the gateway connected to `b`, sends requests through it, and reads the
/// tap through both replicas until it is over.
async fn tapped_across(a: &Cp, b: &Cp, state: &std::path::Path) {
    let app = EchoServer::start("app").await;
    let port = free_port();
    a.apply(&config(port, app.addr, "v1")).await;
    let _gw = recording_gateway_on(b, target(&b.running.grpc.to_string(), state), [127, 0, 0, 4]).await;
    wait_config_on([127, 0, 0, 4], port, "v1").await;
    // Replica a learns of the gateway from b's publication (every two seconds).
    let mut asked = None;
    for _ in 0..100 {
        let (code, v) = tap(a, r#"{"workload":"infra/gateway","seconds":4,"max":20}"#).await;
        if code == 200 {
            asked = Some(v);
            break;
        }
        assert_eq!(code, 404, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = asked.expect("replica a never saw the gateway connected to b")["id"].as_u64().unwrap();
    // proxy-status through a lists it too, with the replica it is connected to.
    let listed = a.proxies().await;
    assert!(listed.iter().any(|p| p["role"] == "gateway" && p["replica"] == "b"), "{listed:?}");
    // Replica b takes the tap on within a second and asks its gateway.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let gw = std::net::SocketAddr::from(([127, 0, 0, 4], port));
    for i in 0..5 {
        let r = Client::h1().get(gw, "h", &format!("/tapped/{i}"), &[]).await;
        assert_eq!(r.status, 200);
    }
    let mut seen = Value::Null;
    for _ in 0..200 {
        let (code, v) = read(a, id).await;
        assert_eq!(code, 200, "{v}");
        if v["done"] == true {
            seen = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen["workload"], "infra/gateway", "{seen}");
    let paths: Vec<&str> = seen["records"].as_array().unwrap().iter().filter_map(|r| r["path"].as_str()).collect();
    let ours: Vec<&str> = paths.iter().copied().filter(|p| p.starts_with("/tapped/")).collect();
    assert_eq!(ours, ["/tapped/0", "/tapped/1", "/tapped/2", "/tapped/3", "/tapped/4"], "{seen}");
    // The same through the replica the gateway is connected to.
    let (code, theirs) = read(b, id).await;
    assert_eq!(code, 200, "{theirs}");
    assert_eq!(theirs["records"], seen["records"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_asked_through_one_etcd_replica_is_answered_by_a_proxy_of_the_other() {
    let r = Replicas::start().await;
    tapped_across(&r.a, &r.b, &r.state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_asked_through_one_directory_replica_is_answered_by_a_proxy_of_the_other() {
    let dir = tmp();
    let store = format!("dir:{}", dir.path().join("store").display());
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let state = dir.path().join("state");
    let ((ga, ha), (gb, hb)) = (ports(), ports());
    let a = Cp::start(&store, &state, ga, ha, "a").await;
    let b = Cp::start(&store, &state, gb, hb, "b").await;
    tapped_across(&a, &b, &state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_of_a_workload_without_a_connected_proxy_or_of_no_tap_is_refused() {
    let dir = tmp();
    let store = format!("dir:{}", dir.path().join("store").display());
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let (g, h) = ports();
    let cp = Cp::start(&store, &dir.path().join("state"), g, h, "a").await;
    let (code, v) = tap(&cp, r#"{"workload":"shop/nobody"}"#).await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["error"], "no proxy of shop/nobody is connected to the control plane", "{v}");
    let (code, v) = tap(&cp, r#"{"seconds":5}"#).await;
    assert_eq!(code, 400, "{v}");
    for id in ["12345", "not-a-number"] {
        let (code, v) = cp.call(http::Method::GET, &format!("/api/v1/taps/{id}"), "").await;
        assert_eq!(code, 404, "{v}");
        assert_eq!(v["error"], format!("no tap {id} (taps are kept ten minutes)"), "{v}");
    }
}
