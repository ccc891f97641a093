//! The SPIFFE X509-SVID verifier: chain to a root of the peer's trust bundle (webpki path
//! building), then the SPIFFE rules rustls does not know: exactly one URI SAN holding a valid
//! SPIFFE ID in the expected trust domain, a leaf that is not a CA and cannot sign
//! certificates or CRLs. Every refusal names its reason, and the reason reaches the log.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshgate_identity::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use x509_parser::prelude::*;

use crate::svid::TrustBundle;

/// Why a certificate is not an acceptable SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// Not parseable.
    #[error("malformed certificate: {0}")]
    BadEncoding(String),
    /// No URI SAN.
    #[error("no URI SAN: an X509-SVID carries exactly one SPIFFE ID")]
    NoUriSan,
    /// More than one URI SAN.
    #[error("{0} URI SANs: an X509-SVID carries exactly one SPIFFE ID")]
    MultipleUriSans(usize),
    /// The URI SAN is not a SPIFFE ID.
    #[error("URI SAN is not a SPIFFE ID: {0}")]
    NotSpiffe(String),
    /// Another trust domain.
    #[error("trust domain {found:?} is not the trusted {expected:?}")]
    WrongTrustDomain {
        /// In the certificate.
        found: String,
        /// Trusted.
        expected: String,
    },
    /// A CA certificate presented as a leaf.
    #[error("a CA certificate (basicConstraints cA=true) cannot be a leaf SVID")]
    CaAsLeaf,
    /// keyCertSign or cRLSign on a leaf.
    #[error("leaf SVID has key usage {0}, which only CAs may have")]
    SigningKeyUsage(&'static str),
    /// No digitalSignature key usage.
    #[error("leaf SVID lacks the digitalSignature key usage")]
    NoDigitalSignature,
    /// No key usage extension at all.
    #[error("leaf SVID has no key usage extension (X509-SVID 4.3: it must be present and critical)")]
    NoKeyUsage,
    /// The key usage extension is not marked critical.
    #[error("leaf SVID's key usage extension is not critical (X509-SVID 4.3)")]
    KeyUsageNotCritical,
    /// An extended key usage without both TLS purposes.
    #[error("leaf SVID's extended key usage lacks {0} (X509-SVID 4.4: serverAuth and clientAuth when present)")]
    ExtendedKeyUsage(&'static str),
    /// The SPIFFE ID is the trust domain's own, with no path.
    #[error("SPIFFE ID {0} has no path: a leaf SVID names a workload, not the trust domain (X509-SVID 5.2)")]
    NoPath(String),
    /// Past notAfter.
    #[error("certificate expired {0} s ago")]
    Expired(u64),
    /// Before notBefore.
    #[error("certificate not valid for another {0} s")]
    NotYetValid(u64),
    /// No path to a trusted root (another CA, or a root withdrawn after rotation).
    #[error("not signed by a root of the trust bundle of {0} (another CA, or a withdrawn root)")]
    UnknownIssuer(String),
    /// The identity is valid but not one expected here.
    #[error("identity {found} is not the one expected ({expected})")]
    UnexpectedIdentity {
        /// In the certificate.
        found: String,
        /// What was expected.
        expected: String,
    },
    /// Any other path-validation failure.
    #[error("certificate rejected: {0}")]
    Invalid(String),
}

/// What the SPIFFE rules need to know about a leaf.
#[derive(Debug)]
pub(crate) struct LeafFacts {
    pub(crate) id: SpiffeId,
    pub(crate) public_key: Vec<u8>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

fn to_system(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Parses a leaf and applies the SPIFFE X509-SVID rules (not the chain).
pub(crate) fn leaf_facts(der: &CertificateDer<'_>) -> Result<LeafFacts, SvidError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| SvidError::BadEncoding(e.to_string()))?;
    if let Ok(Some(bc)) = cert.basic_constraints()
        && bc.value.ca
    {
        return Err(SvidError::CaAsLeaf);
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            if !ku.critical {
                return Err(SvidError::KeyUsageNotCritical);
            }
            if ku.value.key_cert_sign() {
                return Err(SvidError::SigningKeyUsage("keyCertSign"));
            }
            if ku.value.crl_sign() {
                return Err(SvidError::SigningKeyUsage("cRLSign"));
            }
            if !ku.value.digital_signature() {
                return Err(SvidError::NoDigitalSignature);
            }
        }
        Ok(None) => return Err(SvidError::NoKeyUsage),
        Err(e) => return Err(SvidError::BadEncoding(e.to_string())),
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if !eku.value.server_auth => return Err(SvidError::ExtendedKeyUsage("serverAuth")),
        Ok(Some(eku)) if !eku.value.client_auth => return Err(SvidError::ExtendedKeyUsage("clientAuth")),
        Ok(_) => {}
        Err(e) => return Err(SvidError::BadEncoding(e.to_string())),
    }
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(SvidError::BadEncoding(e.to_string())),
    };
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [one] => *one,
        many => return Err(SvidError::MultipleUriSans(many.len())),
    };
    let id = SpiffeId::parse(uri).map_err(|e| SvidError::NotSpiffe(e.to_string()))?;
    if id.path().is_empty() {
        return Err(SvidError::NoPath(id.to_string()));
    }
    Ok(LeafFacts {
        id,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        not_before: to_system(cert.validity().not_before),
        not_after: to_system(cert.validity().not_after),
    })
}

/// Validates a peer's SVID chain against a trust bundle at `now`; returns its SPIFFE ID.
pub fn validate_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
    server: bool,
) -> Result<SpiffeId, SvidError> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(SvidError::BadEncoding("no certificate presented".into()));
    };
    verify_chain(leaf, intermediates, bundle, &anchors(bundle), now, server)
}

/// Which root of `bundle` the SVID `chain` chains to (now), if any: the root that issued it,
/// directly or through intermediates.
pub fn issuing_root<'b>(chain: &[CertificateDer<'_>], bundle: &'b TrustBundle) -> Option<&'b CertificateDer<'static>> {
    let (leaf, intermediates) = chain.split_first()?;
    let now = SystemTime::now();
    bundle.roots.iter().find(|root| {
        let anchors: Vec<TrustAnchor<'_>> = webpki::anchor_from_trusted_cert(root).into_iter().collect();
        verify_chain(leaf, intermediates, bundle, &anchors, now, false).is_ok()
    })
}

/// The bundle's roots as trust anchors.
fn anchors(bundle: &TrustBundle) -> Vec<TrustAnchor<'static>> {
    bundle.roots.iter().filter_map(|r| webpki::anchor_from_trusted_cert(r).ok().map(|a| a.to_owned())).collect()
}

/// The SPIFFE X509-SVID rules, then the chain up to one of `anchors` (the bundle's roots).
fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    anchors: &[TrustAnchor<'_>],
    now: SystemTime,
    server: bool,
) -> Result<SpiffeId, SvidError> {
    let facts = leaf_facts(leaf)?;
    if facts.id.trust_domain() != bundle.trust_domain.as_str() {
        return Err(SvidError::WrongTrustDomain {
            found: facts.id.trust_domain().to_string(),
            expected: bundle.trust_domain.to_string(),
        });
    }
    let secs = |d: Duration| d.as_secs().max(1);
    if now > facts.not_after {
        return Err(SvidError::Expired(secs(now.duration_since(facts.not_after).unwrap_or_default())));
    }
    if now < facts.not_before {
        return Err(SvidError::NotYetValid(secs(facts.not_before.duration_since(now).unwrap_or_default())));
    }
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| SvidError::BadEncoding(format!("{e:?}")))?;
    let time = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    let usage = if server { webpki::KeyUsage::server_auth() } else { webpki::KeyUsage::client_auth() };
    let algs = crate::provider().signature_verification_algorithms.all;
    ee.verify_for_usage(algs, anchors, intermediates, time, usage, None, None).map_err(|e| match e {
        // A root of the same name whose key did not sign it is no issuer of it either.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            SvidError::UnknownIssuer(bundle.trust_domain.to_string())
        }
        webpki::Error::CaUsedAsEndEntity => SvidError::CaAsLeaf,
        other => SvidError::Invalid(format!("{other:?}")),
    })?;
    Ok(facts.id)
}

fn rustls_error(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Verifies SPIFFE peers against a trust bundle, as a TLS client (server certificates) or a
/// TLS server (client certificates). The name the client dialled is not checked: identity is
/// the SPIFFE ID, which the caller checks against the identities it expects.
pub struct SpiffeVerifier {
    bundle: Arc<TrustBundle>,
    /// The bundle's roots, parsed once rather than on every handshake.
    anchors: Vec<TrustAnchor<'static>>,
    /// As a client verifier: whether a client must present a certificate (it always must in
    /// the mesh; the control plane also serves join-token bootstraps without one).
    client_cert_required: bool,
}

impl fmt::Debug for SpiffeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeVerifier({})", self.bundle.trust_domain)
    }
}

impl SpiffeVerifier {
    /// A verifier for one bundle.
    pub fn new(bundle: Arc<TrustBundle>) -> Arc<Self> {
        let anchors = anchors(&bundle);
        Arc::new(SpiffeVerifier { bundle, anchors, client_cert_required: true })
    }

    /// A client verifier that asks for a certificate and verifies it when presented, but also
    /// lets clients without one in (the control plane: a proxy's first call has a join token).
    pub fn client_cert_optional(bundle: Arc<TrustBundle>) -> Arc<Self> {
        let anchors = anchors(&bundle);
        Arc::new(SpiffeVerifier { bundle, anchors, client_cert_required: false })
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        server: bool,
    ) -> Result<(), rustls::Error> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        verify_chain(end_entity, intermediates, &self.bundle, &self.anchors, now, server).map_err(rustls_error)?;
        Ok(())
    }
}

fn tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &crate::provider().signature_verification_algorithms)
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &crate::provider().signature_verification_algorithms)
}

fn schemes() -> Vec<SignatureScheme> {
    crate::provider().signature_verification_algorithms.supported_schemes()
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, true)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.client_cert_required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, false)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}
