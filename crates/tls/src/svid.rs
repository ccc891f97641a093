//! X.509-SVIDs on the proxy side: the key is generated here and never leaves; a CSR asks the
//! CA for a certificate; the answer is checked before it is used.

use std::time::{Duration, SystemTime};

use meshgate_identity::{SpiffeId, TrustDomain};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;

use crate::verify::{SvidError, leaf_facts};

/// A trust bundle: the roots trusted for one trust domain (several during a root rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Root certificates, DER.
    pub roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// The roots as concatenated PEM (what `bundle_from_pem` reads back).
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|r| crate::cert_pem(r)).collect()
    }
}

/// A key pair and the CSR asking for `id`.
pub struct SvidRequest {
    /// The identity asked for.
    pub id: SpiffeId,
    key: KeyPair,
    /// The CSR, DER.
    pub csr: Vec<u8>,
}

impl std::fmt::Debug for SvidRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidRequest").field("id", &self.id).finish_non_exhaustive()
    }
}

impl SvidRequest {
    /// Generates an ECDSA P-256 key and a CSR for `id` (one URI SAN, no subject).
    pub fn new(id: &SpiffeId) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        let csr = params.serialize_request(&key)?;
        Ok(SvidRequest { id: id.clone(), key, csr: csr.der().to_vec() })
    }

    /// Pairs the CA's answer with the key, after checking it is an SVID for the identity
    /// asked for, for this key.
    pub fn complete(self, chain: Vec<Vec<u8>>) -> Result<Svid, SvidError> {
        let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
        let leaf = chain.first().ok_or(SvidError::BadEncoding("empty certificate chain".into()))?;
        let facts = leaf_facts(leaf)?;
        if facts.id != self.id {
            return Err(SvidError::UnexpectedIdentity { found: facts.id.to_string(), expected: self.id.to_string() });
        }
        if facts.public_key != self.key.public_key_raw() {
            return Err(SvidError::BadEncoding("the certificate is not for this key".into()));
        }
        Ok(Svid {
            id: self.id,
            chain,
            key: PrivatePkcs8KeyDer::from(self.key.serialize_der()).into(),
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }
}

/// A certificate chain for one SPIFFE ID with its private key.
#[derive(Debug)]
pub struct Svid {
    /// The identity.
    pub id: SpiffeId,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
}

impl Clone for Svid {
    fn clone(&self) -> Self {
        Svid {
            id: self.id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

impl Svid {
    /// When to renew: at half of the lifetime, minus up to 10% of it at random, so a fleet
    /// started together does not renew together.
    pub fn renew_at(&self) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or(Duration::ZERO);
        let jitter = life.mul_f64(0.1 * fastrand::f64());
        self.not_before + life / 2 - jitter
    }

    /// A summary for `/certs` and `meshgate certs`.
    pub fn summary(&self, next_rotation: Option<SystemTime>) -> SvidSummary {
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        SvidSummary {
            spiffe_id: self.id.to_string(),
            not_before: secs(self.not_before),
            not_after: secs(self.not_after),
            next_rotation: next_rotation.map(secs),
            chain: self.chain.iter().map(|c| describe(c)).collect(),
        }
    }
}

/// What `/certs` shows about one credential.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SvidSummary {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub not_after: u64,
    /// Unix seconds, when a renewal is due.
    pub next_rotation: Option<u64>,
    /// Each certificate of the chain: subject, issuer, serial, validity.
    pub chain: Vec<CertSummary>,
}

/// One certificate, described.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSummary {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial, hex.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// URI SANs.
    pub uris: Vec<String>,
    /// PEM.
    pub pem: String,
}

/// Describes a certificate for humans.
pub fn describe(der: &CertificateDer<'_>) -> CertSummary {
    use x509_parser::prelude::*;
    let pem = crate::cert_pem(der);
    match X509Certificate::from_der(der) {
        Ok((_, c)) => CertSummary {
            subject: c.subject().to_string(),
            issuer: c.issuer().to_string(),
            serial: c.raw_serial_as_string(),
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
            uris: c
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            GeneralName::URI(u) => Some((*u).to_string()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            pem,
        },
        Err(e) => CertSummary {
            subject: format!("<unparseable: {e}>"),
            issuer: String::new(),
            serial: String::new(),
            not_before: 0,
            not_after: 0,
            uris: Vec::new(),
            pem,
        },
    }
}
