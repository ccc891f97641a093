//! Stores: etcd with two replicas; invalid resources in a store; apply refusing bad input.

use meshgate_testkit::{EchoServer, free_port};

use crate::harness::{Cp, Replicas, config, gateway, gateway_on, ports, target, tmp, wait_config, wait_config_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_etcd() {
    let r = Replicas::start().await;
    let (state, mut a, b) = (r.state.clone(), r.a, r.b);
    assert_eq!(a.running.token, b.running.token, "one admin token for the mesh");
    let app = EchoServer::start("app").await;
    let port = free_port();
    // Two gateways (listening on 127.0.0.1 and 127.0.0.2), one per replica; the second also
    // knows the first replica's address.
    let gw1 = gateway(&a, target(&a.running.grpc.to_string(), &state)).await;
    let both = format!("{},{}", b.running.grpc, a.running.grpc);
    let gw2 = gateway_on(&b, target(&both, &state), [127, 0, 0, 2]).await;
    // Written through A: both proxies get it.
    a.apply(&config(port, app.addr, "from-a")).await;
    wait_config(port, "from-a").await;
    wait_config_on([127, 0, 0, 2], port, "from-a").await;
    // Written through B: both again.
    b.apply(&config(port, app.addr, "from-b")).await;
    wait_config(port, "from-b").await;
    wait_config_on([127, 0, 0, 2], port, "from-b").await;
    // A root rotation through A reaches the proxies of both replicas, with nothing else
    // changing (the bundle is pushed on its own).
    let roots = |gw: &meshgate_proxy::managed::ManagedGateway| gw.gateway.tls().unwrap().material().bundle.roots.len();
    assert_eq!((roots(&gw1), roots(&gw2)), (1, 1));
    let (status, v) = a.call(http::Method::POST, "/api/v1/ca/add-root", "").await;
    assert_eq!(status, 200, "{v}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while (roots(&gw1), roots(&gw2)) != (2, 2) {
        assert!(tokio::time::Instant::now() < deadline, "bundle not everywhere: {} {}", roots(&gw1), roots(&gw2));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A dies: nothing is lost, B keeps serving its proxies and sees every resource.
    a.stop().await;
    b.apply(&config(port, app.addr, "after-a")).await;
    wait_config_on([127, 0, 0, 2], port, "after-a").await;
    let (_, v) = b.call(http::Method::GET, "/api/v1/resources?kind=Workload", "").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    // The first gateway knew only A: it keeps serving its last configuration.
    wait_config(port, "from-b").await;
}

#[tokio::test]
async fn an_invalid_resource_in_the_store_does_not_stop_the_rest() {
    let dir = tmp();
    let store_dir = dir.path().join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let app = EchoServer::start("app").await;
    let port = free_port();
    std::fs::write(store_dir.join("good.yaml"), config(port, app.addr, "good")).unwrap();
    std::fs::write(
        store_dir.join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: infra}\nspec: {ports: [{port: 80}], selektor: {a: b}}\n",
    )
    .unwrap();
    let (g, h) = ports();
    let cp = Cp::start(&format!("dir:{}", store_dir.display()), &dir.path().join("state"), g, h, "a").await;
    let _gw = gateway(&cp, cp.target()).await;
    wait_config(port, "good").await;
    let (status, v) = cp.call(http::Method::GET, "/api/v1/resources/Service/infra/broken", "").await;
    assert_eq!(status, 422);
    assert!(v["error"].as_str().unwrap().contains("spec.selektor: unknown field"), "{v}");
    let (_, s) = cp.call(http::Method::GET, "/api/v1/status", "").await;
    let broken = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["object"]["name"] == "broken")
        .expect("a condition for the broken resource");
    assert_eq!(broken["type"], "Accepted");
    assert_eq!(broken["status"], false);
    assert_eq!(broken["reason"], "Invalid");
}

#[tokio::test]
async fn apply_refuses_bad_input_with_the_field_path_and_writes_nothing() {
    let dir = tmp();
    let (g, h) = ports();
    let cp =
        Cp::start(&format!("dir:{}", dir.path().join("store").display()), &dir.path().join("state"), g, h, "a").await;
    let bad = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: shop}\nspec:\n  rules:\n  - backendRefs: [{name: a, port: 80, weight: -1}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: ok}\n";
    let (status, v) = cp.call(http::Method::POST, "/api/v1/apply", bad).await;
    assert_eq!(status, 422);
    let errors = v["errors"].as_array().unwrap();
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .contains("HTTPRoute default/shop: spec.rules[0].backendRefs[0].weight: must be 0..1000000"),
        "{v}"
    );
    let (status, _) = cp.call(http::Method::GET, "/api/v1/resources/Service/default/ok", "").await;
    assert_eq!(status, 404, "nothing of a refused apply is written");
    // Analysis of a consistent but wrong configuration.
    cp.apply("apiVersion: v1\nkind: Service\nmetadata: {name: lonely}\nspec: {ports: [{port: 80}]}\n---\napiVersion: meshgate.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: nobody}\nspec: {selector: {matchLabels: {app: ghost}}}\n").await;
    let (_, v) = cp.call(http::Method::GET, "/api/v1/analyze", "").await;
    let text = v.to_string();
    assert!(text.contains("Service default/lonely") && text.contains("no endpoints"), "{text}");
    assert!(text.contains("AuthorizationPolicy default/nobody") && text.contains("matches no workload"), "{text}");
}
