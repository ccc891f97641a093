use std::time::{Duration, SystemTime};

use meshgate_identity::{SpiffeId, TrustDomain};
use rcgen::{CertificateParams, DistinguishedName, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::*;

use super::*;
use crate::svid::SvidRequest;
use crate::verify::{SvidError, validate_svid};

fn td() -> TrustDomain {
    TrustDomain::new("mesh.test").unwrap()
}

fn id(sa: &str) -> SpiffeId {
    td().workload_id("shop", sa).unwrap()
}

fn ca() -> CertificateAuthority {
    CertificateAuthority::self_signed(td(), Duration::from_secs(3600)).unwrap()
}

#[test]
fn issued_svids_follow_the_spiffe_standard() {
    let ca = ca();
    let req = SvidRequest::new(&id("inventory")).unwrap();
    let chain = ca.sign(&req.csr, &id("inventory"), Some(Duration::from_secs(120))).unwrap();
    let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<_> = san.value.general_names.iter().collect();
    assert_eq!(uris.len(), 1);
    assert!(matches!(uris[0], GeneralName::URI("spiffe://mesh.test/ns/shop/sa/inventory")));
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical, "key usage is critical");
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(life, 180, "two minutes plus a minute of backdating");
    let svid = req.complete(chain).unwrap();
    assert_eq!(svid.id, id("inventory"));
    let now = SystemTime::now();
    assert_eq!(validate_svid(&svid.chain, &ca.bundle(), now, true).unwrap(), id("inventory"));
    assert_eq!(validate_svid(&svid.chain, &ca.bundle(), now, false).unwrap(), id("inventory"));
}

#[test]
fn bad_csrs_are_refused() {
    let ca = ca();
    let err = |csr: &[u8], who: &SpiffeId| ca.sign(csr, who, None).unwrap_err().to_string();
    assert!(err(b"garbage", &id("a")).starts_with("invalid CSR"));
    let good = SvidRequest::new(&id("a")).unwrap().csr;
    assert!(err(&good[..good.len() / 2], &id("a")).starts_with("invalid CSR"));
    let mut tampered = good.clone();
    let n = tampered.len();
    tampered[n - 5] ^= 0xff;
    assert_eq!(err(&tampered, &id("a")), "the CSR's signature does not verify");
    assert!(err(&good, &id("b")).contains(
        "CSR asks for spiffe://mesh.test/ns/shop/sa/a, but the requester may only have spiffe://mesh.test/ns/shop/sa/b"
    ));
    // Extra SANs.
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names =
        vec![SanType::URI(id("a").as_str().try_into().unwrap()), SanType::DnsName("evil.example".try_into().unwrap())];
    let csr = p.serialize_request(&key).unwrap();
    assert!(err(csr.der(), &id("a")).starts_with("CSR asks for extra subject alternative names"));
    // CA=true.
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(id("a").as_str().try_into().unwrap())];
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = p.serialize_request(&key).unwrap();
    assert!(err(csr.der(), &id("a")).contains("CA certificate"));
    // Lifetimes.
    assert!(ca.sign(&good, &id("a"), Some(Duration::from_secs(10))).unwrap_err().to_string().contains("out of range"));
    // Another trust domain.
    let other = SpiffeId::parse("spiffe://other.test/ns/shop/sa/a").unwrap();
    assert!(ca.sign(&good, &other, None).is_err());
}

/// Builds a leaf by hand with whatever properties a test needs.
fn forge(
    issuer: (&CertificateDer<'static>, &KeyPair),
    tweak: impl FnOnce(&mut CertificateParams),
) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(id("web").as_str().try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = ::time::OffsetDateTime::now_utc();
    p.not_before = now - ::time::Duration::hours(1);
    p.not_after = now + ::time::Duration::hours(1);
    tweak(&mut p);
    let issuer = Issuer::from_ca_cert_der(issuer.0, issuer.1).unwrap();
    p.signed_by(&key, &issuer).unwrap().der().clone()
}

#[test]
fn the_verifier_refuses_each_broken_svid_with_its_reason() {
    let ca = ca();
    let root = ca.bundle().roots[0].clone();
    let signer = (&root, &ca.signer_key);
    let other = CertificateAuthority::self_signed(td(), Duration::from_secs(3600)).unwrap();
    let other_root = other.bundle().roots[0].clone();
    let now = SystemTime::now();
    let check = |leaf: CertificateDer<'static>| validate_svid(&[leaf], &ca.bundle(), now, true);
    let uri = |s: &str| SanType::URI(s.try_into().unwrap());

    assert!(check(forge(signer, |_| {})).is_ok(), "the forge makes good SVIDs by default");
    let cases: Vec<(&str, CertificateDer<'static>, SvidError)> = vec![
        (
            "wrong trust domain",
            forge(signer, |p| p.subject_alt_names = vec![uri("spiffe://other.test/ns/shop/sa/web")]),
            SvidError::WrongTrustDomain { found: "other.test".into(), expected: "mesh.test".into() },
        ),
        (
            "expired",
            forge(signer, |p| {
                p.not_after = ::time::OffsetDateTime::now_utc() - ::time::Duration::minutes(10);
            }),
            SvidError::Expired(600),
        ),
        (
            "not yet valid",
            forge(signer, |p| {
                p.not_before = ::time::OffsetDateTime::now_utc() + ::time::Duration::minutes(10);
            }),
            SvidError::NotYetValid(600),
        ),
        (
            "signed by another CA",
            forge((&other_root, &other.signer_key), |_| {}),
            SvidError::UnknownIssuer("mesh.test".into()),
        ),
        (
            "two URI SANs",
            forge(signer, |p| p.subject_alt_names.push(uri("spiffe://mesh.test/ns/shop/sa/admin"))),
            SvidError::MultipleUriSans(2),
        ),
        (
            "no URI SAN",
            forge(signer, |p| p.subject_alt_names = vec![SanType::DnsName("web.shop".try_into().unwrap())]),
            SvidError::NoUriSan,
        ),
        (
            "CA certificate as leaf",
            forge(signer, |p| p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained)),
            SvidError::CaAsLeaf,
        ),
        (
            "keyCertSign set",
            forge(signer, |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
            SvidError::SigningKeyUsage("keyCertSign"),
        ),
        (
            "non-SPIFFE URI",
            forge(signer, |p| p.subject_alt_names = vec![uri("https://web.shop/")]),
            SvidError::NotSpiffe(String::new()),
        ),
    ];
    for (what, leaf, want) in cases {
        let got = check(leaf).expect_err(what);
        match (&got, &want) {
            (SvidError::Expired(a), SvidError::Expired(b)) | (SvidError::NotYetValid(a), SvidError::NotYetValid(b)) => {
                assert!(a.abs_diff(*b) <= 5, "{what}: {got}")
            }
            (SvidError::NotSpiffe(_), SvidError::NotSpiffe(_)) => {}
            _ => assert_eq!(got, want, "{what}: {got}"),
        }
        assert!(!got.to_string().is_empty());
    }
}

#[test]
fn root_rotation_keeps_both_roots_until_withdrawn() {
    let mut ca = ca();
    let old_req = SvidRequest::new(&id("a")).unwrap();
    let old = old_req.complete(ca.sign(&SvidRequest::new(&id("a")).unwrap().csr, &id("a"), None).unwrap());
    assert!(old.is_err(), "a chain issued for another key is refused");
    let req = SvidRequest::new(&id("a")).unwrap();
    let chain = ca.sign(&req.csr, &id("a"), None).unwrap();
    let old = req.complete(chain).unwrap();
    ca.rotate_root(Duration::from_secs(3600)).unwrap();
    let req = SvidRequest::new(&id("a")).unwrap();
    let chain = ca.sign(&req.csr, &id("a"), None).unwrap();
    let new = req.complete(chain).unwrap();
    let now = SystemTime::now();
    let bundle = ca.bundle();
    assert_eq!(bundle.roots.len(), 2);
    assert!(validate_svid(&old.chain, &bundle, now, true).is_ok(), "old leaves stay valid during rotation");
    assert!(validate_svid(&new.chain, &bundle, now, true).is_ok());
    ca.withdraw_old_roots();
    assert_eq!(
        validate_svid(&old.chain, &ca.bundle(), now, true).unwrap_err(),
        SvidError::UnknownIssuer("mesh.test".into()),
        "a leaf of a withdrawn root is refused"
    );
    assert!(validate_svid(&new.chain, &ca.bundle(), now, true).is_ok());
}

#[test]
fn user_provided_root_and_intermediate() {
    let root = ca();
    let pem = root.to_pem();
    let again = CertificateAuthority::from_pem(td(), &pem.cert, &pem.key, Some(&pem.chain)).unwrap();
    assert_eq!(again.bundle(), root.bundle());
    // An intermediate signed by the root.
    let ikey = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(rcgen::DnType::CommonName, "intermediate");
    let issuer = Issuer::from_ca_cert_der(&root.bundle().roots[0], &root.signer_key).unwrap();
    let icert = p.signed_by(&ikey, &issuer).unwrap();
    assert!(
        CertificateAuthority::from_pem(td(), &icert.pem(), &ikey.serialize_pem(), None).is_err(),
        "needs its chain"
    );
    let inter = CertificateAuthority::from_pem(td(), &icert.pem(), &ikey.serialize_pem(), Some(&pem.cert)).unwrap();
    let req = SvidRequest::new(&id("x")).unwrap();
    let chain = inter.sign(&req.csr, &id("x"), None).unwrap();
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    assert_eq!(inter.signing_root(), Some(&root.bundle().roots[0]), "an intermediate's root is the signing root");
    let svid = req.complete(chain).unwrap();
    assert!(validate_svid(&svid.chain, &root.bundle(), SystemTime::now(), false).is_ok());
    assert!(
        CertificateAuthority::from_pem(
            td(),
            &icert.pem(),
            &KeyPair::generate().unwrap().serialize_pem(),
            Some(&pem.cert)
        )
        .is_err(),
        "key must match"
    );
}

#[test]
fn a_pending_root_survives_persistence_and_steps_refuse_out_of_order() {
    let mut ca = ca();
    let first = ca.signing_root().cloned().unwrap();
    assert!(ca.use_next_root().unwrap_err().to_string().contains("no root is pending"));
    assert!(ca.withdrawable_roots().is_empty(), "nothing to withdraw with one root");
    ca.add_next_root(Duration::from_secs(3600)).unwrap();
    assert!(ca.add_next_root(Duration::from_secs(3600)).unwrap_err().to_string().contains("not signing yet"));
    let pending = ca.pending_root().cloned().unwrap();
    // Through the stored form (another replica, or a restart), the pending root and its key
    // come back: the next step finds them.
    let mut again = CertificateAuthority::from_stored(td(), &ca.to_pem()).unwrap();
    assert_eq!(again.pending_root(), Some(&pending));
    assert_eq!(again.signing_root(), Some(&first));
    assert!(again.withdrawable_roots().is_empty(), "the signing and the pending root both stay");
    again.use_next_root().unwrap();
    let mut again = CertificateAuthority::from_stored(td(), &again.to_pem()).unwrap();
    assert_eq!(again.signing_root(), Some(&pending), "the added root signs");
    assert_eq!(again.pending_root(), None);
    assert_eq!(again.withdrawable_roots(), vec![first.clone()]);
    // Leaves now chain to the new root.
    let req = SvidRequest::new(&id("a")).unwrap();
    let svid = req.complete(again.sign(&SvidRequest::new(&id("a")).unwrap().csr, &id("a"), None).unwrap());
    assert!(svid.is_err());
    let req = SvidRequest::new(&id("a")).unwrap();
    let chain = again.sign(&req.csr, &id("a"), None).unwrap();
    let svid = req.complete(chain).unwrap();
    assert_eq!(crate::issuing_root(&svid.chain, &again.bundle()), Some(&pending));
    again.withdraw_old_roots();
    assert_eq!(again.bundle().roots, vec![pending.clone()]);
    assert_eq!(again.signing_root(), Some(&pending), "the signing root is never withdrawn");
    // A pending root whose key is not its own is refused on load.
    let mut pem = ca.to_pem();
    if let Some((_, key)) = &mut pem.next {
        *key = KeyPair::generate().unwrap().serialize_pem();
    }
    assert!(CertificateAuthority::from_stored(td(), &pem).unwrap_err().to_string().contains("does not match"));
}
