#![allow(clippy::unwrap_used)]

use std::time::SystemTime;

use super::*;
use crate::testing::{EdgeCa, KeyAlg};

fn issue(names: &[&str], alg: KeyAlg, from: i64, to: i64) -> (String, String) {
    EdgeCa::new().unwrap().issue(names, alg, from, to).unwrap()
}

#[test]
fn ecdsa_and_rsa_certificates_load_with_their_names() {
    for (alg, kind) in [(KeyAlg::EcdsaP256, "ECDSA"), (KeyAlg::Rsa2048, "RSA")] {
        let (crt, key) = issue(&["shop.example.com", "*.api.example.com"], alg, -60, 3600);
        let c = EdgeCert::from_pem("web/shop", crt.as_bytes(), key.as_bytes(), SystemTime::now()).unwrap();
        assert_eq!(c.key_type, kind);
        assert_eq!(c.names, ["shop.example.com", "*.api.example.com"]);
        assert!(c.covers("shop.example.com"));
        assert!(c.covers("v1.api.example.com"));
        assert!(!c.covers("api.example.com"), "a wildcard does not cover its own base");
        assert!(!c.covers("a.b.api.example.com"), "a wildcard covers one label only");
        assert!(c.names_exactly("shop.example.com") && !c.names_exactly("v1.api.example.com"));
        assert_eq!(&*c.secret, "web/shop");
        assert_eq!(c.server_config().alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}

#[test]
fn broken_secrets_are_refused_saying_why() {
    let (crt, key) = issue(&["a.example.com"], KeyAlg::EcdsaP256, -60, 3600);
    let (_, other_key) = issue(&["a.example.com"], KeyAlg::EcdsaP256, -60, 3600);
    let now = SystemTime::now();
    let load = |c: &str, k: &str| EdgeCert::from_pem("ns/s", c.as_bytes(), k.as_bytes(), now).map(|_| ());
    assert_eq!(load(&crt, &other_key), Err(EdgeCertError::KeyMismatch));
    assert_eq!(load("", &key), Err(EdgeCertError::NoCertificate));
    assert_eq!(load(&key, &key), Err(EdgeCertError::NoCertificate), "a key is not a certificate");
    assert_eq!(load(&crt, &crt), Err(EdgeCertError::NoKey));
    let garbled = crt.replace("MI", "M!");
    assert!(matches!(load(&garbled, &key), Err(EdgeCertError::BadCertificate(_))), "{:?}", load(&garbled, &key));
    let (old, old_key) = issue(&["a.example.com"], KeyAlg::EcdsaP256, -7200, -3600);
    let e = load(&old, &old_key).unwrap_err();
    assert!(matches!(e, EdgeCertError::Expired(_)), "{e}");
    assert!(e.to_string().starts_with("the certificate expired "), "{e}");
    let (early, early_key) = issue(&["a.example.com"], KeyAlg::Rsa2048, 3600, 7200);
    assert!(matches!(load(&early, &early_key), Err(EdgeCertError::NotYetValid(_))));
}
