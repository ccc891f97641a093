//! HTTPS listeners: TLS 1.3 and 1.2 terminated with certificates from `kubernetes.io/tls`
//! Secrets, chosen by SNI; ALPN h2 and http/1.1; several listeners on one port; 421 for a
//! connection reused across names; live certificate swaps under load; broken Secrets and broken
//! clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_proxy::source;
use meshgate_tls::testing::{EdgeCa, KeyAlg};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;

use crate::harness::{Mesh, V123};

/// A `kubernetes.io/tls` Secret holding `crt`/`key`, as `stringData`.
pub(crate) fn secret(ns: &str, name: &str, (crt, key): &(String, String)) -> String {
    let indent = |pem: &str| pem.trim_end().lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(crt),
        indent(key)
    )
}

/// Gateway `infra/gw`: a catch-all HTTPS listener with `refs` and one for `api.other.test` with
/// Secret `api`, both on `{port}`, and a route for every host to infra-backend-v1.
fn https_gateway(refs: &[&str]) -> String {
    let refs: Vec<String> = refs
        .iter()
        .map(|r| match r.split_once('/') {
            Some((ns, name)) => format!("{{name: {name}, namespace: {ns}}}"),
            None => format!("{{name: {r}}}"),
        })
        .collect();
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra}}
spec:
  gatewayClassName: meshgate
  listeners:
  - name: https
    port: {{port}}
    protocol: HTTPS
    tls: {{mode: Terminate, certificateRefs: [{}]}}
    allowedRoutes: {{namespaces: {{from: All}}}}
  - name: api
    port: {{port}}
    protocol: HTTPS
    hostname: api.other.test
    tls: {{certificateRefs: [{{name: api}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: infra}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: infra-backend-v1, port: 8080}}]
"#,
        refs.join(", ")
    )
}

struct Pki {
    ca: EdgeCa,
    shop: (String, String),
    wild: (String, String),
    api: (String, String),
}

impl Pki {
    fn new() -> Pki {
        let ca = EdgeCa::new().unwrap();
        let shop = ca.issue(&["shop.example.com"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
        let wild = ca.issue(&["*.example.com"], KeyAlg::Rsa2048, -60, 3600).unwrap();
        let api = ca.issue(&["api.other.test"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
        Pki { ca, shop, wild, api }
    }

    fn secrets(&self) -> String {
        secret("infra", "shop", &self.shop) + &secret("infra", "wild", &self.wild) + &secret("infra", "api", &self.api)
    }

    fn client(&self, alpn: &[&[u8]], versions: &[u8], sni: bool) -> Arc<ClientConfig> {
        let mut config = Arc::unwrap_or_clone(self.ca.client(alpn, versions).unwrap());
        config.enable_sni = sni;
        Arc::new(config)
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A TLS connection to `addr`, verifying the server as `name` (sent as SNI unless the
/// client's config turns SNI off).
pub(crate) async fn connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// What the server presented on a connection.
fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// Sends requests over one TLS connection, HTTP/2 or HTTP/1.1 as ALPN chose.
pub(crate) enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    pub(crate) async fn new(stream: TlsStream<TcpStream>) -> Sender {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(s)
        }
    }

    /// GET `https://host/path`: status, version and body.
    pub(crate) async fn get(&mut self, host: &str, path: &str) -> Result<(u16, http::Version, Bytes), String> {
        let resp = match self {
            Sender::H1(s) => {
                let req = http::Request::get(path).header("host", host).body(Full::default()).unwrap();
                s.send_request(req).await
            }
            Sender::H2(s) => {
                let req = http::Request::get(format!("https://{host}{path}")).body(Full::default()).unwrap();
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        let (status, version) = (resp.status().as_u16(), resp.version());
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, version, body))
    }
}

pub(crate) fn echoed(body: &Bytes) -> meshgate_testkit::Echoed {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not an echo ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn https_listeners_pick_the_certificate_by_sni_and_speak_h2_and_http1() {
    let pki = Pki::new();
    let m = Mesh::start(&(https_gateway(&["shop", "wild"]) + &pki.secrets()), &V123).await;
    let h2 = pki.client(&[b"h2", b"http/1.1"], &[13, 12], true);
    // Exact name, then wildcard, then another listener on the same port by its hostname.
    for (name, cert) in
        [("shop.example.com", &pki.shop.0), ("news.example.com", &pki.wild.0), ("api.other.test", &pki.api.0)]
    {
        let stream = connect(m.addr(), name, h2.clone()).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(presented(&stream), der(cert), "{name}");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(stream.get_ref().1.protocol_version(), Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3));
        let mut s = Sender::new(stream).await;
        let (status, version, body) = s.get(name, "/x").await.unwrap();
        assert_eq!((status, version), (200, http::Version::HTTP_2), "{name}");
        let e = echoed(&body);
        assert_eq!(e.backend, "infra-backend-v1");
        assert_eq!(e.headers.get("x-forwarded-proto").map(String::as_str), Some("https"), "{:?}", e.headers);
    }
    // HTTP/1.1 over TLS 1.2, an RSA certificate.
    let h1 = pki.client(&[b"http/1.1"], &[12], true);
    let stream = connect(m.addr(), "www.example.com", h1).await.unwrap();
    assert_eq!(stream.get_ref().1.protocol_version(), Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(presented(&stream), der(&pki.wild.0));
    let (status, version, _) = Sender::new(stream).await.get("www.example.com", "/").await.unwrap();
    assert_eq!((status, version), (200, http::Version::HTTP_11));
    // No SNI: the catch-all listener's first certificate.
    let no_sni = pki.client(&[b"http/1.1"], &[13], false);
    let stream = connect(m.addr(), "shop.example.com", no_sni).await.unwrap();
    assert_eq!(presented(&stream), der(&pki.shop.0));
    // Without ALPN: HTTP/1.1.
    let plain = pki.client(&[], &[13], true);
    let stream = connect(m.addr(), "shop.example.com", plain).await.unwrap();
    let (status, version, _) = Sender::new(stream).await.get("shop.example.com", "/").await.unwrap();
    assert_eq!((status, version), (200, http::Version::HTTP_11));
    // Plain HTTP on the HTTPS port is not served.
    let r = meshgate_testkit::Client::h1().try_get(m.addr(), "shop.example.com", "/").await;
    assert!(r.is_err(), "plaintext on an HTTPS port answered: {r:?}");
}

#[tokio::test]
async fn a_connection_reused_for_a_host_its_certificate_does_not_cover_gets_421() {
    let pki = Pki::new();
    let m = Mesh::start(&(https_gateway(&["shop"]) + &pki.secrets()), &V123).await;
    let stream = connect(m.addr(), "shop.example.com", pki.client(&[b"h2"], &[13], true)).await.unwrap();
    let mut s = Sender::new(stream).await;
    assert_eq!(s.get("shop.example.com", "/").await.unwrap().0, 200);
    let (status, _, body) = s.get("api.other.test", "/").await.unwrap();
    assert_eq!(status, 421, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("does not cover host \"api.other.test\""));
    // The same connection still serves its own name.
    assert_eq!(s.get("shop.example.com", "/again").await.unwrap().0, 200);
}

#[tokio::test]
async fn names_no_listener_serves_and_broken_clients_get_an_alert_or_a_close() {
    let pki = Pki::new();
    // Only the hostname listener: no catch-all.
    let yaml = https_gateway(&["shop"]).replace(
        "  - name: https\n    port: {port}\n    protocol: HTTPS\n    tls: {mode: Terminate, certificateRefs: [{name: shop}]}\n    allowedRoutes: {namespaces: {from: All}}\n",
        "",
    );
    let options = meshgate_proxy::GatewayOptions {
        server: meshgate_proxy::conn::ServerSettings {
            handshake_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        ..Default::default()
    };
    let m = Mesh::start_with(&(yaml + &pki.secrets()), &V123, options).await;
    let e = connect(m.addr(), "unknown.example.com", pki.client(&[b"h2"], &[13], true)).await.unwrap_err();
    assert!(e.to_string().contains("received fatal alert"), "an alert, not a bare close: {e}");
    let e = connect(m.addr(), "api.other.test", pki.client(&[b"h2"], &[13], false)).await;
    assert!(e.is_ok(), "no SNI: the port's first listener: {e:?}");
    // Garbage instead of a ClientHello: closed.
    let mut tcp = TcpStream::connect(m.addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: api.other.test\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "garbage: the connection stays open");
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    // A client that never finishes its handshake is closed at the handshake timeout.
    let started = Instant::now();
    let mut silent = TcpStream::connect(m.addr()).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut [0u8; 64])).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a silent client stays connected: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "closed after {:?}", started.elapsed());
    // Everyone else is still served.
    let stream = connect(m.addr(), "api.other.test", pki.client(&[b"h2"], &[13], true)).await.unwrap();
    assert_eq!(Sender::new(stream).await.get("api.other.test", "/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_under_load_is_served_within_a_second_and_no_request_fails() {
    let pki = Pki::new();
    let m = Arc::new(Mesh::start(&(https_gateway(&["shop"]) + &pki.secrets()), &V123).await);
    let client = pki.client(&[b"h2", b"http/1.1"], &[13], true);
    // An established connection, opened before the swap.
    let mut established = Sender::new(connect(m.addr(), "shop.example.com", client.clone()).await.unwrap()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let renewed = pki.ca.issue(&["shop.example.com"], KeyAlg::Rsa2048, -60, 7200).unwrap();
    let new_der = der(&renewed.0);
    let first_new = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (m, stop, ok, failed, client) = (m.clone(), stop.clone(), ok.clone(), failed.clone(), client.clone());
        let (new_der, first_new) = (new_der.clone(), first_new.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A new connection (a full handshake) per request.
                let r = async {
                    let stream =
                        connect(m.addr(), "shop.example.com", client.clone()).await.map_err(|e| e.to_string())?;
                    if presented(&stream) == new_der {
                        first_new.lock().unwrap().get_or_insert_with(Instant::now);
                    }
                    Sender::new(stream).await.get("shop.example.com", "/").await
                }
                .await;
                match r {
                    Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let yaml = https_gateway(&["shop"])
        + &secret("infra", "shop", &renewed)
        + &secret("infra", "wild", &pki.wild)
        + &secret("infra", "api", &pki.api);
    let swapped = Instant::now();
    assert!(m.reload(&yaml).await.is_some(), "the renewed certificate applies");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(established.get("shop.example.com", "/still").await.unwrap().0, 200, "established connection");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let seen = first_new.lock().unwrap().expect("no handshake got the renewed certificate");
    let took = seen.saturating_duration_since(swapped);
    eprintln!("renewed certificate served {took:?} after the edit; {} requests", ok.load(Ordering::Relaxed));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during the swap");
    assert!(ok.load(Ordering::Relaxed) > 20, "load was applied: {}", ok.load(Ordering::Relaxed));
    let stream = connect(m.addr(), "shop.example.com", client).await.unwrap();
    assert_eq!(presented(&stream), new_der);
}

#[tokio::test]
async fn a_broken_secret_is_reported_and_the_last_good_certificate_stays() {
    let pki = Pki::new();
    let m = Mesh::start(&(https_gateway(&["shop"]) + &pki.secrets()), &V123).await;
    let client = pki.client(&[b"h2"], &[13], true);
    // The key of another certificate: refused, the last good one stays in force.
    let other = pki.ca.issue(&["shop.example.com"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
    let mismatched = (other.0.clone(), pki.shop.1.clone());
    let yaml = https_gateway(&["shop"])
        + &secret("infra", "shop", &mismatched)
        + &secret("infra", "wild", &pki.wild)
        + &secret("infra", "api", &pki.api);
    m.reload(&yaml).await;
    let stream = connect(m.addr(), "shop.example.com", client.clone()).await.unwrap();
    assert_eq!(presented(&stream), der(&pki.shop.0), "the last good certificate stays");
    // What `meshgate validate` and a first load say about it.
    let (_, compiled) = source::load(&[m.dir.path().to_path_buf()]).unwrap();
    let problems: Vec<String> = compiled.problems().map(ToString::to_string).collect();
    let all = problems.join("\n");
    assert!(
        all.contains("spec.listeners[0].tls.certificateRefs[0]")
            && all.contains("Secret infra/shop: the private key in tls.key does not match the certificate in tls.crt"),
        "{all}"
    );
    assert!(all.contains("InvalidCertificateRef"), "{all}");
    // The other listener keeps serving.
    let stream = connect(m.addr(), "api.other.test", client.clone()).await.unwrap();
    assert_eq!(Sender::new(stream).await.get("api.other.test", "/").await.unwrap().0, 200);

    // An expired certificate, a Secret of the wrong type, one missing tls.key.
    let expired = pki.ca.issue(&["shop.example.com"], KeyAlg::EcdsaP256, -7200, -60).unwrap();
    let cases = [
        (secret("infra", "shop", &expired), "the certificate expired"),
        (secret("infra", "shop", &pki.shop).replace("kubernetes.io/tls", "Opaque"), "is of type \"Opaque\""),
    ];
    for (shop, says) in cases {
        let dir = meshgate_testkit::TempDir::new("meshgate-https");
        let gw = https_gateway(&["shop"]).replace("{port}", "18443");
        dir.write("all.yaml", &(gw + &shop + &secret("infra", "api", &pki.api)));
        let (_, compiled) = source::load(&[dir.path().to_path_buf()]).unwrap();
        let all: Vec<String> = compiled.problems().map(ToString::to_string).collect();
        assert!(all.iter().any(|p| p.contains(says)), "{says}: {all:?}");
        assert!(all.iter().any(|p| p.contains("no usable certificate; not served")), "{all:?}");
        let ports = &compiled.config.ports;
        assert_eq!(ports[&18443].listeners.len(), 1, "the api listener alone is served");
    }
}

#[tokio::test]
async fn a_secret_in_another_namespace_needs_a_reference_grant() {
    let pki = Pki::new();
    let certs = secret("certs", "shop", &pki.shop)
        + &secret("infra", "api", &pki.api)
        + &crate::harness::service_yaml("infra", "infra-backend-v1", "127.0.0.1:9".parse().unwrap(), None);
    let dir = meshgate_testkit::TempDir::new("meshgate-https");
    let gw = https_gateway(&["certs/shop"]).replace("{port}", "18443");
    dir.write("all.yaml", &(gw.clone() + &certs));
    let (_, compiled) = source::load(&[dir.path().to_path_buf()]).unwrap();
    let all: Vec<String> = compiled.problems().map(ToString::to_string).collect();
    assert!(
        all.iter().any(|p| p.contains("RefNotPermitted") && p.contains("no ReferenceGrant in namespace certs")),
        "{all:?}"
    );
    let grant = "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: gw-certs, namespace: certs}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]\n  to: [{group: \"\", kind: Secret}]\n";
    dir.write("all.yaml", &(gw + &certs + grant));
    let (_, compiled) = source::load(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(
        compiled.problems().count(),
        0,
        "{:?}",
        compiled.problems().map(ToString::to_string).collect::<Vec<_>>()
    );
    assert_eq!(compiled.config.ports[&18443].listeners.len(), 2);
}

/// A ClientHello offering TLS 1.1 only (legacy_version 3.2, no supported_versions extension,
/// one CBC suite, SNI shop.example.com).
fn tls11_client_hello() -> Vec<u8> {
    let name = b"shop.example.com";
    let mut sni = vec![0x00, 0x00]; // server_name extension
    let list_len = name.len() + 3;
    sni.extend(((list_len + 2) as u16).to_be_bytes());
    sni.extend((list_len as u16).to_be_bytes());
    sni.push(0); // host_name
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    let mut body = vec![0x03, 0x02];
    body.extend([7u8; 32]); // random
    body.push(0); // session id
    body.extend([0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend([0x01, 0x00]); // null compression
    body.extend((sni.len() as u16).to_be_bytes());
    body.extend(sni);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}

#[tokio::test]
async fn old_tls_versions_get_an_alert_and_stalled_handshakes_do_not_crowd_out_others() {
    let pki = Pki::new();
    let options = meshgate_proxy::GatewayOptions {
        server: meshgate_proxy::conn::ServerSettings {
            handshake_timeout: Duration::from_millis(500),
            ..Default::default()
        },
        ..Default::default()
    };
    let m = Mesh::start_with(&(https_gateway(&["shop"]) + &pki.secrets()), &V123, options).await;
    // TLS 1.1 only: a fatal alert record, then the close.
    let mut tcp = TcpStream::connect(m.addr()).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut answer)).await;
    assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:?}");
    assert_eq!(answer.get(5), Some(&2), "fatal: {answer:?}");
    // 300 clients that start a handshake and stall (half a ClientHello), at once.
    let hello = tls11_client_hello();
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(m.addr()).await.unwrap();
        s.write_all(&hello[..20]).await.unwrap();
        stalled.push(s);
    }
    // Everyone else is served meanwhile.
    let started = Instant::now();
    let stream = connect(m.addr(), "shop.example.com", pki.client(&[b"h2"], &[13], true)).await.unwrap();
    assert_eq!(Sender::new(stream).await.get("shop.example.com", "/").await.unwrap().0, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "served after {:?}", started.elapsed());
    // And the stalled ones are closed at the handshake timeout.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut closed = 0;
    for s in &mut stalled {
        let mut buf = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 300, "stalled handshakes still open");
}
