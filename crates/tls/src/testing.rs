//! Test helpers (feature `test-util`): a CA that signs leaves the real CA never would, so tests
//! can present every kind of broken SVID in a real handshake, and a client configuration that
//! presents one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshgate_identity::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::svid::{Svid, TrustBundle};
use crate::verify::SpiffeVerifier;

/// Key usage bits (RFC 5280 4.2.1.3), as the leaf's extension carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// digitalSignature (bit 0).
    DigitalSignature,
    /// keyEncipherment (bit 2).
    KeyEncipherment,
    /// keyCertSign (bit 5).
    KeyCertSign,
    /// cRLSign (bit 6).
    CrlSign,
}

impl Usage {
    fn bit(self) -> u8 {
        match self {
            Usage::DigitalSignature => 0x80,
            Usage::KeyEncipherment => 0x20,
            Usage::KeyCertSign => 0x04,
            Usage::CrlSign => 0x02,
        }
    }
}

/// Extended key usage purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// id-kp-serverAuth.
    ServerAuth,
    /// id-kp-clientAuth.
    ClientAuth,
}

/// What a test leaf looks like; [`LeafSpec::svid`] is what the mesh CA issues.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// basicConstraints cA.
    pub ca: bool,
    /// The key usage extension: `None` leaves it out; `(critical, usages)`.
    pub key_usage: Option<(bool, Vec<Usage>)>,
    /// The extended key usage extension: `None` leaves it out.
    pub eku: Option<Vec<Purpose>>,
    /// Validity, relative to now.
    pub not_before: i64,
    /// Validity end, relative to now (seconds).
    pub not_after: i64,
}

impl LeafSpec {
    /// A well-formed X509-SVID for `uri`.
    pub fn svid(uri: &str) -> Self {
        LeafSpec {
            uris: vec![uri.to_string()],
            dns: Vec::new(),
            ca: false,
            key_usage: Some((true, vec![Usage::DigitalSignature])),
            eku: Some(vec![Purpose::ServerAuth, Purpose::ClientAuth]),
            not_before: -300,
            not_after: 3600,
        }
    }
}

/// A root CA for tests, signing whatever it is asked to.
pub struct TestCa {
    trust_domain: TrustDomain,
    key: KeyPair,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestCa({})", self.trust_domain)
    }
}

fn at(offset_secs: i64) -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::now_utc() + ::time::Duration::seconds(offset_secs)
}

impl TestCa {
    /// A new self-signed root for `trust_domain`.
    pub fn new(trust_domain: &str) -> Result<Self, String> {
        let trust_domain = TrustDomain::new(trust_domain).map_err(|e| e.to_string())?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, format!("test root for {trust_domain}"));
        // Another TestCa for the same trust domain gets the same name: two roots told apart by
        // key alone, as an impostor's would be.
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(-3600);
        params.not_after = at(24 * 3600);
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?.der().clone();
        Ok(TestCa { trust_domain, key, cert })
    }

    /// The bundle holding this root.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle { trust_domain: self.trust_domain.clone(), roots: vec![self.cert.clone()] }
    }

    /// A leaf as `spec` says, signed by this root: the chain (the leaf alone) and its key.
    pub fn leaf(
        &self,
        spec: &LeafSpec,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::OrganizationName, "meshgate test");
        for u in &spec.uris {
            p.subject_alt_names.push(SanType::URI(u.as_str().try_into()?));
        }
        for d in &spec.dns {
            p.subject_alt_names.push(SanType::DnsName(d.as_str().try_into()?));
        }
        p.is_ca = if spec.ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
        if let Some((critical, usages)) = &spec.key_usage {
            let bits = usages.iter().fold(0u8, |b, u| b | u.bit());
            // DER BIT STRING: the count of unused trailing bits, then the bits.
            let content =
                if bits == 0 { vec![0x03, 0x01, 0x00] } else { vec![0x03, 0x02, bits.trailing_zeros() as u8, bits] };
            let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 15], content);
            ext.set_criticality(*critical);
            p.custom_extensions.push(ext);
        }
        if let Some(purposes) = &spec.eku {
            p.extended_key_usages = purposes
                .iter()
                .map(|pu| match pu {
                    Purpose::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
                    Purpose::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
                })
                .collect();
        }
        p.not_before = at(spec.not_before);
        p.not_after = at(spec.not_after);
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        let cert = p.signed_by(&key, &issuer)?.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert], key))
    }

    /// A well-formed SVID for `id`, as a proxy would hold it.
    pub fn svid(&self, id: &SpiffeId) -> Result<Svid, rcgen::Error> {
        let (chain, key) = self.leaf(&LeafSpec::svid(id.as_str()))?;
        let now = SystemTime::now();
        Ok(Svid {
            id: id.clone(),
            chain,
            key,
            not_before: now - Duration::from_secs(300),
            not_after: now + Duration::from_secs(3600),
        })
    }
}

/// A TLS 1.3 client that presents `chain`/`key` (whatever they hold) and verifies the server
/// against `bundle` the way a meshgate proxy does; `alpn` as given.
pub fn client_presenting(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundle: TrustBundle,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(SpiffeVerifier::new(Arc::new(bundle)))
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A key algorithm for edge certificates in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA P-256.
    EcdsaP256,
    /// RSA 2048.
    Rsa2048,
}

/// A web PKI root for tests of the gateway's HTTPS listeners: issues server certificates as
/// `kubernetes.io/tls` Secrets carry them (PEM), and makes clients that trust it.
pub struct EdgeCa {
    key: KeyPair,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for EdgeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeCa")
    }
}

impl EdgeCa {
    /// A new self-signed root.
    pub fn new() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "meshgate test edge root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        params.not_before = at(-3600);
        params.not_after = at(24 * 3600);
        let cert = params.self_signed(&key)?.der().clone();
        Ok(EdgeCa { key, cert })
    }

    /// The root, PEM.
    pub fn root_pem(&self) -> String {
        crate::cert_pem(&self.cert)
    }

    /// A server certificate for `names` valid from `not_before` to `not_after` seconds from
    /// now: `(tls.crt, tls.key)` as PEM.
    pub fn issue(
        &self,
        names: &[&str],
        alg: KeyAlg,
        not_before: i64,
        not_after: i64,
    ) -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate_for(match alg {
            KeyAlg::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        })?;
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        p.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("meshgate test"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = at(not_before);
        p.not_after = at(not_after);
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client trusting this root, offering `alpn`, speaking the TLS `versions` given
    /// (`[12, 13]`).
    pub fn client(&self, alpn: &[&[u8]], versions: &[u8]) -> Result<Arc<ClientConfig>, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone())?;
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = versions
            .iter()
            .filter_map(|v| match v {
                12 => Some(&rustls::version::TLS12),
                13 => Some(&rustls::version::TLS13),
                _ => None,
            })
            .collect();
        let mut config = ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(Arc::new(config))
    }
}
