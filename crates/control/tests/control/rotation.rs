//! Root rotation through the control plane's API, as `meshgate ca rotate` drives it: the pending
//! root survives the store (a restart, another replica), use-root reaches every proxy's leaf in
//! seconds, withdraw-old-roots waits for the last proxy on an old root, and steps out of order or
//! a store that fails are refused with nothing changed.

use std::time::Duration;

use meshgate_identity::TrustDomain;
use meshgate_proto::meshgate::discovery_client::DiscoveryClient;
use meshgate_proto::meshgate::discovery_request::Kind as ReqKind;
use meshgate_proto::meshgate::{Credentials, DiscoveryRequest, Hello};
use meshgate_proxy::cp::{ControlPlaneAddr, CpCertifier};
use meshgate_proxy::managed::ManagedGateway;
use meshgate_testkit::{EchoServer, free_port};
use serde_json::Value;

use crate::harness::{Cp, Replicas, config, gateway, gateway_on, ports, target, tmp, wait_config};

async fn status(cp: &Cp) -> Value {
    let (code, v) = cp.call(http::Method::GET, "/api/v1/ca", "").await;
    assert_eq!(code, 200, "{v}");
    v
}

async fn step(cp: &Cp, name: &str) -> (u16, Value) {
    cp.call(http::Method::POST, &format!("/api/v1/ca/{name}"), "").await
}

async fn step_ok(cp: &Cp, name: &str) -> Value {
    let (code, v) = step(cp, name).await;
    assert_eq!(code, 200, "{name}: {v}");
    v
}

/// The fingerprint of the root in `state` that is `signing` or `pending`.
fn root_where(status: &Value, flag: &str) -> String {
    status["roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[flag] == true)
        .unwrap_or_else(|| panic!("no {flag} root: {status}"))["fingerprint"]
        .as_str()
        .unwrap()
        .to_string()
}

fn leaf_root(gw: &ManagedGateway) -> String {
    meshgate_proxy::identity::credentials(&gw.gateway.tls().unwrap()).leaf_root
}

/// Waits until every gateway's leaf chains to `root` and the control plane (`cp`, which sees
/// every replica's proxies) counts them all there; returns how long it took.
async fn wait_leaves(cp: &Cp, gws: &[&ManagedGateway], root: &str) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        let here = gws.iter().all(|g| leaf_root(g) == root);
        let s = status(cp).await;
        let counted =
            s["roots"].as_array().unwrap().iter().find(|r| r["fingerprint"] == root).map(|r| r["proxies"].clone());
        if here && counted == Some(Value::from(gws.len())) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "leaves not from {root} after 20 s: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A proxy that subscribes saying its leaf is from `root`, and never renews: holds the
/// subscription until dropped.
struct StaleProxy {
    _tx: tokio::sync::mpsc::Sender<DiscoveryRequest>,
    _stream: tonic::Streaming<meshgate_proto::meshgate::DiscoveryResponse>,
}

async fn stale_proxy(cp: &Cp, target: ControlPlaneAddr, root: &str) -> StaleProxy {
    let token = cp.token("infra", "stale", 600).await;
    let id = TrustDomain::new("cluster.local").unwrap().workload_id("infra", "stale").unwrap();
    let certifier = CpCertifier::new(target.clone(), Some(token));
    let mesh = meshgate_proxy::identity::bootstrap(certifier.as_ref(), &id).await.unwrap();
    let m = mesh.material();
    let ch = meshgate_proxy::cp::channel(&target, m.bundle.clone(), Some(&m.svid)).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = Hello {
        node: "test".into(),
        role: "gateway".into(),
        workload: String::new(),
        version: String::new(),
        addresses: Vec::new(),
        credentials: Some(Credentials { root: root.to_string(), not_after: 0, trusts: vec![root.to_string()] }),
    };
    tx.send(DiscoveryRequest { kind: Some(ReqKind::Hello(hello)) }).await.unwrap();
    let stream =
        DiscoveryClient::new(ch).stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    StaleProxy { _tx: tx, _stream: stream }
}

/// Polls `f` until it holds (or 15 s).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_a_directory_store_survives_a_restart_between_every_two_steps() {
    let dir = tmp();
    let (store, state) = (format!("dir:{}", dir.path().join("store").display()), dir.path().join("state"));
    let (g, h) = ports();
    let mut cp = Cp::start(&store, &state, g, h, "a").await;
    let app = EchoServer::start("app").await;
    let port = free_port();
    cp.apply(&config(port, app.addr, "v1")).await;
    let gw1 = gateway(&cp, cp.target()).await;
    let gw2 = gateway_on(&cp, cp.target(), [127, 0, 0, 2]).await;
    wait_config(port, "v1").await;
    let first = root_where(&status(&cp).await, "signing");
    wait_leaves(&cp, &[&gw1, &gw2], &first).await;

    let v = step_ok(&cp, "add-root").await;
    assert_eq!(v["roots"], 2);
    let pending = root_where(&status(&cp).await, "pending");
    // Restart: the pending root is in the store, with its key.
    cp.stop().await;
    let mut cp = Cp::start(&store, &state, g, h, "a").await;
    let s = status(&cp).await;
    assert_eq!(root_where(&s, "pending"), pending, "{s}");
    assert_eq!(root_where(&s, "signing"), first, "{s}");

    // The proxies trust the added root once the control plane has pushed it (and they say so);
    // a proxy that does not trust it yet blocks use-root, by name.
    eventually("both proxies trust the added root", async || {
        status(&cp).await["roots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["fingerprint"] == pending && r["trustedBy"] == 2)
    })
    .await;
    let stale = stale_proxy(&cp, cp.target(), &first).await;
    eventually("the stale proxy is counted", async || status(&cp).await["proxies"].as_array().unwrap().len() == 3)
        .await;
    let (code, v) = step(&cp, "use-root").await;
    assert_eq!(code, 409, "{v}");
    let why = v["error"].as_str().unwrap_or_default();
    assert!(why.contains("spiffe://cluster.local/ns/infra/sa/stale") && why.contains("do not trust"), "{why}");
    assert_eq!(root_where(&status(&cp).await, "signing"), first, "nothing changed");
    drop(stale);
    eventually("the stale proxy is gone", async || status(&cp).await["proxies"].as_array().unwrap().len() == 2).await;
    step_ok(&cp, "use-root").await;
    // Every proxy's leaf is reissued from the new root promptly, not at its half-life (12 h).
    let took = wait_leaves(&cp, &[&gw1, &gw2], &pending).await;
    eprintln!("use-root reached both proxies' leaves in {took:?}");
    let s = status(&cp).await;
    assert_eq!(root_where(&s, "signing"), pending);
    assert_eq!(s["roots"].as_array().unwrap().len(), 2, "both roots stay trusted until withdrawn: {s}");

    cp.stop().await;
    let cp = Cp::start(&store, &state, g, h, "a").await;
    // The proxies resubscribe and report their leaves again.
    eventually("both proxies counted after the restart", async || {
        status(&cp).await["roots"].as_array().unwrap().iter().any(|r| r["fingerprint"] == pending && r["proxies"] == 2)
    })
    .await;
    let v = step_ok(&cp, "withdraw-old-roots").await;
    assert_eq!(v["roots"], 1);
    let s = status(&cp).await;
    let roots = s["roots"].as_array().unwrap();
    assert_eq!((roots.len(), roots[0]["fingerprint"].as_str().unwrap()), (1, pending.as_str()), "{s}");
    // The proxies' bundles follow; they still reach the control plane (whose own certificate
    // is from the new root now) and still serve.
    eventually("bundles with the new root alone", async || {
        [&gw1, &gw2].iter().all(|g| g.gateway.tls().unwrap().material().bundle.roots.len() == 1)
    })
    .await;
    cp.apply(&config(port, app.addr, "v2")).await;
    wait_config(port, "v2").await;
    // And the bundle file new proxies bootstrap with holds the new root only.
    let pem = std::fs::read_to_string(meshgate_control::run::bundle_path(&state)).unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1);
    let fresh = gateway_on(&cp, target(&cp.running.grpc.to_string(), &state), [127, 0, 0, 3]).await;
    assert_eq!(leaf_root(&fresh), pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_etcd_each_step_through_either_is_in_force_on_both() {
    let r = Replicas::start().await;
    let (state, a, b) = (r.state.clone(), r.a, r.b);
    let app = EchoServer::start("app").await;
    let port = free_port();
    a.apply(&config(port, app.addr, "v1")).await;
    let gw_a = gateway(&a, target(&a.running.grpc.to_string(), &state)).await;
    let gw_b = gateway_on(&b, target(&b.running.grpc.to_string(), &state), [127, 0, 0, 2]).await;
    let first = root_where(&status(&a).await, "signing");
    // Each replica counts both proxies: its own and the other's.
    wait_leaves(&a, &[&gw_a, &gw_b], &first).await;
    wait_leaves(&b, &[&gw_a, &gw_b], &first).await;

    step_ok(&a, "add-root").await;
    let pending = root_where(&status(&a).await, "pending");
    // The next step through the other replica finds the pending root.
    eventually("B sees the pending root", async || {
        status(&b).await["roots"].as_array().unwrap().iter().any(|r| r["pending"] == true)
    })
    .await;
    let (code, v) = step(&b, "add-root").await;
    assert_eq!(code, 409, "a second add-root while one is pending: {v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("not signing yet"), "{v}");
    eventually("both proxies trust the added root, as B sees it", async || {
        status(&b).await["roots"].as_array().unwrap().iter().any(|r| r["fingerprint"] == pending && r["trustedBy"] == 2)
    })
    .await;
    step_ok(&b, "use-root").await;
    let took = wait_leaves(&a, &[&gw_a, &gw_b], &pending).await;
    eprintln!("use-root through B reached the proxies of both replicas in {took:?}");

    // A proxy (on B) that still holds a leaf from the old root blocks the withdrawal through A,
    // by name; once it is gone, the withdrawal goes through.
    let stale = stale_proxy(&b, target(&b.running.grpc.to_string(), &state), &first).await;
    eventually("A sees the stale proxy", async || {
        status(&a).await["proxies"].as_array().unwrap().iter().any(|p| p["leafRoot"] == first.as_str())
    })
    .await;
    let (code, v) = step(&a, "withdraw-old-roots").await;
    assert_eq!(code, 409, "{v}");
    let why = v["error"].as_str().unwrap_or_default();
    assert!(why.contains("spiffe://cluster.local/ns/infra/sa/stale") && why.contains("replica b"), "{why}");
    assert_eq!(status(&a).await["roots"].as_array().unwrap().len(), 2, "nothing withdrawn");
    drop(stale);
    eventually("the stale proxy is gone from A's view", async || {
        !status(&a).await["proxies"].as_array().unwrap().iter().any(|p| p["leafRoot"] == first.as_str())
    })
    .await;
    step_ok(&a, "withdraw-old-roots").await;
    for cp in [&a, &b] {
        eventually("one root on both replicas", async || status(cp).await["roots"].as_array().unwrap().len() == 1)
            .await;
    }
    let (code, v) = step(&b, "withdraw-old-roots").await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("nothing to withdraw"), "{v}");
}

#[tokio::test]
async fn steps_out_of_order_and_a_failing_store_change_nothing() {
    let dir = tmp();
    let root = dir.path().join("store");
    let (store, state) = (format!("dir:{}", root.display()), dir.path().join("state"));
    let (g, h) = ports();
    let cp = Cp::start(&store, &state, g, h, "a").await;
    let before = status(&cp).await["roots"].clone();
    for (name, expect) in [
        ("use-root", "no root is pending"),
        ("withdraw-old-roots", "nothing to withdraw"),
        ("rotate-everything", "unknown step"),
    ] {
        let (code, v) = step(&cp, name).await;
        assert_eq!(code, 409, "{name}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(expect), "{name}: {v}");
    }
    assert_eq!(status(&cp).await["roots"], before);
    // The store refuses the write (its CA file replaced by a directory): the step fails, and
    // the CA in force, the store and the bundle stay as they were.
    let material = root.join(".meshgate/ca/material.json");
    let saved = std::fs::read(&material).unwrap();
    std::fs::remove_file(&material).unwrap();
    std::fs::create_dir_all(material.join("blocked")).unwrap();
    let (code, v) = step(&cp, "add-root").await;
    assert_eq!(code, 500, "{v}");
    assert_eq!(status(&cp).await["roots"], before, "the CA in force changed although the store refused");
    std::fs::remove_dir_all(&material).unwrap();
    std::fs::write(&material, &saved).unwrap();
    let v = step_ok(&cp, "add-root").await;
    assert_eq!(v["roots"], 2, "with the store back, the step works");
}
