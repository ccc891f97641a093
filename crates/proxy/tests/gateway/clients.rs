//! Clients that misbehave at the HTTP/1.1 level, against every server role that speaks it
//! (gateway listeners here, the inbound proxy, and sidecar outbound in the mesh tests): request
//! heads that never complete, and requests whose `Host` is missing, doubled or invalid.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_model::security::InboundPolicy;
use meshgate_proxy::GatewayOptions;
use meshgate_proxy::conn::ServerSettings;
use meshgate_proxy::roles::inbound::{AppTarget, Inbound, InboundOptions};
use meshgate_testkit::{Client, EchoServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Mesh, gateway, route_to};

fn with_header_timeout(t: Duration) -> GatewayOptions {
    GatewayOptions {
        server: ServerSettings { header_timeout: Some(t), ..ServerSettings::default() },
        ..GatewayOptions::default()
    }
}

/// Everything the server sends until it closes (or 5 s pass): the text and when it closed.
async fn until_closed(s: &mut TcpStream) -> (String, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), Instant::now()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after 5 s; got so far: {:?}", String::from_utf8_lossy(&got)),
        }
    }
}

/// One request on a fresh connection: the whole answer, to the close.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    until_closed(&mut s).await.0
}

/// Asserts the head-timeout behaviour of the HTTP/1.1 server at `addr` with timeout `t`.
async fn check_head_timeout(addr: SocketAddr, t: Duration, host: &str) {
    // Part of a head, then nothing: 408 and closed, at the timeout (checked 4× per period).
    let mut partial = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    partial.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nx-slow: ").as_bytes()).await.unwrap();
    let (answer, closed) = until_closed(&mut partial).await;
    let took = closed - started;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took >= t && took < t * 2, "closed after {took:?} (timeout {t:?})");

    // A head trickled a byte at a time: the bytes keep coming, so it is not idle, but the head
    // is not done in time.
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nx-a: {}\r\n\r\n", "b".repeat(200));
    let mut closed_early = false;
    for b in head.as_bytes() {
        if trickle.write_all(&[*b]).await.is_err() {
            closed_early = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if started.elapsed() > t * 3 {
            break;
        }
    }
    let (answer, closed) = until_closed(&mut trickle).await;
    assert!(closed_early || answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(closed - started < t * 3, "a trickled head lasted {:?}", closed - started);

    // A connection that sends nothing is closed too, without an answer.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let (answer, closed) = until_closed(&mut silent).await;
    assert_eq!(answer, "", "nothing was asked, nothing is answered");
    assert!(closed - started >= t && closed - started < t * 2, "{:?}", closed - started);

    // Keep-alive: quiet between requests for longer than the timeout is fine (that is the idle
    // timeout's business); the clock runs only once the next head has begun.
    let mut keep = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    for _ in 0..2 {
        keep.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(5), keep.read(&mut buf)).await.unwrap().unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        tokio::time::sleep(t + t / 2).await;
    }

    // A slow body is not a slow head: a POST whose body takes longer than the timeout is served.
    let mut upload = TcpStream::connect(addr).await.unwrap();
    upload
        .write_all(
            format!("POST / HTTP/1.1\r\nHost: {host}\r\ncontent-length: 4\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    for b in b"body" {
        tokio::time::sleep(t / 2).await;
        upload.write_all(&[*b]).await.unwrap();
    }
    let (answer, _) = until_closed(&mut upload).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    // HTTP/2 has no head timeout: an h2c connection quiet for longer than it still works.
    let io = TcpStream::connect(addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    tokio::time::sleep(t * 2).await;
    let req = http::Request::get(format!("http://{host}/")).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    let resp = h2.send_request(req).await.expect("the quiet h2c connection was closed");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn gateway_closes_heads_that_do_not_arrive_in_time_with_408() {
    let t = Duration::from_millis(400);
    let m = Mesh::start_with(&(gateway("gw") + &route_to("b", "")), &["infra/b"], with_header_timeout(t)).await;
    check_head_timeout(m.addr(), t, "h").await;
}

#[tokio::test]
async fn the_head_timeout_comes_from_the_mesh_config_unless_a_flag_overrides_it() {
    let config = |t: &str| {
        format!(
            "{}{}---\napiVersion: meshgate.io/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\nspec: {{downstream: {{headerTimeout: {t}}}}}\n",
            gateway("gw"),
            route_to("b", "")
        )
    };
    let m = Mesh::start(&config("300ms"), &["infra/b"]).await;
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
    let (answer, closed) = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(closed - started < Duration::from_millis(900), "{:?}", closed - started);
    // `0s` turns it off: the partial head waits (here, for longer than the old timeout).
    m.reload(&config("0s")).await.unwrap();
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(b"\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The flag wins over the configuration.
    let m2 = Mesh::start_with(&config("0s"), &["infra/b"], with_header_timeout(Duration::from_millis(300))).await;
    let mut s = TcpStream::connect(m2.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
    let (answer, _) = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_trickling_clients_delay_nobody() {
    let t = Duration::from_secs(1);
    let m =
        Arc::new(Mesh::start_with(&(gateway("gw") + &route_to("b", "")), &["infra/b"], with_header_timeout(t)).await);
    let addr = m.addr();
    let started = Instant::now();
    let mut tricklers = Vec::new();
    for _ in 0..200 {
        tricklers.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // A byte every 100 ms, never a whole head.
            let bytes = b"GET / HTTP/1.1\r\nHost: h\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for b in bytes {
                if s.write_all(&[*b]).await.is_err() {
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            until_closed(&mut s).await.1
        }));
    }
    // Meanwhile ordinary clients are served at once.
    let client = Client::h1();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < t {
        let sent = Instant::now();
        let r = client.try_get(addr, "h", "/").await.unwrap();
        assert_eq!(r.status, 200);
        slowest = slowest.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slowest < Duration::from_millis(250), "an ordinary request took {slowest:?} beside 200 trickling clients");
    for t2 in tricklers {
        let closed = t2.await.unwrap();
        assert!(closed - started < t * 3, "a trickling client lasted {:?}", closed - started);
    }
}

#[tokio::test]
async fn host_must_be_there_once_and_valid_and_an_absolute_target_overrides_it() {
    let m = Mesh::start(&(gateway("gw") + &route_to("b", "")), &["infra/b"]).await;
    for (what, request) in [
        ("no Host", "GET / HTTP/1.1\r\nconnection: close\r\n\r\n"),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nconnection: close\r\n\r\n"),
        ("two Hosts, absolute target", "GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\nconnection: close\r\n\r\n"),
        ("an invalid Host", "GET / HTTP/1.1\r\nHost: a b\r\nconnection: close\r\n\r\n"),
        ("user info in Host", "GET / HTTP/1.1\r\nHost: user@a\r\nconnection: close\r\n\r\n"),
    ] {
        let answer = raw(m.addr(), request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(answer.contains("bad request"), "{what}: {answer}");
    }
    // HTTP/1.0 may leave Host out.
    let answer = raw(m.addr(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"), "{answer}");
    // The absolute-form target's authority is the host; the Host header is ignored.
    let answer =
        raw(m.addr(), b"GET http://shop.example/x HTTP/1.1\r\nHost: ignored.example\r\nconnection: close\r\n\r\n")
            .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let echoed: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(echoed["host"], "shop.example", "{echoed}");
    assert_eq!(echoed["path"], "/x");
    // A host-specific route sees the target's host, not the header's.
    let routes = gateway("gw")
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: infra}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [shop.example]\n  rules: [{backendRefs: [{name: b, port: 8080}]}]\n";
    m.reload(&routes).await.unwrap();
    let answer =
        raw(m.addr(), b"GET http://shop.example/ HTTP/1.1\r\nHost: other.example\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer =
        raw(m.addr(), b"GET http://other.example/ HTTP/1.1\r\nHost: shop.example\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

#[tokio::test]
async fn the_inbound_proxy_has_the_same_head_timeout_and_host_rules() {
    let app = EchoServer::start("app").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let t = Duration::from_millis(400);
    let opts = InboundOptions { workload: "shop/app".into(), header_timeout: Some(t), ..InboundOptions::default() };
    let inbound = Inbound::new(AppTarget::Fixed(app.addr), None, InboundPolicy::default(), opts);
    let task = tokio::spawn(inbound.serve(listener));
    // The inbound side sniffs the first bytes before it knows the connection is HTTP, so a
    // client that sends nothing is opaque TCP there: the silent case is the gateway's.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    partial.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nx-slow: ").await.unwrap();
    let (answer, closed) = until_closed(&mut partial).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(closed - started >= t && closed - started < t * 2, "{:?}", closed - started);
    let answer = raw(addr, b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw(addr, b"GET / HTTP/1.1\r\nHost: app\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    task.abort();
}
