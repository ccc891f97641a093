//! The certificate authority: a self-signed root (10 years by default) or a root or
//! intermediate the user provides, signing CSRs into X.509-SVIDs that follow the SPIFFE
//! X509-SVID standard exactly: one URI SAN, `cA=false`, key usage `digitalSignature` only
//! (critical), extended key usage `serverAuth` + `clientAuth`. Root rotation keeps the old root
//! in the bundle until it is withdrawn.

use std::time::Duration;

use meshgate_identity::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::prelude::*;

use crate::svid::TrustBundle;

/// Why the CA refused.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Not a CSR.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// The CSR's signature does not verify (the requester does not hold the key).
    #[error("the CSR's signature does not verify")]
    CsrSignature,
    /// The CSR asks for an identity the requester may not have.
    #[error("CSR asks for {requested}, but the requester may only have {allowed}")]
    IdentityMismatch {
        /// What the CSR asks for.
        requested: String,
        /// What the requester is allowed.
        allowed: String,
    },
    /// SANs beyond the one SPIFFE ID.
    #[error("CSR asks for extra subject alternative names ({0}); an SVID has exactly one URI SAN")]
    ExtraSans(String),
    /// A CA certificate asked for.
    #[error("CSR asks for a CA certificate (basicConstraints cA=true); SVIDs are leaves")]
    CaRequested,
    /// A lifetime out of range.
    #[error("certificate lifetime {0:?} is out of range (1 minute to 1 year)")]
    Lifetime(Duration),
    /// The CA's own material is unusable.
    #[error("CA material: {0}")]
    Material(String),
    /// rcgen failed.
    #[error("signing failed: {0}")]
    Signing(#[from] rcgen::Error),
}

/// Shortest and longest leaf lifetimes.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest leaf lifetime.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A certificate authority for one trust domain.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    signer_key: KeyPair,
    signer_cert: CertificateDer<'static>,
    /// Certificates between the leaf and the root (the signer when it is an intermediate).
    intermediates: Vec<CertificateDer<'static>>,
    /// Trusted roots, the one in use first.
    roots: Vec<CertificateDer<'static>>,
    /// Leaf lifetime when the request names none.
    pub default_ttl: Duration,
    /// Shortest leaf lifetime accepted (1 minute; tests lower it to rotate every few seconds).
    pub min_ttl: Duration,
    /// A root added for rotation, not yet signing.
    next: Option<(KeyPair, CertificateDer<'static>)>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertificateAuthority({}, {} root(s))", self.trust_domain, self.roots.len())
    }
}

fn root_params(td: &TrustDomain, lifetime: Duration) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshgate");
    dn.push(DnType::CommonName, format!("meshgate root CA for {td} ({})", fastrand::u32(..)));
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").as_str().try_into()?)];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = ::time::OffsetDateTime::now_utc();
    p.not_before = now - ::time::Duration::minutes(5);
    p.not_after = now + ::time::Duration::seconds(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2));
    p.serial_number = Some(random_serial());
    Ok(p)
}

fn random_serial() -> SerialNumber {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero to strip
    SerialNumber::from_slice(&bytes)
}

fn is_ca_cert(der: &CertificateDer<'_>) -> Result<bool, CaError> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| CaError::Material(e.to_string()))?;
    Ok(c.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca))
}

fn is_self_signed(der: &CertificateDer<'_>) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, c)| c.subject() == c.issuer() && c.verify_signature(None).is_ok())
}

impl CertificateAuthority {
    /// A new self-signed root.
    pub fn self_signed(trust_domain: TrustDomain, lifetime: Duration) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = root_params(&trust_domain, lifetime)?.self_signed(&key)?;
        let der = cert.der().clone();
        Ok(CertificateAuthority {
            trust_domain,
            signer_key: key,
            signer_cert: der.clone(),
            intermediates: Vec::new(),
            roots: vec![der],
            default_ttl: Duration::from_secs(24 * 3600),
            min_ttl: MIN_TTL,
            next: None,
        })
    }

    /// A CA from user material: `cert_pem` is a root, or an intermediate whose chain up to a
    /// root is in `chain_pem`; `key_pem` is its key.
    pub fn from_pem(
        trust_domain: TrustDomain,
        cert_pem: &str,
        key_pem: &str,
        chain_pem: Option<&str>,
    ) -> Result<Self, CaError> {
        let signer_cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::Material(format!("CA certificate: {e}")))?;
        let signer_key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Material(format!("CA key: {e}")))?;
        if !is_ca_cert(&signer_cert)? {
            return Err(CaError::Material("the CA certificate is not a CA (basicConstraints cA=false)".into()));
        }
        let (_, parsed) = X509Certificate::from_der(&signer_cert).map_err(|e| CaError::Material(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != signer_key.public_key_raw() {
            return Err(CaError::Material("the CA key does not match the CA certificate".into()));
        }
        let mut intermediates = Vec::new();
        let mut roots = Vec::new();
        if is_self_signed(&signer_cert) {
            roots.push(signer_cert.clone());
        } else {
            intermediates.push(signer_cert.clone());
            if chain_pem.is_none() {
                return Err(CaError::Material("an intermediate CA needs its chain up to the root".into()));
            }
        }
        // The chain: intermediates up to the root, and any other roots still trusted (during
        // a root rotation).
        for c in CertificateDer::pem_slice_iter(chain_pem.unwrap_or("").as_bytes()) {
            let c = c.map_err(|e| CaError::Material(format!("CA chain: {e}")))?;
            if c == signer_cert || roots.contains(&c) || intermediates.contains(&c) {
                continue;
            }
            if is_self_signed(&c) { roots.push(c) } else { intermediates.push(c) }
        }
        if roots.is_empty() {
            return Err(CaError::Material("the CA chain holds no root certificate".into()));
        }
        Ok(CertificateAuthority {
            trust_domain,
            signer_key,
            signer_cert,
            intermediates,
            roots,
            default_ttl: Duration::from_secs(24 * 3600),
            min_ttl: MIN_TTL,
            next: None,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots to trust now.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle { trust_domain: self.trust_domain.clone(), roots: self.roots.clone() }
    }

    /// Signs a CSR into an SVID chain (leaf first, then intermediates) for `identity`, which
    /// the caller has established the requester may have.
    pub fn sign(&self, csr: &[u8], identity: &SpiffeId, ttl: Option<Duration>) -> Result<Vec<Vec<u8>>, CaError> {
        let ttl = ttl.unwrap_or(self.default_ttl);
        if !(self.min_ttl..=MAX_TTL).contains(&ttl) {
            return Err(CaError::Lifetime(ttl));
        }
        if identity.trust_domain() != self.trust_domain.as_str() {
            return Err(CaError::IdentityMismatch {
                requested: identity.to_string(),
                allowed: format!("identities in trust domain {}", self.trust_domain),
            });
        }
        let der = CertificateSigningRequestDer::from(csr.to_vec());
        let request = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CaError::CsrSignature,
            rcgen::Error::UnsupportedExtension => CaError::InvalidCsr("it asks for an unsupported extension".into()),
            other => CaError::InvalidCsr(other.to_string()),
        })?;
        if matches!(request.params.is_ca, IsCa::Ca(_)) {
            return Err(CaError::CaRequested);
        }
        let mut uris = Vec::new();
        let mut others = Vec::new();
        for san in &request.params.subject_alt_names {
            match san {
                SanType::URI(u) => uris.push(u.as_str().to_string()),
                other => others.push(format!("{other:?}")),
            }
        }
        if !others.is_empty() || uris.len() > 1 {
            let mut all = uris.clone();
            all.extend(others);
            return Err(CaError::ExtraSans(all.join(", ")));
        }
        if let Some(u) = uris.first()
            && u != identity.as_str()
        {
            return Err(CaError::IdentityMismatch { requested: u.clone(), allowed: identity.to_string() });
        }
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(identity.as_str().try_into()?)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let now = ::time::OffsetDateTime::now_utc();
        // A minute of slack for clocks that disagree a little.
        p.not_before = now - ::time::Duration::minutes(1);
        p.not_after = now + ::time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2));
        p.serial_number = Some(random_serial());
        let issuer = Issuer::from_ca_cert_der(&self.signer_cert, &self.signer_key)?;
        let leaf = p.signed_by(&request.public_key, &issuer)?;
        let mut chain = vec![leaf.der().to_vec()];
        chain.extend(self.intermediates.iter().map(|c| c.to_vec()));
        Ok(chain)
    }

    /// Root rotation, step 1: a new root joins the trust bundle (distribute it to every
    /// proxy before step 2); the old one still signs. Refused while another root is pending.
    pub fn add_next_root(&mut self, lifetime: Duration) -> Result<(), CaError> {
        if let Some((_, pending)) = &self.next {
            return Err(CaError::Material(format!(
                "root {} was added and is not signing yet: use-root first (or withdraw-old-roots after it)",
                crate::fingerprint(pending).get(..16).unwrap_or_default()
            )));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = root_params(&self.trust_domain, lifetime)?.self_signed(&key)?;
        self.next = Some((key, cert.der().clone()));
        self.roots.push(cert.der().clone());
        Ok(())
    }

    /// Root rotation, step 2: the new root signs from now on (both stay trusted).
    pub fn use_next_root(&mut self) -> Result<(), CaError> {
        let (key, cert) =
            self.next.take().ok_or_else(|| CaError::Material("no root is pending: add-root first".into()))?;
        self.roots.retain(|r| *r != cert);
        self.roots.insert(0, cert.clone());
        self.signer_key = key;
        self.signer_cert = cert;
        self.intermediates.clear();
        Ok(())
    }

    /// Steps 1 and 2 at once (for a CA whose bundle no proxy holds yet).
    pub fn rotate_root(&mut self, lifetime: Duration) -> Result<(), CaError> {
        self.add_next_root(lifetime)?;
        self.use_next_root()
    }

    /// The roots [`Self::withdraw_old_roots`] would remove: all but the one that signs and a
    /// pending one.
    pub fn withdrawable_roots(&self) -> Vec<CertificateDer<'static>> {
        let signing = self.signing_root().cloned();
        let pending = self.next.as_ref().map(|(_, c)| c);
        self.roots.iter().filter(|r| Some(*r) != signing.as_ref() && Some(*r) != pending).cloned().collect()
    }

    /// Ends a rotation: only the root that signs (and a pending one) stays trusted.
    pub fn withdraw_old_roots(&mut self) {
        let gone = self.withdrawable_roots();
        self.roots.retain(|r| !gone.contains(r));
    }

    /// The root at the top of the signer's chain: the signer itself, or the root an
    /// intermediate chains to.
    pub fn signing_root(&self) -> Option<&CertificateDer<'static>> {
        let Some(top) = self.intermediates.last() else {
            return self.roots.iter().find(|r| **r == self.signer_cert).or(self.roots.first());
        };
        let issuer = X509Certificate::from_der(top).ok().map(|(_, c)| c.issuer().as_raw().to_vec());
        self.roots
            .iter()
            .find(|r| X509Certificate::from_der(r).is_ok_and(|(_, c)| Some(c.subject().as_raw().to_vec()) == issuer))
            .or(self.roots.first())
    }

    /// The root added by [`Self::add_next_root`] and not yet signing.
    pub fn pending_root(&self) -> Option<&CertificateDer<'static>> {
        self.next.as_ref().map(|(_, c)| c)
    }

    /// Everything to persist, PEM: it round-trips through [`Self::from_stored`], a pending
    /// root included.
    pub fn to_pem(&self) -> CaPem {
        let cert = crate::cert_pem(&self.signer_cert);
        let key = self.signer_key.serialize_pem();
        let mut chain: String = self.intermediates.iter().skip(1).map(|c| crate::cert_pem(c)).collect();
        chain.extend(self.roots.iter().map(|c| crate::cert_pem(c)));
        let next = self.next.as_ref().map(|(k, c)| (crate::cert_pem(c), k.serialize_pem()));
        CaPem { cert, key, chain, next }
    }

    /// The CA as [`Self::to_pem`] wrote it.
    pub fn from_stored(trust_domain: TrustDomain, pem: &CaPem) -> Result<Self, CaError> {
        let mut ca = CertificateAuthority::from_pem(trust_domain, &pem.cert, &pem.key, Some(&pem.chain))?;
        if let Some((cert_pem, key_pem)) = &pem.next {
            let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|e| CaError::Material(format!("pending root: {e}")))?;
            let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Material(format!("pending root key: {e}")))?;
            let (_, parsed) = X509Certificate::from_der(&cert).map_err(|e| CaError::Material(e.to_string()))?;
            if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(CaError::Material("the pending root's key does not match its certificate".into()));
            }
            if !ca.roots.contains(&cert) {
                return Err(CaError::Material("the pending root is not in the trust bundle".into()));
            }
            ca.next = Some((key, cert));
        }
        Ok(ca)
    }
}

/// A CA's material as it is persisted (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPem {
    /// The signing certificate.
    pub cert: String,
    /// Its key.
    pub key: String,
    /// Intermediates above the signer, then every trusted root.
    pub chain: String,
    /// A root added for rotation and not yet signing: its certificate and key.
    pub next: Option<(String, String)>,
}

#[cfg(test)]
mod tests;
