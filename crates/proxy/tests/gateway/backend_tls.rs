//! BackendTLSPolicy: the gateway originates TLS to a Service outside the mesh, verifying the
//! server's certificate against the CA of a ConfigMap as the policy's hostname (sent as SNI).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::SystemTime;

use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_tls::edge::EdgeCert;
use meshgate_tls::testing::{EdgeCa, KeyAlg};

use crate::harness::{Mesh, gateway, route_to, service_yaml};

/// An HTTPS server answering `tls sni=NAME alpn=PROTO` with the name and protocol its clients
/// asked for.
async fn tls_backend(cert: EdgeCert) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let (_, conn) = tls.get_ref();
                let sni = conn.server_name().unwrap_or("-").to_string();
                let alpn = conn.alpn_protocol().map_or("-".into(), |p| String::from_utf8_lossy(p).into_owned());
                let svc = hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let body = format!("tls sni={sni} alpn={alpn}");
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(bytes::Bytes::from(body)))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn policy(hostname: &str, ca_ref: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: secure, namespace: infra}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: external}}]\n  validation:\n    hostname: {hostname}\n    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: {ca_ref}}}]\n"
    )
}

fn ca_config_map(ca: &EdgeCa) -> String {
    let pem: String = ca.root_pem().lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: backend-ca, namespace: infra}}\ndata:\n  ca.crt: |\n{pem}"
    )
}

async fn lab(hostname: &str, ca_ref: &str) -> (Mesh, EdgeCa) {
    let ca = EdgeCa::new().unwrap();
    let (crt, key) = ca.issue(&["api.partner.example"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
    let cert = EdgeCert::from_pem("test/backend", crt.as_bytes(), key.as_bytes(), SystemTime::now()).unwrap();
    let addr = tls_backend(cert).await;
    let yaml = gateway("gw")
        + &route_to("external", "")
        + &service_yaml("infra", "external", addr, None)
        + &ca_config_map(&ca)
        + &policy(hostname, ca_ref);
    (Mesh::start_raw(&yaml).await, ca)
}

#[tokio::test]
async fn the_gateway_originates_tls_verified_against_the_policy_ca_and_hostname() {
    let (m, _ca) = lab("api.partner.example", "backend-ca").await;
    for _ in 0..3 {
        let r = m.get("shop.example.com", "/").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "tls sni=api.partner.example alpn=http/1.1");
    }
}

#[tokio::test]
async fn a_backend_whose_certificate_does_not_match_the_policy_is_not_trusted() {
    let (m, _ca) = lab("other.partner.example", "backend-ca").await;
    let r = m.get("shop.example.com", "/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("BackendTLSPolicy infra/secure, verifying other.partner.example"), "{}", r.text());
    let flags = r.header("x-meshgate-flags").unwrap_or_default();
    assert!(flags.split(',').any(|f| f == "UF"), "a connect failure, retried: {flags}");
}

#[tokio::test]
async fn a_policy_whose_ca_is_missing_is_reported_and_its_backend_not_used_in_plaintext() {
    let (m, _ca) = lab("api.partner.example", "nowhere").await;
    let r = m.get("shop.example.com", "/").await;
    assert_eq!(r.status, 500, "{}", r.text());
    let (_, compiled) = meshgate_proxy::source::load(&[m.dir.path().to_path_buf()]).unwrap();
    let all: Vec<String> = compiled.problems().map(ToString::to_string).collect();
    assert!(
        all.iter().any(|p| p.contains("BackendTLSPolicy infra/secure") && p.contains("InvalidCACertificateRef")),
        "{all:?}"
    );
    assert!(all.iter().any(|p| p.contains("HTTPRoute infra/r") && p.contains("InvalidBackendTLSPolicy")), "{all:?}");
}
