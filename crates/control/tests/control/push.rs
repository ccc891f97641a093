//! Pushes: config reaches proxies, ACK/NACK shows in proxy-status, and proxies keep serving
//! while the control plane is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use meshgate_testkit::{Client, EchoServer, free_port};

use crate::harness::{Cp, config, gateway, ports, tmp, wait_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_pushed_acked_and_changes_arrive() {
    let dir = tmp();
    let cp = Cp::on_dir(dir.path()).await;
    let app = EchoServer::start("app").await;
    let port = free_port();
    cp.apply(&config(port, app.addr, "v1")).await;
    let gw = gateway(&cp, cp.target()).await;
    wait_config(port, "v1").await;
    let proxies = cp.proxies().await;
    assert_eq!(proxies.len(), 1);
    assert_eq!(proxies[0]["identity"], "spiffe://cluster.local/ns/infra/sa/gateway");
    for _ in 0..50 {
        if cp.proxies().await[0]["status"] == "SYNCED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cp.proxies().await[0]["status"], "SYNCED");
    let t = std::time::Instant::now();
    cp.apply(&config(port, app.addr, "v2")).await;
    wait_config(port, "v2").await;
    assert!(t.elapsed() < Duration::from_secs(2), "a change reached the proxy in {:?}", t.elapsed());

    // A configuration the proxy cannot apply (its port is taken): NACK, the old one stays.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    cp.apply(&config(busy, app.addr, "v3")).await;
    let mut nacked = None;
    for _ in 0..100 {
        let p = &cp.proxies().await[0];
        if p["status"] == "NACKED" {
            nacked = Some(p.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let nacked = nacked.expect("the proxy NACKs");
    assert!(nacked["nack"].as_str().unwrap().contains(&format!("cannot listen on 127.0.0.1:{busy}")), "{nacked}");
    wait_config(port, "v2").await;
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_while_the_control_plane_is_down() {
    let dir = tmp();
    let (g, h) = ports();
    let store = format!("dir:{}", dir.path().join("store").display());
    let state = dir.path().join("state");
    let mut cp = Cp::start(&store, &state, g, h, "a").await;
    let app = EchoServer::start("app").await;
    let port = free_port();
    cp.apply(&config(port, app.addr, "before")).await;
    let target = cp.target();
    let _gw = gateway(&cp, target).await;
    wait_config(port, "before").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let driver = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let c = Client::h1();
            while !stop.load(Ordering::Relaxed) {
                match c.try_get(addr, "h", "/").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cp.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = ok.load(Ordering::Relaxed);
    // Back, on the same store and ports; a change made now reaches the proxy.
    let cp = Cp::start(&store, &state, g, h, "a").await;
    cp.apply(&config(port, app.addr, "after")).await;
    tokio::time::timeout(Duration::from_secs(15), wait_config(port, "after")).await.expect("change after restart");
    stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed while the control plane was down");
    assert!(ok.load(Ordering::Relaxed) > during && during > 50);
}

/// `n` more Services in namespace infra, each with a long label: enough JSON for several parts.
fn many_services(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: extra-{i}, namespace: infra, labels: {{note: \"{}\"}}}}\nspec: {{selector: {{app: extra-{i}}}, ports: [{{port: 80}}]}}\n",
            "x".repeat(1000)
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_first_push_comes_in_bounded_parts_and_a_proxy_applies_it_whole() {
    use meshgate_proto::meshgate::discovery_client::DiscoveryClient;
    use meshgate_proto::meshgate::discovery_request::Kind as ReqKind;
    use meshgate_proto::meshgate::{DiscoveryRequest, Hello};

    let dir = tmp();
    let cp = Cp::on_dir(dir.path()).await;
    let app = EchoServer::start("app").await;
    let port = free_port();
    cp.apply(&format!("{}{}", config(port, app.addr, "v1"), many_services(100))).await;

    // A raw subscription: the parts as they come.
    let token = cp.token("infra", "raw", 600).await;
    let id = meshgate_identity::TrustDomain::new("cluster.local").unwrap().workload_id("infra", "raw").unwrap();
    let certifier = meshgate_proxy::cp::CpCertifier::new(cp.target(), Some(token));
    let mesh = meshgate_proxy::identity::bootstrap(certifier.as_ref(), &id).await.unwrap();
    let m = mesh.material();
    let ch = meshgate_proxy::cp::channel(&cp.target(), m.bundle.clone(), Some(&m.svid)).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = Hello { node: "t".into(), role: "gateway".into(), ..Hello::default() };
    tx.send(DiscoveryRequest { kind: Some(ReqKind::Hello(hello)) }).await.unwrap();
    let mut stream =
        DiscoveryClient::new(ch).stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut parts = Vec::new();
    loop {
        let part = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
        let last = !part.more;
        parts.push(part);
        if last {
            break;
        }
    }
    assert!(parts.len() >= 4, "100 Services of ~1,150 bytes in {} part(s)", parts.len());
    assert!(parts[0].full && parts[1..].iter().all(|p| !p.full), "only the first part says full");
    assert!(parts.iter().all(|p| p.version == parts[0].version), "one version in every part");
    for p in &parts {
        let bytes: usize = p.upserts.iter().map(|r| r.json.len() + r.key.len()).sum();
        assert!(bytes <= 32 * 1024, "a part of {bytes} bytes of resources");
    }
    let keys: std::collections::BTreeSet<String> =
        parts.iter().flat_map(|p| p.upserts.iter().map(|r| r.key.clone())).collect();
    let count: usize = parts.iter().map(|p| p.upserts.len()).sum();
    assert_eq!(keys.len(), count, "no resource twice");
    assert!(keys.contains("Service/infra/extra-0") && keys.contains("Service/infra/extra-99"), "{keys:?}");
    assert!(keys.contains("HTTPRoute/infra/r") && keys.contains("Gateway/infra/gw"));

    // A real proxy gathers the parts, applies the whole, and acknowledges it.
    let _gw = gateway(&cp, cp.target()).await;
    wait_config(port, "v1").await;
    let mut synced = false;
    for _ in 0..100 {
        let ps = cp.proxies().await;
        if ps.iter().any(|p| p["identity"] == "spiffe://cluster.local/ns/infra/sa/gateway" && p["status"] == "SYNCED") {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(synced, "{:?}", cp.proxies().await);
}

/// A subscription of our own, as a proxy of `role` with identity ns/sa: its messages as they
/// come (the sender is kept so the stream stays open).
struct Raw {
    stream: tonic::Streaming<meshgate_proto::meshgate::DiscoveryResponse>,
    _tx: tokio::sync::mpsc::Sender<meshgate_proto::meshgate::DiscoveryRequest>,
}

impl Raw {
    async fn subscribe(cp: &Cp, ns: &str, sa: &str, role: &str) -> Raw {
        use meshgate_proto::meshgate::discovery_client::DiscoveryClient;
        use meshgate_proto::meshgate::discovery_request::Kind as ReqKind;
        use meshgate_proto::meshgate::{DiscoveryRequest, Hello};
        let token = cp.token(ns, sa, 600).await;
        let id = meshgate_identity::TrustDomain::new("cluster.local").unwrap().workload_id(ns, sa).unwrap();
        let certifier = meshgate_proxy::cp::CpCertifier::new(cp.target(), Some(token));
        let mesh = meshgate_proxy::identity::bootstrap(certifier.as_ref(), &id).await.unwrap();
        let m = mesh.material();
        let ch = meshgate_proxy::cp::channel(&cp.target(), m.bundle.clone(), Some(&m.svid)).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = Hello { node: sa.into(), role: role.into(), ..Hello::default() };
        tx.send(DiscoveryRequest { kind: Some(ReqKind::Hello(hello)) }).await.unwrap();
        let stream = DiscoveryClient::new(ch)
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Raw { stream, _tx: tx }
    }

    /// Everything received until (and with) the message carrying `marker`: the keys upserted
    /// and removed, and whether any message was a full push.
    async fn until(&mut self, marker: &str) -> (Vec<String>, Vec<String>, bool) {
        let (mut upserts, mut removals, mut full) = (Vec::new(), Vec::new(), false);
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.stream.message())
                .await
                .unwrap_or_else(|_| panic!("no {marker} within 10 s; so far {upserts:?} {removals:?}"))
                .unwrap()
                .unwrap();
            full |= m.full;
            upserts.extend(m.upserts.iter().map(|r| r.key.clone()));
            removals.extend(m.removals.iter().cloned());
            if upserts.iter().any(|k| k == marker) && !m.more {
                return (upserts, removals, full);
            }
        }
    }
}

/// Marks a point in the pushes: a Service every proxy receives.
async fn mark(cp: &Cp, n: u32) -> String {
    cp.apply(&format!("apiVersion: v1\nkind: Service\nmetadata: {{name: marker-{n}, namespace: infra}}\nspec: {{ports: [{{port: 80}}]}}\n")).await;
    format!("Service/infra/marker-{n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_is_sent_what_it_receives_and_removals_only_of_what_it_was_sent() {
    let dir = tmp();
    let cp = Cp::on_dir(dir.path()).await;
    let mut sidecar = Raw::subscribe(&cp, "shop", "order", "sidecar").await;
    let mut gw = Raw::subscribe(&cp, "infra", "gateway", "gateway").await;
    let m = mark(&cp, 0).await;
    sidecar.until(&m).await;
    gw.until(&m).await;

    let route = |parent: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r2, namespace: shop}}\nspec:\n  parentRefs: [{parent}]\n  rules: [{{backendRefs: [{{name: inventory, port: 80}}]}}]\n"
        )
    };
    // A route of a Gateway: the gateway's, not the sidecar's.
    cp.apply(&route("{name: gw, namespace: infra}")).await;
    let m = mark(&cp, 1).await;
    let (up, rm, _) = gw.until(&m).await;
    assert!(up.contains(&"HTTPRoute/shop/r2".to_string()) && rm.is_empty(), "{up:?} {rm:?}");
    let (up, rm, _) = sidecar.until(&m).await;
    assert_eq!((up, rm), (vec![m.clone()], vec![]), "the sidecar hears of the marker alone");

    // Moved to a Service (a mesh route): the gateway is told to remove it, the sidecar gets it.
    cp.apply(&route("{kind: Service, group: '', name: inventory}")).await;
    let m = mark(&cp, 2).await;
    let (up, rm, _) = gw.until(&m).await;
    assert_eq!((up, rm), (vec![m.clone()], vec!["HTTPRoute/shop/r2".to_string()]));
    let (up, rm, _) = sidecar.until(&m).await;
    assert!(up.contains(&"HTTPRoute/shop/r2".to_string()) && rm.is_empty(), "{up:?} {rm:?}");

    // Deleted: a removal to the sidecar, which had it; nothing to the gateway.
    let (status, _) = cp.call(http::Method::DELETE, "/api/v1/resources/HTTPRoute/shop/r2", "").await;
    assert_eq!(status, 200);
    let m = mark(&cp, 3).await;
    let (up, rm, _) = gw.until(&m).await;
    assert_eq!((up, rm), (vec![m.clone()], vec![]));
    let (up, rm, _) = sidecar.until(&m).await;
    assert_eq!((up, rm), (vec![m.clone()], vec!["HTTPRoute/shop/r2".to_string()]));

    // A policy of another namespace: neither its upsert nor its removal reaches shop's sidecar.
    let policy = "apiVersion: meshgate.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: billing}\nspec: {action: AUDIT, rules: [{from: [{source: {principals: [cluster.local/ns/x/sa/y]}}]}]}\n";
    cp.apply(policy).await;
    let (status, _) = cp.call(http::Method::DELETE, "/api/v1/resources/AuthorizationPolicy/billing/deny-all", "").await;
    assert_eq!(status, 200);
    let m = mark(&cp, 4).await;
    let (up, rm, _) = sidecar.until(&m).await;
    assert_eq!((up, rm), (vec![m.clone()], vec![]));

    // The root namespace moved to billing: billing's policies now apply everywhere, so every
    // proxy is sent everything again, billing's policy with it.
    cp.apply(policy).await;
    cp.apply("apiVersion: meshgate.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: default, namespace: meshgate-system}\nspec: {rootNamespace: billing}\n").await;
    let m = mark(&cp, 5).await;
    let (up, _, full) = sidecar.until(&m).await;
    assert!(full && up.contains(&"AuthorizationPolicy/billing/deny-all".to_string()), "{full} {up:?}");
}
