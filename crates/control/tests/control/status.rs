//! Gateway API status under a control plane: written to the store beside the resources, with
//! `metadata.generation` counted on apply and `observedGeneration` following it, transition
//! times kept while a condition holds (across a restart), read through any replica; Gateway
//! addresses from the gateways connected to any replica.

use http::Method;
use serde_json::Value;

use crate::harness::{Cp, Replicas, gateway_on, ports, tmp};

const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: infra}
spec:
  gatewayClassName: meshgate
  listeners:
  - {name: http, port: 18080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: local, port: 18081, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: apps}
spec:
  parentRefs: [{name: web, namespace: infra, sectionName: http}, {name: web, namespace: infra, sectionName: local}]
  rules: [{backendRefs: [{name: shop, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: apps}
spec: {ports: [{port: 80}]}
"#;

fn condition<'a>(conds: &'a Value, kind: &str) -> &'a Value {
    conds
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} in {conds}"))
}

async fn get(cp: &Cp, path: &str) -> Value {
    let (status, v) = cp.call(Method::GET, path, "").await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

#[tokio::test]
async fn status_generation_and_transition_times_in_the_store() {
    let dir = tmp();
    let store = format!("dir:{}", dir.path().join("store").display());
    let state = dir.path().join("state");
    let (g, h) = ports();
    let mut cp = Cp::start(&store, &state, g, h, "a").await;
    let applied = cp.apply(GATEWAY).await;
    assert_eq!(applied["results"][0]["generation"], 1, "{applied}");

    let gw = get(&cp, "/api/v1/resources/Gateway/infra/web").await;
    assert_eq!(gw["metadata"]["generation"], 1);
    let accepted = condition(&gw["status"]["conditions"], "Accepted");
    assert_eq!((accepted["status"].as_str(), accepted["observedGeneration"].as_i64()), (Some("True"), Some(1)));
    let listeners = gw["status"]["listeners"].as_array().unwrap();
    assert_eq!((listeners[0]["name"].as_str(), listeners[0]["attachedRoutes"].as_i64()), (Some("http"), Some(1)));
    assert_eq!(listeners[1]["attachedRoutes"], 0, "from: Same refuses the route's namespace");
    let since = accepted["lastTransitionTime"].as_str().unwrap().to_string();

    let route = get(&cp, "/api/v1/resources/HTTPRoute/apps/shop").await;
    let parents = route["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2);
    assert_eq!(parents[0]["controllerName"], "meshgate.io/gateway-controller");
    assert_eq!(condition(&parents[0]["conditions"], "Accepted")["status"], "True");
    let refused = condition(&parents[1]["conditions"], "Accepted");
    assert_eq!(
        (refused["status"].as_str(), refused["reason"].as_str()),
        (Some("False"), Some("NotAllowedByListeners"))
    );
    assert_eq!(condition(&parents[1]["conditions"], "ResolvedRefs")["status"], "True");

    // Applying the same again changes nothing; a new spec bumps the generation, and the
    // conditions follow it while keeping their times (nothing transitioned).
    let again = cp.apply(GATEWAY).await;
    assert_eq!(again["results"][0]["action"], "unchanged");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let changed = GATEWAY.replace(
        "{name: local, port: 18081, protocol: HTTP}",
        "{name: local, port: 18082, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
    );
    let applied = cp.apply(&changed).await;
    assert_eq!(
        (applied["results"][0]["action"].as_str(), applied["results"][0]["generation"].as_i64()),
        (Some("configured"), Some(2))
    );
    let gw = get(&cp, "/api/v1/resources/Gateway/infra/web").await;
    let accepted = condition(&gw["status"]["conditions"], "Accepted");
    assert_eq!(accepted["observedGeneration"], 2, "{gw}");
    assert_eq!(accepted["lastTransitionTime"], since.as_str());
    assert_eq!(gw["status"]["listeners"][1]["attachedRoutes"], 1, "{gw}");
    let route = get(&cp, "/api/v1/resources/HTTPRoute/apps/shop").await;
    let now_accepted = condition(&route["status"]["parents"][1]["conditions"], "Accepted");
    assert_eq!(now_accepted["status"], "True");
    assert_ne!(now_accepted["lastTransitionTime"], since.as_str(), "a condition that turned changes its time");
    // What `get -o yaml` shows can be applied back as it is: status and generation are ours.
    let (status, _) = cp.call(Method::POST, "/api/v1/apply", &serde_json::to_string(&gw).unwrap()).await;
    assert_eq!(status, 200);
    let gw_again = get(&cp, "/api/v1/resources/Gateway/infra/web").await;
    assert_eq!(gw_again["metadata"]["generation"], 2);

    // A restart keeps the status written, times included.
    cp.stop().await;
    let cp = Cp::start(&store, &state, g, h, "a").await;
    let after = get(&cp, "/api/v1/resources/Gateway/infra/web").await;
    assert_eq!(after["status"], gw["status"]);

    // The route goes: its status goes, and no listener counts it.
    let (status, _) = cp.call(Method::DELETE, "/api/v1/resources/HTTPRoute/apps/shop", "").await;
    assert_eq!(status, 200);
    let gw = get(&cp, "/api/v1/resources/Gateway/infra/web").await;
    assert_eq!(gw["status"]["listeners"][0]["attachedRoutes"], 0, "{gw}");
    let blobs: Vec<String> = std::fs::read_dir(dir.path().join("store/.meshgate/status"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs, ["Gateway.infra.web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_written_through_one_replica_is_read_through_the_other() {
    let r = Replicas::start().await;
    let (a, b) = (r.a, r.b);
    a.apply(GATEWAY).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let (via_a, via_b) = loop {
        let via_a = get(&a, "/api/v1/resources/HTTPRoute/apps/shop").await;
        let (_, via_b) = b.call(Method::GET, "/api/v1/resources/HTTPRoute/apps/shop", "").await;
        if via_b["status"] == via_a["status"] && !via_a["status"].is_null() {
            break (via_a, via_b);
        }
        assert!(tokio::time::Instant::now() < deadline, "replicas disagree: {via_a} / {via_b}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(via_b["status"]["parents"].as_array().map(Vec::len), Some(2), "{via_a}");

    // A gateway connected to replica a, bound to 127.0.0.2: both replicas write its address
    // into the Gateway's status.addresses (as an Ingress's loadBalancer); gone when it goes.
    let addresses = async |cp: &Cp| get(cp, "/api/v1/resources/Gateway/infra/web").await["status"]["addresses"].clone();
    assert!(addresses(&b).await.is_null(), "no gateway connected yet");
    let gw = gateway_on(&a, a.target(), [127, 0, 0, 2]).await;
    let want = serde_json::json!([{"type": "IPAddress", "value": "127.0.0.2"}]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while addresses(&a).await != want || addresses(&b).await != want {
        assert!(tokio::time::Instant::now() < deadline, "{} / {}", addresses(&a).await, addresses(&b).await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    gw.stop().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !addresses(&a).await.is_null() || !addresses(&b).await.is_null() {
        assert!(tokio::time::Instant::now() < deadline, "{} / {}", addresses(&a).await, addresses(&b).await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
