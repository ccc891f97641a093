//! Connection routes at the gateway: TLS passed through by SNI to TLSRoute backends, which
//! terminate it themselves (the client sees their certificates); TCP to TCPRoute backends with
//! weights, failover on connect, an idle timeout and byte counts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use meshgate_proxy::GatewayOptions;
use meshgate_proxy::telemetry::{CloseReason, ConnRecord, RequestRecord, TelemetrySink};
use meshgate_tls::edge::EdgeCert;
use meshgate_tls::testing::{EdgeCa, KeyAlg};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{Mesh, service_yaml};

/// A line server: answers each line with `name: line`, over TLS when given a certificate.
pub(crate) async fn line_server(name: &'static str, tls: Option<EdgeCert>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(c.server_config()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(a) => {
                        if let Ok(s) = a.accept(stream).await {
                            answer(name, s).await;
                        }
                    }
                    None => answer(name, stream).await,
                }
            });
        }
    });
    addr
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(name: &str, stream: S) {
    let (r, mut w) = tokio::io::split(stream);
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if w.write_all(format!("{name}: {line}\n").as_bytes()).await.is_err() {
            return;
        }
        let _ = w.flush().await;
    }
}

/// Sends `line` and reads the answer.
pub(crate) async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S, line: &str) -> String {
    stream.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while got.last() != Some(&b'\n') {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await.unwrap().unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    String::from_utf8(got).unwrap().trim_end().to_string()
}

#[derive(Debug, Default)]
struct Connections(Mutex<Vec<ConnRecord>>);

impl TelemetrySink for Connections {
    fn request(&self, _: &RequestRecord) {}
    fn connection(&self, c: &ConnRecord) {
        self.0.lock().unwrap().push(c.clone());
    }
}

impl Connections {
    async fn wait(&self, n: usize) -> Vec<ConnRecord> {
        for _ in 0..300 {
            let got = self.0.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} connection records: {:?}", self.0.lock().unwrap());
    }
}

const TLS_GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: meshgate
  listeners:
  - name: tls
    port: {port}
    protocol: TLS
    tls: {mode: Passthrough}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: a, namespace: infra}
spec:
  parentRefs: [{name: edge}]
  hostnames: [a.example.com]
  rules: [{backendRefs: [{name: tls-a, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: wild, namespace: infra}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  hostnames: ["*.example.com"]
  rules: [{backendRefs: [{name: tls-w1, port: 8080, weight: 1}, {name: tls-w2, port: 8080, weight: 1}]}]
"#;

#[tokio::test]
async fn tls_is_passed_through_by_sni_to_backends_that_terminate_it() {
    let ca = EdgeCa::new().unwrap();
    let cert = |names: &[&str]| {
        let (crt, key) = ca.issue(names, KeyAlg::EcdsaP256, -60, 3600).unwrap();
        EdgeCert::from_pem("test/backend", crt.as_bytes(), key.as_bytes(), SystemTime::now()).unwrap()
    };
    let a = line_server("a", Some(cert(&["a.example.com"]))).await;
    let w1 = line_server("w1", Some(cert(&["*.example.com"]))).await;
    let w2 = line_server("w2", Some(cert(&["*.example.com"]))).await;
    let services = service_yaml("infra", "tls-a", a, None)
        + &service_yaml("infra", "tls-w1", w1, None)
        + &service_yaml("infra", "tls-w2", w2, None);
    let sink = Arc::new(Connections::default());
    let options = GatewayOptions { sink: sink.clone(), ..GatewayOptions::default() };
    let m = Mesh::start_with(&(TLS_GATEWAY.to_string() + &services), &[], options).await;
    let client = tokio_rustls::TlsConnector::from(ca.client(&[b"h2"], &[13]).unwrap());
    let dial = |name: &'static str| {
        let client = client.clone();
        let addr = m.addr();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            client.connect(ServerName::try_from(name).unwrap(), tcp).await
        }
    };
    // The exact name goes to its route; the backend, not the gateway, terminates.
    let mut s = dial("a.example.com").await.unwrap();
    assert_eq!(ask(&mut s, "hello").await, "a: hello");
    // The gateway holds no certificate at all: the handshake that succeeded was the backend's.
    drop(s);
    // The wildcard route splits by weight.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..40 {
        let mut s = dial("shop.example.com").await.unwrap();
        let answer = ask(&mut s, &format!("n{i}")).await;
        *seen.entry(answer.split(':').next().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(seen.keys().len(), 2, "both weighted backends: {seen:?}");
    assert!(seen.values().all(|&n| n >= 8), "about half each: {seen:?}");
    // A name no route serves: an alert, then the close.
    let e = dial("other.test").await.unwrap_err();
    assert!(e.to_string().contains("UnrecognisedName"), "{e}");
    // Bytes were counted, both ways, for a passed-through connection.
    let records = sink.wait(42).await;
    let first = records.iter().find(|r| r.bytes_in > 0).unwrap();
    assert!(first.bytes_in > 200 && first.bytes_out > 200, "the handshake and the lines: {first:?}");
}

#[tokio::test]
async fn tcp_goes_to_weighted_backends_fails_over_on_connect_and_closes_when_idle() {
    let one = line_server("one", None).await;
    let two = line_server("two", None).await;
    // A backend whose first endpoint refuses connections: the next one is tried.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let services = service_yaml("infra", "tcp-one", one, None)
        + &crate::harness::multi_service_yaml("infra", "tcp-two", &[dead, two]);
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: meshgate
  listeners: [{name: tcp, port: {port}, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db, namespace: infra}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: tcp-one, port: 8080, weight: 3}, {name: tcp-two, port: 8080, weight: 1}]}]
"#
    .to_string()
        + &services;
    let sink = Arc::new(Connections::default());
    let options = GatewayOptions {
        sink: sink.clone(),
        server: meshgate_proxy::conn::ServerSettings {
            idle_timeout: Some(Duration::from_millis(400)),
            ..Default::default()
        },
        ..GatewayOptions::default()
    };
    let m = Mesh::start_with(&yaml, &[], options).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..80 {
        let mut s = TcpStream::connect(m.addr()).await.unwrap();
        let answer = ask(&mut s, &format!("n{i}")).await;
        *seen.entry(answer.split(':').next().unwrap().to_string()).or_default() += 1;
    }
    let (n1, n2) = (seen.get("one").copied().unwrap_or(0), seen.get("two").copied().unwrap_or(0));
    assert_eq!(n1 + n2, 80, "every connection served, failing over from the dead endpoint: {seen:?}");
    assert!(n1 > n2 && n2 >= 8, "3:1: {seen:?}");
    let records = sink.wait(80).await;
    let sizes: Vec<(u64, u64)> = records.iter().map(|r| (r.bytes_in, r.bytes_out)).collect();
    assert!(
        sizes.iter().all(|&(i, o)| (i == 3 || i == 4) && o == i + 5),
        "\"n0\\n\" .. \"n79\\n\" and \"one: \"/\"two: \" before each: {sizes:?}"
    );
    // Idle: closed between 1 and 1.25 idle timeouts after the last byte.
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    assert_eq!(ask(&mut s, "x").await.split(':').nth(1), Some(" x"));
    let quiet = Instant::now();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed");
    let after = quiet.elapsed();
    assert!(after >= Duration::from_millis(350) && after < Duration::from_millis(1200), "closed after {after:?}");
    let records = sink.wait(81).await;
    assert_eq!(records.last().unwrap().close, CloseReason::IdleTimeout, "{:?}", records.last());
}

#[tokio::test]
async fn l4_routes_and_listeners_are_reported() {
    let dir = meshgate_testkit::TempDir::new("meshgate-l4");
    dir.write(
        "all.yaml",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: meshgate
  listeners:
  - {name: tls-terminate, port: 9443, protocol: TLS, tls: {mode: Terminate}}
  - {name: http, port: 9080, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db, namespace: infra}
spec:
  parentRefs: [{name: edge, sectionName: http}]
  rules: [{backendRefs: [{name: nowhere, port: 5432}]}]
"#,
    );
    let (_, compiled) = meshgate_proxy::source::load(&[dir.path().to_path_buf()]).unwrap();
    let all: Vec<String> = compiled.problems().map(ToString::to_string).collect();
    let has = |s: &str| all.iter().any(|p| p.contains(s));
    assert!(has("protocol TLS needs at least one certificateRef"), "{all:?}");
    assert!(has("NotAllowedByListeners") && has("speaks HTTP, which does not carry TCPRoute"), "{all:?}");
    assert!(has("BackendNotFound"), "{all:?}");
    // Bad input is refused with the field.
    dir.write(
        "all.yaml",
        "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: db, namespace: infra}\nspec:\n  parentRefs: [{name: edge}]\n  rules: [{backendRefs: [{name: db}]}]\n",
    );
    let errors = meshgate_proxy::source::load(&[dir.path().to_path_buf()]).unwrap_err().to_string();
    assert!(
        errors.contains("TCPRoute infra/db: spec.rules[0].backendRefs[0].port: required when the backend is a Service"),
        "{errors}"
    );
}

#[tokio::test]
async fn one_port_terminates_https_for_some_names_and_passes_tls_through_for_others() {
    let ca = EdgeCa::new().unwrap();
    let (crt, key) = ca.issue(&["a.example.com"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
    let backend_cert = EdgeCert::from_pem("test/a", crt.as_bytes(), key.as_bytes(), SystemTime::now()).unwrap();
    let a = line_server("a", Some(backend_cert)).await;
    let (shop_crt, shop_key) = ca.issue(&["shop.example.com"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
    let indent = |pem: &str| pem.trim_end().lines().map(|l| format!("    {l}\n")).collect::<String>();
    let yaml = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: meshgate
  listeners:
  - {{name: https, port: {{port}}, protocol: HTTPS, tls: {{certificateRefs: [{{name: shop}}]}}}}
  - {{name: pass, port: {{port}}, protocol: TLS, hostname: a.example.com, tls: {{mode: Passthrough}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: a, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: pass}}]
  hostnames: [a.example.com]
  rules: [{{backendRefs: [{{name: tls-a, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: infra}}
spec:
  parentRefs: [{{name: edge, sectionName: https}}]
  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: shop, namespace: infra}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}"#,
        indent(&shop_crt),
        indent(&shop_key)
    ) + &service_yaml("infra", "tls-a", a, None);
    let m = Mesh::start(&yaml, &["infra/infra-backend-v1"]).await;
    let client = tokio_rustls::TlsConnector::from(ca.client(&[b"http/1.1"], &[13]).unwrap());
    let tcp = TcpStream::connect(m.addr()).await.unwrap();
    let mut passed = client.connect(ServerName::try_from("a.example.com").unwrap(), tcp).await.unwrap();
    assert_eq!(ask(&mut passed, "hi").await, "a: hi");
    let tcp = TcpStream::connect(m.addr()).await.unwrap();
    let mut terminated = client.connect(ServerName::try_from("shop.example.com").unwrap(), tcp).await.unwrap();
    terminated.write_all(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let _ = terminated.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("infra-backend-v1"), "{response}");
}

#[tokio::test]
async fn a_tls_listener_in_terminate_mode_carries_the_decrypted_bytes_to_its_tlsroute() {
    let ca = EdgeCa::new().unwrap();
    let (crt, key) = ca.issue(&["db.example.com"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
    let plain = line_server("plain", None).await;
    let indent = |pem: &str| pem.trim_end().lines().map(|l| format!("    {l}\n")).collect::<String>();
    let yaml = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: infra}}
spec:
  gatewayClassName: meshgate
  listeners:
  - {{name: tls, port: {{port}}, protocol: TLS, hostname: db.example.com, tls: {{mode: Terminate, certificateRefs: [{{name: db}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1alpha3
kind: TLSRoute
metadata: {{name: db, namespace: infra}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [db.example.com]
  rules: [{{backendRefs: [{{name: db-plain, port: 8080}}]}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: db, namespace: infra}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}"#,
        indent(&crt),
        indent(&key)
    ) + &service_yaml("infra", "db-plain", plain, None);
    let m = Mesh::start_raw(&yaml).await;
    let client = tokio_rustls::TlsConnector::from(ca.client(&[], &[13, 12]).unwrap());
    let tcp = TcpStream::connect(m.addr()).await.unwrap();
    let mut s = client.connect(ServerName::try_from("db.example.com").unwrap(), tcp).await.unwrap();
    // The gateway's certificate; the backend speaks plaintext behind it.
    let presented = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented.as_ref(), rustls_pki_types::CertificateDer::from_pem_slice(crt.as_bytes()).unwrap().as_ref());
    assert_eq!(ask(&mut s, "select 1").await, "plain: select 1");
    assert_eq!(ask(&mut s, "select 2").await, "plain: select 2");
}
