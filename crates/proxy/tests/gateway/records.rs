//! The record of every request and connection, as the telemetry sink receives it: completed
//! when the response body ends (or the client leaves), with the route, backend, endpoint,
//! status, flags, bytes and times; and when a connection closes, with its bytes and why.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshgate_proxy::GatewayOptions;
use meshgate_proxy::flags::Flags;
use meshgate_proxy::telemetry::{CloseReason, ConnRecord, Protocol, RequestRecord, Role, TelemetrySink};
use meshgate_testkit::{Client, EchoOptions, EchoServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Mesh, gateway, route_to, service_yaml};

/// Keeps every record.
#[derive(Debug, Default)]
struct Recorder {
    requests: Mutex<Vec<RequestRecord>>,
    connections: Mutex<Vec<ConnRecord>>,
}

impl TelemetrySink for Recorder {
    fn request(&self, r: &RequestRecord) {
        self.requests.lock().unwrap().push(r.clone());
    }
    fn connection(&self, c: &ConnRecord) {
        self.connections.lock().unwrap().push(c.clone());
    }
}

impl Recorder {
    async fn wait_requests(&self, n: usize) -> Vec<RequestRecord> {
        for _ in 0..200 {
            let got = self.requests.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} request records: {:?}", self.requests.lock().unwrap());
    }

    async fn wait_connections(&self, n: usize) -> Vec<ConnRecord> {
        for _ in 0..300 {
            let got = self.connections.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} connection records: {:?}", self.connections.lock().unwrap());
    }
}

async fn recorded(yaml: &str, backends: &[&str]) -> (Mesh, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let options = GatewayOptions { sink: recorder.clone(), ..GatewayOptions::default() };
    (Mesh::start_with(yaml, backends, options).await, recorder)
}

#[tokio::test]
async fn every_request_is_recorded_when_its_response_ends() {
    let route = "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: infra}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [h]\n  rules: [{backendRefs: [{name: b, port: 8080}]}]\n";
    let (m, rec) = recorded(&(gateway("gw") + route), &["infra/b"]).await;
    let r = m.get("h", "/items").await;
    assert_eq!(r.status, 200);
    let r404 = Client::h2().try_get(m.addr(), "nowhere", "/").await.unwrap();
    let records = rec.wait_requests(2).await;
    let ok = &records[0];
    assert_eq!(ok.role, Role::Gateway);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.protocol, Protocol::Http1);
    assert_eq!(ok.route.as_ref().map(|(r, i)| (r.as_ref(), *i)), Some(("infra/r", 0)));
    assert_eq!(ok.backend.as_deref(), Some("infra/b:8080"));
    assert_eq!(ok.endpoint, Some(m.backends["b"].addr));
    assert_eq!(ok.response_bytes, r.body.len() as u64);
    assert_eq!(ok.request_bytes, 0);
    assert_eq!(ok.attempts, 1);
    assert!(ok.flags.is_empty(), "{}", ok.flags);
    assert!(ok.ttfb <= ok.duration && ok.proxy_time <= ok.ttfb, "{ok:?}");
    assert!(ok.security.is_some(), "an upstream hop was made");
    let nr = &records[1];
    assert_eq!((nr.status, nr.protocol, nr.attempts), (404, Protocol::Http2, 0));
    assert!(nr.flags.contains(Flags::NO_ROUTE), "{}", nr.flags);
    assert_eq!(nr.response_bytes, r404.body.len() as u64);
    assert!(nr.security.is_none(), "answered by the proxy: no hop");
}

#[tokio::test]
async fn request_bytes_are_what_the_client_sent_once_whatever_the_attempts() {
    // Every other answer is a 503: a PUT (idempotent) is retried, its body replayed.
    let flaky =
        EchoServer::start_with("flaky", EchoOptions { status_cycle: vec![503, 200], ..Default::default() }).await;
    let policy = "---\napiVersion: meshgate.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p, namespace: infra}\nspec:\n  targetRefs: [{kind: Service, name: flaky}]\n  retry: {budget: {minRetriesPerSecond: 1000}}\n";
    let yaml = gateway("gw") + &route_to("flaky", "") + &service_yaml("infra", "flaky", flaky.addr, None) + policy;
    let (m, rec) = recorded(&yaml, &[]).await;
    // Chunked: no Content-Length, so only counting the body can tell its size.
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    let chunk = "x".repeat(1000);
    let mut req =
        String::from("PUT /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for _ in 0..3 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    let seen = flaky.seen();
    assert_eq!(seen.len(), 2, "a 503 and the retry");
    assert!(seen.iter().all(|e| e.body_bytes == 3000), "each attempt got the whole body: {seen:?}");
    // A POST with a declared body, over HTTP/2.
    let r = Client::h2()
        .send(m.addr(), http::Method::POST, "h", "/", &[], bytes::Bytes::from(vec![b'y'; 777]))
        .await
        .unwrap();
    let records = rec.wait_requests(2).await;
    assert_eq!((records[0].status, records[0].attempts, records[0].request_bytes), (200, 2, 3000), "{:?}", records[0]);
    assert_eq!(records[1].status, r.status.as_u16());
    assert_eq!(records[1].request_bytes, 777, "{:?}", records[1]);
}

#[tokio::test]
async fn a_client_leaving_mid_response_is_recorded_with_dc() {
    // An upstream that sends its head and part of its body, then waits: the client reads the
    // head and goes.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial").await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
        }
    });
    let yaml = gateway("gw") + &route_to("slow", "") + &service_yaml("infra", "slow", addr, None);
    let (m, rec) = recorded(&yaml, &[]).await;
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    let records = rec.wait_requests(1).await;
    assert!(records[0].flags.contains(Flags::DOWNSTREAM_DISCONNECT), "{}", records[0].flags);
}

#[tokio::test]
async fn every_connection_is_recorded_when_it_closes() {
    let options = GatewayOptions {
        server: meshgate_proxy::conn::ServerSettings {
            idle_timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        },
        ..GatewayOptions::default()
    };
    let recorder = Arc::new(Recorder::default());
    let options = GatewayOptions { sink: recorder.clone(), ..options };
    let m = Mesh::start_with(&(gateway("gw") + &route_to("b", "")), &["infra/b"], options).await;
    // One closed by the client after a request, one left idle.
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let idle = TcpStream::connect(m.addr()).await.unwrap();
    let conns = recorder.wait_connections(2).await;
    drop(idle);
    let closed = conns.iter().find(|c| c.close == CloseReason::Closed).expect("no connection closed by its client");
    assert_eq!(closed.role, Role::Gateway);
    assert_eq!(closed.bytes_out, answer.len() as u64);
    assert_eq!(closed.bytes_in, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".len() as u64);
    assert!(!closed.opaque);
    let idled = conns.iter().find(|c| c.close == CloseReason::IdleTimeout).expect("no idle connection closed");
    assert_eq!((idled.bytes_in, idled.bytes_out), (0, 0));
    assert!(idled.duration >= Duration::from_millis(300), "{:?}", idled.duration);
}
