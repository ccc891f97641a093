//! Every MUST of the SPIFFE X509-SVID standard (§2–5) and of the SPIFFE ID standard (§2) that a
//! validator checks, each as its own test: a client presenting a leaf that breaks exactly that
//! rule, signed by the mesh's own root, is refused in a real TLS handshake with the inbound
//! proxy, and the verifier names that rule as the reason. A well-formed leaf, the control, is
//! served.

use std::net::SocketAddr;
use std::time::SystemTime;

use meshgate_identity::TrustDomain;
use meshgate_model::security::InboundPolicy;
use meshgate_proxy::roles::inbound::{AppTarget, Inbound, InboundOptions};
use meshgate_testkit::EchoServer;
use meshgate_tls::testing::{LeafSpec, Purpose, TestCa, Usage, client_presenting};
use meshgate_tls::{MeshTls, SvidError, validate_svid};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GOOD: &str = "spiffe://cluster.local/ns/shop/sa/order";

/// An inbound proxy for `shop/inventory` with an SVID from `ca`, in front of an echo app.
struct Server {
    addr: SocketAddr,
    _app: EchoServer,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(ca: &TestCa) -> Server {
    let app = EchoServer::start("inventory").await;
    let id = TrustDomain::new("cluster.local").unwrap().workload_id("shop", "inventory").unwrap();
    let tls = std::sync::Arc::new(MeshTls::new(ca.svid(&id).unwrap(), ca.bundle()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = InboundOptions { workload: "shop/inventory".into(), ..InboundOptions::default() };
    let inbound = Inbound::new(AppTarget::Fixed(app.addr), Some(tls), InboundPolicy::default(), opts);
    Server { addr, _app: app, task: tokio::spawn(inbound.serve(listener)) }
}

/// A request over mTLS presenting `chain`: the answer, or why there was none.
async fn request(
    addr: SocketAddr,
    ca: &TestCa,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<String, String> {
    let config = client_presenting(chain, key, ca.bundle(), &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    let mut tls = match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(format!("handshake: {e}")),
        Err(_) => return Err("handshake timed out".into()),
    };
    // In TLS 1.3 the server checks the client's certificate after the client's side of the
    // handshake is done: a refusal arrives as an alert on the first read.
    tls.write_all(b"GET / HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    match tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_string(&mut answer)).await {
        Ok(Ok(_)) if !answer.is_empty() => Ok(answer),
        Ok(Ok(_)) => Err("closed without an answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// Presents the leaf `spec` describes (signed by the server's own root) and checks that the
/// handshake is refused and the verifier's reason is `expected`.
async fn refused(spec: LeafSpec, expected: fn(&SvidError) -> bool) {
    let ca = TestCa::new("cluster.local").unwrap();
    refused_by(&ca, &ca, spec, expected).await;
}

async fn refused_by(server_ca: &TestCa, signer: &TestCa, spec: LeafSpec, expected: fn(&SvidError) -> bool) {
    let s = server(server_ca).await;
    let (chain, key) = signer.leaf(&spec).unwrap();
    let why = validate_svid(&chain, &server_ca.bundle(), SystemTime::now(), false)
        .expect_err("the verifier accepted a leaf that breaks the standard");
    assert!(expected(&why), "refused for another reason: {why}");
    match request(s.addr, server_ca, chain, key).await {
        Ok(answer) => panic!("the inbound served a leaf that breaks the standard ({why}):\n{answer}"),
        Err(e) => assert!(e.contains("alert") || e.contains("closed") || e.contains("reset"), "{e}"),
    }
}

fn with_uri(uri: &str) -> LeafSpec {
    LeafSpec { uris: vec![uri.to_string()], ..LeafSpec::svid(GOOD) }
}

fn not_spiffe(e: &SvidError) -> bool {
    matches!(e, SvidError::NotSpiffe(_))
}

#[tokio::test]
async fn control_a_well_formed_svid_is_served_and_named_to_the_app() {
    let ca = TestCa::new("cluster.local").unwrap();
    let s = server(&ca).await;
    let (chain, key) = ca.leaf(&LeafSpec::svid(GOOD)).unwrap();
    let id = validate_svid(&chain, &ca.bundle(), SystemTime::now(), false).unwrap();
    assert_eq!(id.as_str(), GOOD);
    let answer = request(s.addr, &ca, chain, key).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("URI={GOOD}")), "the app was not told who called: {answer}");
    // An EKU is optional (SHOULD): a leaf without one is served too.
    let (chain, key) = ca.leaf(&LeafSpec { eku: None, ..LeafSpec::svid(GOOD) }).unwrap();
    assert!(request(s.addr, &ca, chain, key).await.unwrap().starts_with("HTTP/1.1 200"));
}

// X509-SVID §2: exactly one URI SAN.
#[tokio::test]
async fn x509_svid_2_no_uri_san() {
    let spec = LeafSpec { uris: vec![], dns: vec!["order.shop".into()], ..LeafSpec::svid(GOOD) };
    refused(spec, |e| matches!(e, SvidError::NoUriSan)).await;
}

#[tokio::test]
async fn x509_svid_2_two_uri_sans() {
    let spec =
        LeafSpec { uris: vec![GOOD.into(), "spiffe://cluster.local/ns/shop/sa/admin".into()], ..LeafSpec::svid(GOOD) };
    refused(spec, |e| matches!(e, SvidError::MultipleUriSans(2))).await;
}

// X509-SVID §4.1 and §5.2: a leaf is not a CA.
#[tokio::test]
async fn x509_svid_4_1_leaf_with_ca_true() {
    refused(LeafSpec { ca: true, ..LeafSpec::svid(GOOD) }, |e| matches!(e, SvidError::CaAsLeaf)).await;
}

// X509-SVID §4.3: key usage present, critical, digitalSignature, never keyCertSign or cRLSign.
#[tokio::test]
async fn x509_svid_4_3_no_key_usage() {
    refused(LeafSpec { key_usage: None, ..LeafSpec::svid(GOOD) }, |e| matches!(e, SvidError::NoKeyUsage)).await;
}

#[tokio::test]
async fn x509_svid_4_3_key_usage_not_critical() {
    let spec = LeafSpec { key_usage: Some((false, vec![Usage::DigitalSignature])), ..LeafSpec::svid(GOOD) };
    refused(spec, |e| matches!(e, SvidError::KeyUsageNotCritical)).await;
}

#[tokio::test]
async fn x509_svid_4_3_no_digital_signature() {
    let spec = LeafSpec { key_usage: Some((true, vec![Usage::KeyEncipherment])), ..LeafSpec::svid(GOOD) };
    refused(spec, |e| matches!(e, SvidError::NoDigitalSignature)).await;
}

#[tokio::test]
async fn x509_svid_4_3_key_cert_sign() {
    let spec =
        LeafSpec { key_usage: Some((true, vec![Usage::DigitalSignature, Usage::KeyCertSign])), ..LeafSpec::svid(GOOD) };
    refused(spec, |e| matches!(e, SvidError::SigningKeyUsage("keyCertSign"))).await;
}

#[tokio::test]
async fn x509_svid_4_3_crl_sign() {
    let spec =
        LeafSpec { key_usage: Some((true, vec![Usage::DigitalSignature, Usage::CrlSign])), ..LeafSpec::svid(GOOD) };
    refused(spec, |e| matches!(e, SvidError::SigningKeyUsage("cRLSign"))).await;
}

// X509-SVID §4.4: an extended key usage, when present, has serverAuth and clientAuth.
#[tokio::test]
async fn x509_svid_4_4_eku_without_client_auth() {
    let spec = LeafSpec { eku: Some(vec![Purpose::ServerAuth]), ..LeafSpec::svid(GOOD) };
    refused(spec, |e| matches!(e, SvidError::ExtendedKeyUsage("clientAuth"))).await;
}

#[tokio::test]
async fn x509_svid_4_4_eku_without_server_auth() {
    let spec = LeafSpec { eku: Some(vec![Purpose::ClientAuth]), ..LeafSpec::svid(GOOD) };
    refused(spec, |e| matches!(e, SvidError::ExtendedKeyUsage("serverAuth"))).await;
}

// X509-SVID §5.2: the SPIFFE ID of a leaf has a path (the case: the trust domain's own
// ID was accepted).
#[tokio::test]
async fn x509_svid_5_2_trust_domain_id_without_path() {
    refused(with_uri("spiffe://cluster.local"), |e| matches!(e, SvidError::NoPath(_))).await;
}

// X509-SVID §5 (path validation): within its validity, chained to a root of the bundle of its
// own trust domain.
#[tokio::test]
async fn x509_svid_5_expired() {
    refused(LeafSpec { not_before: -7200, not_after: -60, ..LeafSpec::svid(GOOD) }, |e| {
        matches!(e, SvidError::Expired(_))
    })
    .await;
}

#[tokio::test]
async fn x509_svid_5_not_yet_valid() {
    let spec = LeafSpec { not_before: 3600, not_after: 7200, ..LeafSpec::svid(GOOD) };
    refused(spec, |e| matches!(e, SvidError::NotYetValid(_))).await;
}

#[tokio::test]
async fn x509_svid_5_trust_domain_not_the_bundles() {
    refused(with_uri("spiffe://other.example/ns/shop/sa/order"), |e| matches!(e, SvidError::WrongTrustDomain { .. }))
        .await;
}

#[tokio::test]
async fn x509_svid_5_signed_by_another_root() {
    let ours = TestCa::new("cluster.local").unwrap();
    let theirs = TestCa::new("cluster.local").unwrap();
    refused_by(&ours, &theirs, LeafSpec::svid(GOOD), |e| matches!(e, SvidError::UnknownIssuer(_))).await;
}

// SPIFFE ID §2: scheme, trust domain, path.
#[tokio::test]
async fn spiffe_id_2_scheme_is_spiffe() {
    refused(with_uri("https://cluster.local/ns/shop/sa/order"), not_spiffe).await;
}

#[tokio::test]
async fn spiffe_id_2_scheme_is_lower_case() {
    refused(with_uri("SPIFFE://cluster.local/ns/shop/sa/order"), not_spiffe).await;
}

#[tokio::test]
async fn spiffe_id_2_1_trust_domain_is_lower_case() {
    refused(with_uri("spiffe://Cluster.Local/ns/shop/sa/order"), not_spiffe).await;
}

#[tokio::test]
async fn spiffe_id_2_1_no_port_or_user_info() {
    refused(with_uri("spiffe://cluster.local:8443/ns/shop/sa/order"), not_spiffe).await;
    refused(with_uri("spiffe://admin@cluster.local/ns/shop/sa/order"), not_spiffe).await;
}

#[tokio::test]
async fn spiffe_id_2_2_no_empty_segment_or_trailing_slash() {
    refused(with_uri("spiffe://cluster.local/ns//sa/order"), not_spiffe).await;
    refused(with_uri("spiffe://cluster.local/ns/shop/sa/order/"), not_spiffe).await;
}

#[tokio::test]
async fn spiffe_id_2_2_no_dot_segments() {
    refused(with_uri("spiffe://cluster.local/ns/./sa/order"), not_spiffe).await;
    refused(with_uri("spiffe://cluster.local/ns/shop/../admin"), not_spiffe).await;
}

#[tokio::test]
async fn spiffe_id_2_2_no_percent_encoding() {
    refused(with_uri("spiffe://cluster.local/ns/shop/sa/or%64er"), not_spiffe).await;
}

#[tokio::test]
async fn spiffe_id_2_no_query_or_fragment() {
    refused(with_uri("spiffe://cluster.local/ns/shop/sa/order?x=1"), not_spiffe).await;
    refused(with_uri("spiffe://cluster.local/ns/shop/sa/order#f"), not_spiffe).await;
}
