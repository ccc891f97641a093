//! HTTPS certificates through the control plane: a tls Secret applied to the store reaches
//! the managed gateway, an edited one is served to new handshakes within a second, and one
//! that no longer loads leaves the last good certificate in force.

use std::time::{Duration, Instant};

use meshgate_testkit::{EchoServer, free_port};
use meshgate_tls::testing::{EdgeCa, KeyAlg};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::harness::{Cp, config, gateway, ports, tmp, wait_config};

fn secret((crt, key): &(String, String)) -> String {
    let indent = |pem: &str| pem.trim_end().lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: shop, namespace: infra}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(crt),
        indent(key)
    )
}

fn https(port: u16, tls_port: u16, app: std::net::SocketAddr) -> String {
    config(port, app, "v1").replace(
        "listeners: [{name: http, port: ",
        &format!("listeners: [{{name: https, port: {tls_port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: shop}}]}}}}, {{name: http, port: "),
    )
}

/// The certificate a new handshake for shop.example.com gets.
async fn presented(port: u16, ca: &EdgeCa) -> Option<CertificateDer<'static>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(ca.client(&[b"http/1.1"], &[13]).ok()?);
    let tls = connector.connect(ServerName::try_from("shop.example.com").ok()?, tcp).await.ok()?;
    Some(tls.get_ref().1.peer_certificates()?[0].clone().into_owned())
}

async fn wait_for(port: u16, ca: &EdgeCa, want: &CertificateDer<'static>) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if presented(port, ca).await.as_ref() == Some(want) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the certificate never arrived on port {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_secret_edited_in_the_control_plane_is_served_within_a_second() {
    let dir = tmp();
    let (g, h) = ports();
    let cp =
        Cp::start(&format!("dir:{}", dir.path().join("store").display()), &dir.path().join("state"), g, h, "a").await;
    let app = EchoServer::start("app").await;
    let (port, tls_port) = (free_port(), free_port());
    let ca = EdgeCa::new().unwrap();
    let first = ca.issue(&["shop.example.com"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
    cp.apply(&(https(port, tls_port, app.addr) + &secret(&first))).await;
    let _gw = gateway(&cp, cp.target()).await;
    wait_config(port, "v1").await;
    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    wait_for(tls_port, &ca, &der(&first.0)).await;

    let renewed = ca.issue(&["shop.example.com"], KeyAlg::Rsa2048, -60, 7200).unwrap();
    let edited = Instant::now();
    cp.apply(&secret(&renewed)).await;
    wait_for(tls_port, &ca, &der(&renewed.0)).await;
    let took = edited.elapsed();
    eprintln!("renewed certificate served {took:?} after the apply");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // A key that is not the certificate's: the renewed certificate stays in force.
    let other = ca.issue(&["shop.example.com"], KeyAlg::EcdsaP256, -60, 3600).unwrap();
    cp.apply(&secret(&(other.0, renewed.1.clone()))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(presented(tls_port, &ca).await, Some(der(&renewed.0)), "the last good certificate stays");
    // And the control plane's status says so, as the gateway serves it.
    let (_, s) = cp.call(http::Method::GET, "/api/v1/status", "").await;
    let said: Vec<String> = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["object"]["name"] == "gw" && c["status"] == false)
        .map(|c| c["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        said.iter().any(|m| m.contains("does not match the certificate") && m.contains("stays in force")),
        "{said:?}"
    );
    assert!(!said.iter().any(|m| m.contains("not served")), "the control plane says the listener is down: {said:?}");
}
