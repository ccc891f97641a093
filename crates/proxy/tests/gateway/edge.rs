//! What a gateway at the edge must get right beyond routing: forwarded headers, protocols,
//! streaming, limits, broken clients and broken upstreams.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use meshgate_testkit::{Client, EchoServer, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Mesh, gateway, route_to, service_yaml};

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn forwarded_headers_request_id_and_byte_for_byte_host_and_path() {
    let m = Mesh::start(&(gateway("gw") + &route_to("b", "")), &["infra/b"]).await;
    let e = m
        .get_with(
            "Shop.Example.COM",
            "/a%2Fb/./c?x=%20&y",
            &[
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("proxy-connection", "keep-alive"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await
        .echoed();
    assert_eq!(e.host, "Shop.Example.COM");
    assert_eq!(e.path, "/a%2Fb/./c?x=%20&y");
    assert_eq!(e.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(e.headers["x-forwarded-proto"], "http", "the edge does not trust a client's claim");
    assert_eq!(e.headers["x-forwarded-host"], "Shop.Example.COM");
    assert_eq!(e.headers["x-request-id"].len(), 36);
    assert!(!e.headers.contains_key("x-secret"), "headers named by Connection are hop-by-hop");
    assert!(!e.headers.contains_key("proxy-connection"));
    let e = m.get_with("h", "/", &[("x-request-id", "keep-me")]).await.echoed();
    assert_eq!(e.headers["x-request-id"], "keep-me");
}

#[tokio::test]
async fn h2c_clients_and_h2c_upstreams() {
    let h2_upstream = EchoServer::start("grpcish").await;
    let yaml = gateway("gw")
        + &service_yaml("infra", "grpcish", h2_upstream.addr, Some("kubernetes.io/h2c"))
        + r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /h2}}]
    backendRefs: [{name: grpcish, port: 8080}]
  - backendRefs: [{name: b, port: 8080}]
"#;
    let m = Mesh::start(&yaml, &["infra/b"]).await;
    // HTTP/2 client → HTTP/1.1 upstream: the authority becomes the Host header.
    let e = Client::h2().get(m.addr(), "shop.example.com", "/x", &[]).await.echoed();
    assert_eq!((e.backend.as_str(), e.proto.as_str(), e.host.as_str()), ("b", "HTTP/1.1", "shop.example.com"));
    // HTTP/1.1 client → HTTP/2 upstream (appProtocol kubernetes.io/h2c).
    let e = Client::h1().get(m.addr(), "shop.example.com", "/h2/y", &[]).await.echoed();
    assert_eq!((e.backend.as_str(), e.proto.as_str(), e.host.as_str()), ("grpcish", "HTTP/2.0", "shop.example.com"));
    // HTTP/2 end to end, many requests on one upstream connection.
    let c = Client::h2();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = c.clone();
        let addr = m.addr();
        tasks.push(tokio::spawn(async move { c.get(addr, "h", &format!("/h2/{i}"), &[]).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    // An upstream that reports its first request-body frame before the client has sent the
    // rest, and streams its response until the client says it has seen the first part.
    let (first_in_tx, first_in_rx) = tokio::sync::oneshot::channel::<()>();
    let (first_out_tx, first_out_rx) = tokio::sync::oneshot::channel::<()>();
    let first_in_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(first_in_tx)));
    let first_out_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(first_out_rx)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let first_in_tx = first_in_tx.clone();
            let first_out_rx = first_out_rx.clone();
            async move {
                let mut body = req.into_body();
                let mut total = 0usize;
                while let Some(frame) = body.frame().await {
                    let frame = frame.unwrap();
                    if let Some(d) = frame.data_ref() {
                        total += d.len();
                        if let Some(tx) = first_in_tx.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                }
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(4);
                tokio::spawn(async move {
                    tx.send(Ok(http_body::Frame::data(Bytes::from(vec![b'a'; 65536])))).await.unwrap();
                    if let Some(rx) = first_out_rx.lock().await.take() {
                        let _ = rx.await;
                    }
                    for _ in 0..(total / 65536) {
                        tx.send(Ok(http_body::Frame::data(Bytes::from(vec![b'b'; 65536])))).await.unwrap();
                    }
                });
                Ok::<_, std::convert::Infallible>(http::Response::new(ChannelBody(rx)))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await;
    });
    let yaml = gateway("gw") + &service_yaml("infra", "streamer", upstream, None) + &route_to("streamer", "");
    let m = Mesh::start(&yaml, &[]).await;

    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    let total = 64 * 65536;
    s.write_all(format!("POST /up HTTP/1.1\r\nhost: h\r\ncontent-length: {total}\r\n\r\n").as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; 65536]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), first_in_rx)
        .await
        .expect("the upstream must see the body's start before the client sends the rest")
        .unwrap();
    s.write_all(&vec![b'x'; total - 65536]).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !got.windows(4).any(|w| w == b"aaaa") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the response's start must arrive before the upstream finishes")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    first_out_tx.send(()).unwrap();
    let mut bs = got.iter().filter(|b| **b == b'b').count();
    while bs < total - 65536 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0);
        bs += buf[..n].iter().filter(|b| **b == b'b').count();
    }
}

/// A response body fed by a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<http_body::Frame<Bytes>, std::io::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn expect_100_continue() {
    let m = Mesh::start(&(gateway("gw") + &route_to("b", "")), &["infra/b"]).await;
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n =
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.expect("100 Continue in time").unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    let mut got = String::new();
    while !got.contains("\"body_bytes\":5") {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "{got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("HTTP/1.1 200 OK"), "{got}");
    assert!(!got.contains("\"expect\""), "Expect is answered here, not forwarded: {got}");
}

#[tokio::test]
async fn oversize_headers_and_malformed_requests() {
    let m = Mesh::start(&(gateway("gw") + &route_to("b", "")), &["infra/b"]).await;
    let big = format!("GET / HTTP/1.1\r\nhost: h\r\nx-big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let resp = raw(m.addr(), big.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let resp = raw(m.addr(), format!("GET / HTTP/1.1\r\nhost: h\r\n{many}\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let resp = raw(m.addr(), b"GARBAGE\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = raw(m.addr(), b"GET / HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // And it keeps serving.
    m.expect_backend("h", "/", &[], "b").await;
}

#[tokio::test]
async fn broken_upstreams_get_clear_errors() {
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let yaml = gateway("gw")
        + &service_yaml("infra", "refuses", dead, None)
        + r#"
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: infra}
spec:
  ports: [{port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {value: /refuses}}]
    backendRefs: [{name: refuses, port: 8080}]
  - matches: [{path: {value: /empty}}]
    backendRefs: [{name: empty, port: 8080}]
  - backendRefs: [{name: b, port: 8080}]
"#;
    let m = Mesh::start(&yaml, &["infra/b"]).await;
    let r = m.get("h", "/refuses").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("upstream connect error") && r.text().contains("infra/refuses:8080"), "{}", r.text());
    let r = m.get("h", "/empty").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("no healthy upstream"), "{}", r.text());
    m.expect_backend("h", "/", &[], "b").await;
}

#[tokio::test]
async fn upstream_closing_mid_response_and_client_leaving_mid_body() {
    // An upstream that sends headers and half a body, then closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf").await;
            });
        }
    });
    let yaml = gateway("gw")
        + &service_yaml("infra", "flaky", upstream, None)
        + r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {value: /flaky}}]
    backendRefs: [{name: flaky, port: 8080}]
  - backendRefs: [{name: b, port: 8080}]
"#;
    let m = Mesh::start(&yaml, &["infra/b"]).await;
    let r = Client::h1().send(m.addr(), http::Method::GET, "h", "/flaky", &[], Bytes::new()).await;
    assert!(r.is_err(), "a truncated upstream body must not look complete: {r:?}");
    // A client that promises a body and leaves half-way.
    for _ in 0..20 {
        let mut s = TcpStream::connect(m.addr()).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 1000000\r\n\r\npartial").await.unwrap();
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    m.expect_backend("h", "/", &[], "b").await;
}

#[tokio::test]
async fn listener_conflicts_between_gateways() {
    let yaml = gateway("gw")
        + r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: late, namespace: infra, creationTimestamp: "2030-01-01T00:00:00Z"}
spec:
  gatewayClassName: meshgate
  listeners:
  - {name: same, port: {port}, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: late, namespace: tls, creationTimestamp: "2030-01-01T00:00:00Z"}
spec:
  gatewayClassName: meshgate
  listeners:
  - name: tls
    port: {port}
    protocol: HTTPS
    hostname: secure.example.com
    tls: {certificateRefs: [{name: cert}]}
"# + &route_to("b", "");
    let m = Mesh::start(&yaml, &["infra/b"]).await;
    let snap = m.gateway.snapshot();
    let reasons: Vec<_> =
        snap.conditions.iter().filter(|c| c.object.name.as_ref() == "late").map(|c| (c.kind, c.reason)).collect();
    assert!(reasons.contains(&("Conflicted", "HostnameConflict")), "{reasons:?}");
    assert!(reasons.contains(&("Conflicted", "ProtocolConflict")), "{reasons:?}");
    m.expect_backend("h", "/", &[], "b").await;
}

/// Reads one HTTP/1.1 response with a Content-Length body from a keep-alive connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed mid-response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text.into_owned();
            }
        }
    }
}

#[tokio::test]
async fn idle_client_connections_are_closed_busy_ones_are_not() {
    let options = meshgate_proxy::GatewayOptions {
        server: meshgate_proxy::conn::ServerSettings {
            idle_timeout: Some(Duration::from_millis(400)),
            ..Default::default()
        },
        ..Default::default()
    };
    let m = Mesh::start_with(&(gateway("gw") + &route_to("b", "")), &["infra/b"], options).await;
    let request = b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n";
    // Busy: a request every 150 ms for 1.5 s, all on one connection.
    let mut busy = TcpStream::connect(m.addr()).await.unwrap();
    for _ in 0..10 {
        busy.write_all(request).await.unwrap();
        assert!(read_response(&mut busy).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Idle after one request: closed by the gateway between 400 and 500 ms later.
    let mut idle = TcpStream::connect(m.addr()).await.unwrap();
    idle.write_all(request).await.unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await.unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(350) && waited < Duration::from_secs(2), "{waited:?}");
    // A connection that never sent anything is idle too.
    let mut silent = TcpStream::connect(m.addr()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await.unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}
