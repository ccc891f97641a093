use std::sync::Arc;

use tokio_rustls::rustls;

use super::*;

/// A real ClientHello, as rustls writes it, for `name` offering `alpn`.
fn client_hello_bytes(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let mut config = rustls::ClientConfig::builder_with_provider(meshgate_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let server = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
fn a_real_client_hello_gives_its_sni_and_alpn_once_whole() {
    let bytes = client_hello_bytes("Shop.Example.com", &[b"h2", b"http/1.1"]);
    assert!(bytes.len() > 200, "post-quantum key shares make it big: {}", bytes.len());
    match classify(&bytes) {
        Verdict::Known(Detected::Tls(hello)) => {
            assert_eq!(hello.sni.as_deref(), Some("shop.example.com"));
            assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        }
        other => panic!("{other:?}"),
    }
    // In pieces, it waits for the rest of the record.
    for cut in [1, 3, 5, 40, bytes.len() - 1] {
        assert_eq!(classify(&bytes[..cut]), Verdict::NeedMore, "cut at {cut}");
    }
    // An address has no SNI.
    let by_ip = client_hello_bytes("10.0.0.1", &[]);
    assert_eq!(classify(&by_ip), Verdict::Known(Detected::Tls(ClientHello { sni: None, alpn: vec![] })));
}

#[test]
fn http_and_the_h2_preface() {
    assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Verdict::Known(Detected::Http1));
    assert_eq!(classify(b"CONNECT a:443 HTTP/1.1\r\n"), Verdict::Known(Detected::Http1));
    assert_eq!(classify(b"GE"), Verdict::NeedMore);
    assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Verdict::Known(Detected::Http2));
    assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Verdict::Known(Detected::Http2));
    assert_eq!(classify(b"PRI * HT"), Verdict::NeedMore);
    // What the inbound proxy's sniffer used to be asked (its test, kept).
    assert_eq!(classify(b"GET / HTTP/1.1"), Verdict::Known(Detected::Http1));
    assert_eq!(classify(b"\x16\x03\x01"), Verdict::NeedMore, "TLS: waits for the record");
    assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Verdict::Known(Detected::Opaque));
    assert_eq!(classify(b"hello\n"), Verdict::Known(Detected::Opaque));
    assert_eq!(classify(b""), Verdict::NeedMore);
}

#[test]
fn proxy_protocol_v1_and_v2() {
    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
    let Verdict::Known(Detected::Proxy(h)) = classify(v1) else { panic!("{:?}", classify(v1)) };
    assert_eq!((h.version, h.len), (1, 43), "the header with its CRLF");
    assert_eq!(h.source, Some("203.0.113.7:51234".parse().unwrap()));
    assert_eq!(h.destination, Some("10.0.0.1:443".parse().unwrap()));
    assert_eq!(classify(b"PROXY TCP4 203.0.113.7"), Verdict::NeedMore);
    assert_eq!(
        classify(b"PROXY UNKNOWN\r\n"),
        Verdict::Known(Detected::Proxy(ProxyHeader { version: 1, len: 15, source: None, destination: None }))
    );
    assert_eq!(classify(b"PROXY TCP4 ::1 10.0.0.1 1 2\r\n"), Verdict::Known(Detected::Opaque), "family mismatch");
    assert_eq!(classify(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n"), Verdict::Known(Detected::Opaque), "bad port");
    let mut long = b"PROXY TCP4 ".to_vec();
    long.extend(std::iter::repeat_n(b'1', 120));
    assert_eq!(classify(&long), Verdict::Known(Detected::Opaque), "longer than 107 bytes");

    let mut v2 = PROXY_V2_SIGNATURE.to_vec();
    v2.extend([0x21, 0x11, 0, 12]); // PROXY, TCP over IPv4, 12 bytes
    v2.extend([203, 0, 113, 7, 10, 0, 0, 1]);
    v2.extend(51234u16.to_be_bytes());
    v2.extend(443u16.to_be_bytes());
    v2.extend(b"GET");
    let Verdict::Known(Detected::Proxy(h)) = classify(&v2) else { panic!("{:?}", classify(&v2)) };
    assert_eq!((h.version, h.len), (2, 28));
    assert_eq!(h.source, Some("203.0.113.7:51234".parse().unwrap()));
    assert_eq!(h.destination, Some("10.0.0.1:443".parse().unwrap()));
    assert_eq!(classify(&v2[..20]), Verdict::NeedMore);
    let mut local = PROXY_V2_SIGNATURE.to_vec();
    local.extend([0x20, 0x00, 0, 0]);
    assert_eq!(
        classify(&local),
        Verdict::Known(Detected::Proxy(ProxyHeader { version: 2, len: 16, source: None, destination: None }))
    );
    let mut bad = PROXY_V2_SIGNATURE.to_vec();
    bad.extend([0x31, 0x11, 0, 0]);
    assert_eq!(classify(&bad), Verdict::Known(Detected::Opaque), "version 3");
}

#[test]
fn malformed_client_hellos_are_tls_never_a_panic() {
    let good = client_hello_bytes("a.example", &[b"h2"]);
    // Every truncation of the body behind a header that claims it whole, and random bytes
    // behind a TLS record header.
    for cut in 6..good.len() {
        let mut b = good[..cut].to_vec();
        let len = u16::try_from(cut - 5).unwrap().to_be_bytes();
        b[3] = len[0];
        b[4] = len[1];
        let _ = classify(&b);
    }
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20_000 {
        let n = rng.usize(0..600);
        let mut b: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
        if rng.bool() && !b.is_empty() {
            b[0] = 0x16;
        }
        if rng.bool() && b.len() > 5 {
            b[1] = 3;
            let len = u16::try_from(b.len() - 5).unwrap().to_be_bytes();
            b[3] = len[0];
            b[4] = len[1];
        }
        let _ = classify(&b);
    }
    // Still TLS: the handshake refuses it (never forwarded as plaintext).
    let unknown = Verdict::Known(Detected::Tls(ClientHello::default()));
    assert_eq!(classify(&[0x16, 3, 1, 0, 0]), unknown, "an empty record");
    assert_eq!(classify(&[0x16, 9, 9, 0, 1, 1]), unknown, "not TLS 1.x");
    assert_eq!(classify(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5]), unknown, "garbage in a record");
}

#[tokio::test]
async fn detection_waits_for_slow_bytes_and_gives_up_at_the_timeout() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hello = client_hello_bytes("slow.example", &[b"h2"]);
    let client = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        for chunk in hello.chunks(100) {
            s.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let (server, _) = listener.accept().await.unwrap();
    match detect(&server, Duration::from_secs(5)).await {
        Detected::Tls(h) => assert_eq!(h.sni.as_deref(), Some("slow.example")),
        other => panic!("{other:?}"),
    }
    client.await.unwrap();
    // A handshake that stalls after its first bytes is still TLS at the timeout.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 3, 1]).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    assert_eq!(detect(&server, Duration::from_millis(100)).await, Detected::Tls(ClientHello::default()));
    // A client that says nothing: opaque at the timeout.
    let _silent = TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(detect(&server, Duration::from_millis(150)).await, Detected::Opaque);
    assert!(started.elapsed() >= Duration::from_millis(140));
}
