//! Zero trust between proxies: the gateway dials an inbound proxy over mTLS with SPIFFE
//! identities from a CA; the inbound proxy enforces the mTLS mode and authorization and tells
//! the application who called. Certificates rotate under load without a failed request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshgate_identity::{SpiffeId, TrustDomain};
use meshgate_model::security::{InboundPolicy, WorkloadRef, compile_inbound};
use meshgate_model::settings::MeshSettings;
use meshgate_proxy::GatewayOptions;
use meshgate_proxy::identity::{self, Certifier, LocalCa};
use meshgate_proxy::roles::inbound::{AppTarget, Inbound, InboundOptions};
use meshgate_testkit::{Client, EchoOptions, EchoServer};
use meshgate_tls::{CertificateAuthority, MeshTls};

use crate::harness::{Mesh, gateway, route_to};

fn id(ns: &str, sa: &str) -> SpiffeId {
    TrustDomain::new("cluster.local").unwrap().workload_id(ns, sa).unwrap()
}

struct Lab {
    mesh: Mesh,
    app: EchoServer,
    inbound: Arc<Inbound>,
    inbound_port: u16,
    ca: Arc<LocalCa>,
    gateway_tls: Arc<MeshTls>,
    inbound_tls: Arc<MeshTls>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn ca(ttl: Duration) -> Arc<LocalCa> {
    let mut ca =
        CertificateAuthority::self_signed(TrustDomain::new("cluster.local").unwrap(), Duration::from_secs(3600))
            .unwrap();
    ca.min_ttl = Duration::from_secs(1);
    Arc::new(LocalCa { ca: Mutex::new(ca), ttl })
}

fn policy(yaml: &str) -> InboundPolicy {
    let loaded = meshgate_api::load_str(&"policy.yaml".into(), yaml);
    assert!(loaded.errors.is_empty(), "{}", loaded.errors);
    let set = meshgate_api::ResourceSet::from_objects(loaded.objects).0;
    let labels = [("app", "inventory")].into_iter().collect();
    compile_inbound(&set, &MeshSettings::default(), &WorkloadRef { namespace: "shop", labels })
}

/// The gateway (identity infra/gateway) routes to Service infra/inventory, whose Workload
/// declares service account `workload_sa`: the gateway expects infra/`workload_sa` there. The
/// inbound proxy in front of the echo app presents `inbound_id`.
async fn lab(
    ttl: Duration,
    inbound_id: SpiffeId,
    workload_sa: &str,
    inbound_policy: InboundPolicy,
    rotate: bool,
) -> Lab {
    let ca = ca(ttl);
    let app = EchoServer::start("inventory").await;
    let inbound_tls = identity::bootstrap(ca.as_ref(), &inbound_id).await.unwrap();
    let gateway_tls = identity::bootstrap(ca.as_ref(), &id("infra", "gateway")).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_port = listener.local_addr().unwrap().port();
    let inbound = Inbound::new(
        AppTarget::Fixed(app.addr),
        Some(inbound_tls.clone()),
        inbound_policy,
        InboundOptions { workload: "shop/inventory".into(), ..InboundOptions::default() },
    );
    let mut tasks = vec![tokio::spawn(inbound.clone().serve(listener))];
    if rotate {
        let certifier: Arc<dyn Certifier> = ca.clone();
        let renewal = || std::sync::Arc::new(identity::Renewal::default());
        tasks.push(tokio::spawn(identity::rotate(
            inbound_tls.clone(),
            certifier.clone(),
            inbound_id.clone(),
            renewal(),
        )));
        tasks.push(tokio::spawn(identity::rotate(gateway_tls.clone(), certifier, id("infra", "gateway"), renewal())));
    }
    let yaml = gateway("gw")
        + &route_to("inventory", "")
        + &format!(
            r#"
---
apiVersion: v1
kind: Service
metadata: {{name: inventory, namespace: infra}}
spec:
  selector: {{app: inventory}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
---
apiVersion: meshgate.io/v1alpha1
kind: Workload
metadata: {{name: inventory-0, namespace: infra, labels: {{app: inventory}}}}
spec: {{address: 127.0.0.1, ports: {{http: {inbound_port}}}, serviceAccount: {workload_sa}, tlsMode: Mutual}}
"#
        );
    let mesh =
        Mesh::start_with(&yaml, &[], GatewayOptions { tls: Some(gateway_tls.clone()), ..GatewayOptions::default() })
            .await;
    Lab { mesh, app, inbound, inbound_port, ca, gateway_tls, inbound_tls, tasks }
}

#[tokio::test]
async fn mtls_between_proxies_with_xfcc_and_identity_checks() {
    // The inbound presents shop/inventory, but the Workload says infra/inventory: refused.
    let l = lab(Duration::from_secs(3600), id("shop", "inventory"), "inventory", InboundPolicy::default(), false).await;
    let r = l
        .mesh
        .get_with(
            "shop.example",
            "/items",
            &[("x-forwarded-client-cert", "By=evil;URI=spiffe://cluster.local/ns/x/sa/admin")],
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("server identity spiffe://cluster.local/ns/shop/sa/inventory is not the expected spiffe://cluster.local/ns/infra/sa/inventory"),
        "{}",
        r.text()
    );
    assert_eq!(l.app.count(), 0);
    drop(l);

    // Now the identity matches: mTLS, and the app learns who called.
    let l = lab_matching(InboundPolicy::default()).await;
    let r = l
        .mesh
        .get_with(
            "shop.example",
            "/items",
            &[("x-forwarded-client-cert", "By=evil;URI=spiffe://cluster.local/ns/x/sa/admin")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.echoed();
    let xfcc = &e.headers["x-forwarded-client-cert"];
    assert!(xfcc.starts_with("By=spiffe://cluster.local/ns/infra/sa/inventory;Hash="), "{xfcc}");
    assert!(
        xfcc.ends_with(";URI=spiffe://cluster.local/ns/infra/sa/gateway"),
        "the client's own XFCC is replaced: {xfcc}"
    );
    assert_eq!(xfcc.split(';').nth(1).unwrap().len(), "Hash=".len() + 64);
    assert_eq!(e.host, "shop.example");
    assert_eq!(e.path, "/items");
}

/// A lab whose inbound proxy has the identity the Workload declares (infra/inventory).
async fn lab_matching(p: InboundPolicy) -> Lab {
    lab(Duration::from_secs(3600), id("infra", "inventory"), "inventory", p, false).await
}

#[tokio::test]
async fn strict_refuses_plaintext_permissive_marks_it() {
    let strict = policy(
        "apiVersion: meshgate.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: meshgate-system}\nspec: {mtls: {mode: STRICT}}\n",
    );
    let l = lab_matching(strict).await;
    let direct = std::net::SocketAddr::from(([127, 0, 0, 1], l.inbound_port));
    let r = Client::h1().try_get(direct, "x", "/plain").await;
    assert!(r.is_err(), "a plaintext client is refused under STRICT: {r:?}");
    assert_eq!(l.app.count(), 0);
    assert_eq!(l.mesh.get("h", "/via-mtls").await.status, 200, "mTLS still passes");
    // PERMISSIVE (the default): plaintext gets through, without an XFCC.
    l.inbound.set_policy(InboundPolicy::default());
    let r = Client::h1().try_get(direct, "x", "/plain").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.echoed().headers.contains_key("x-forwarded-client-cert"));
    // A plaintext keep-alive connection open when the port turns STRICT is closed, not left
    // to carry requests the policy now refuses.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut kept = tokio::net::TcpStream::connect(direct).await.unwrap();
    kept.write_all(b"GET /kept HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    l.inbound.set_policy(policy(
        "apiVersion: meshgate.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: meshgate-system}\nspec: {mtls: {mode: STRICT}}\n",
    ));
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match kept.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the plaintext connection was still open 5 s after STRICT");
    assert_eq!(l.mesh.get("h", "/via-mtls-after").await.status, 200, "mTLS connections stay");
}

#[tokio::test]
async fn authorization_by_identity() {
    let only_order = policy(
        r#"
apiVersion: meshgate.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: order-only, namespace: shop}
spec:
  selector: {matchLabels: {app: inventory}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/order"]}}]}]
"#,
    );
    let l = lab_matching(only_order).await;
    let r = l.mesh.get("h", "/items").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "RBAC: access denied");
    assert_eq!(l.app.count(), 0);
    l.inbound.set_policy(policy(
        r#"
apiVersion: meshgate.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: gateway-reads, namespace: shop}
spec:
  selector: {matchLabels: {app: inventory}}
  rules:
  - from: [{source: {principals: ["spiffe://cluster.local/ns/infra/sa/*"]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: meshgate.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#,
    ));
    assert_eq!(l.mesh.get("h", "/items").await.status, 200);
    assert_eq!(l.mesh.get("h", "/admin/users").await.status, 403);
    let c = Client::h1();
    let r =
        c.send(l.mesh.addr(), http::Method::POST, "h", "/items", &[], bytes::Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(r.status, 403, "only GET is allowed");
    // Plaintext callers have no principal: denied once an ALLOW policy applies.
    let direct = std::net::SocketAddr::from(([127, 0, 0, 1], l.inbound_port));
    assert_eq!(Client::h1().get(direct, "x", "/items", &[]).await.status, 403);
}

async fn load(mesh: &Mesh, stop: Arc<AtomicBool>, ok: Arc<AtomicUsize>, failed: Arc<AtomicUsize>) {
    let c = Client::h1();
    while !stop.load(Ordering::Relaxed) {
        match c.try_get(mesh.addr(), "h", "/").await {
            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
            other => {
                eprintln!("failed: {other:?}");
                failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        // A new upstream connection now and then, so new handshakes use new certificates.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_rotation_every_few_seconds_under_traffic() {
    let l = Arc::new(
        lab(Duration::from_secs(3), id("infra", "inventory"), "inventory", InboundPolicy::default(), true).await,
    );
    let first_serial = l.gateway_tls.material().svid.chain[0].clone();
    let (stop, ok, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let driver = {
        let (l, stop, ok, failed) = (l.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move { load(&l.mesh, stop, ok, failed).await })
    };
    tokio::time::sleep(Duration::from_secs(7)).await;
    stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    assert_ne!(l.gateway_tls.material().svid.chain[0], first_serial, "the gateway's certificate rotated");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_under_traffic() {
    let l = Arc::new(
        lab(Duration::from_secs(2), id("infra", "inventory"), "inventory", InboundPolicy::default(), true).await,
    );
    let inbound_first = l.inbound_tls.material().svid.chain[0].clone();
    let (stop, ok, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let driver = {
        let (l, stop, ok, failed) = (l.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move { load(&l.mesh, stop, ok, failed).await })
    };
    let old_root = l.ca.ca.lock().unwrap().bundle().roots[0].clone();
    // 1. Distribute the new root; 2. sign with it; 3. withdraw the old. Each step waits for
    // every proxy to renew (leaves live 2 s, renewal at half-life).
    l.ca.ca.lock().unwrap().add_next_root(Duration::from_secs(3600)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    l.ca.ca.lock().unwrap().use_next_root().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    l.ca.ca.lock().unwrap().withdraw_old_roots();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    assert_ne!(l.inbound_tls.material().svid.chain[0], inbound_first, "the inbound certificate rotated");
    let bundle = l.gateway_tls.material().bundle.clone();
    assert_eq!(bundle.roots.len(), 1);
    assert_ne!(bundle.roots[0], old_root, "the proxies trust only the new root now");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
}

/// A handshake that stalls is cut at the handshake timeout and holds up nobody; garbage after
/// the TLS record byte is refused; a ClientHello without SNI (proxies dial endpoints by
/// address, and rustls sends no SNI for an address) is the normal case and is served.
#[tokio::test]
async fn stalled_and_garbage_handshakes_are_refused_and_no_sni_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = ca(Duration::from_secs(3600));
    let app = EchoServer::start("inventory").await;
    let server_tls = identity::bootstrap(ca.as_ref(), &id("shop", "inventory")).await.unwrap();
    let client_tls = identity::bootstrap(ca.as_ref(), &id("shop", "order")).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let inbound = Inbound::new(
        AppTarget::Fixed(app.addr),
        Some(server_tls),
        InboundPolicy::default(),
        InboundOptions {
            workload: "shop/inventory".into(),
            handshake_timeout: Duration::from_millis(300),
            ..InboundOptions::default()
        },
    );
    let task = tokio::spawn(inbound.serve(listener));

    // Stalls after the first bytes of a TLS record.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    // Garbage that starts like TLS.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();

    // Meanwhile a real client, without SNI, is served: opaque TCP over mTLS carrying HTTP/1.1.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls.material().client_tcp.clone());
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await.unwrap().unwrap();
    tls.write_all(b"GET /items HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Both bad connections are closed by the proxy, the stalled one at the handshake timeout.
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .expect("stalled handshake never cut");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let n = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match garbage.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // a TLS alert
            }
        }
    })
    .await;
    assert!(n.is_ok(), "garbage handshake left open");
    task.abort();
}

/// Draining an inbound proxy: the request in flight (HTTP/1.1 and HTTP/2) is answered, the
/// drain waits for it and for the connections to close, and the port refuses new connections.
#[tokio::test]
async fn inbound_drain_finishes_requests_in_flight_then_closes() {
    let delay = Duration::from_millis(400);
    let app = EchoServer::start_with("inventory", EchoOptions { delay: Some(delay), ..EchoOptions::default() }).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = InboundOptions { workload: "shop/inventory".into(), ..InboundOptions::default() };
    let inbound = Inbound::new(AppTarget::Fixed(app.addr), None, InboundPolicy::default(), opts);
    tokio::spawn(inbound.clone().serve(listener));

    let h1 = tokio::spawn(async move { Client::h1().try_get(addr, "inventory", "/slow").await });
    let h2 = tokio::spawn(async move { Client::h2().try_get(addr, "inventory", "/slow").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(app.count(), 2, "both requests should be at the application by now");

    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), inbound.drain()).await.expect("drain never finished");
    let waited = started.elapsed();
    for reply in [h1.await.unwrap(), h2.await.unwrap()] {
        let reply = reply.expect("request in flight failed during the drain");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // The drain waited for the answers (sent ~250 ms after it began), not only for the listener.
    assert!(waited >= Duration::from_millis(150), "drain returned after {waited:?}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the inbound port still accepts");

    // A drain right after start, before the accept loop first ran, closes the port too.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = InboundOptions { workload: "shop/inventory".into(), ..InboundOptions::default() };
    let inbound = Inbound::new(AppTarget::Fixed(app.addr), None, InboundPolicy::default(), opts);
    tokio::spawn(inbound.clone().serve(listener));
    tokio::time::timeout(Duration::from_secs(5), inbound.drain()).await.expect("drain never finished");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the inbound port still accepts");
}
