//! Certificates the gateway serves to outside clients (HTTPS listeners): read from a
//! `kubernetes.io/tls` Secret's PEM, checked (the key matches the certificate, the validity
//! window), and turned once into the rustls server configuration every handshake that picks it
//! answers with (TLS 1.3 and 1.2, ALPN h2 and http/1.1).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::ServerConfig;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a Secret's certificate cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EdgeCertError {
    /// `tls.crt` has no PEM certificate.
    #[error("tls.crt holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    /// A PEM block of `tls.crt` is not a certificate.
    #[error("tls.crt: {0}")]
    BadCertificate(String),
    /// `tls.key` has no PEM private key.
    #[error("tls.key holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)")]
    NoKey,
    /// The key is of a kind not supported.
    #[error("tls.key: {0}")]
    BadKey(String),
    /// The key is not the certificate's.
    #[error("the private key in tls.key does not match the certificate in tls.crt")]
    KeyMismatch,
    /// Expired.
    #[error("the certificate expired {0} (notAfter)")]
    Expired(String),
    /// Not valid yet.
    #[error("the certificate is not valid before {0} (notBefore)")]
    NotYetValid(String),
}

/// A certificate an HTTPS listener serves, ready for handshakes.
#[derive(Clone)]
pub struct EdgeCert {
    /// `namespace/name` of the Secret it came from.
    pub secret: Arc<str>,
    /// The DNS names it covers (subjectAltName; the subject CN when there is none), lower case;
    /// wildcards as written (`*.example.com`).
    pub names: Vec<String>,
    /// Its key's algorithm (`ECDSA`, `RSA`, `Ed25519`).
    pub key_type: &'static str,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
    key: Arc<CertifiedKey>,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for EdgeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeCert").field("secret", &self.secret).field("names", &self.names).finish()
    }
}

/// ALPN offered to outside clients, in order of preference.
pub const EDGE_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

impl EdgeCert {
    /// Reads `tls.crt` (the leaf first, then intermediates) and `tls.key` of Secret `secret`,
    /// checked at `now`.
    pub fn from_pem(secret: &str, cert_pem: &[u8], key_pem: &[u8], now: SystemTime) -> Result<Self, EdgeCertError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| EdgeCertError::BadCertificate(e.to_string()))?;
        let Some(leaf) = chain.first() else { return Err(EdgeCertError::NoCertificate) };
        let (names, not_before, not_after) = {
            use x509_parser::prelude::*;
            let (_, cert) =
                X509Certificate::from_der(leaf).map_err(|e| EdgeCertError::BadCertificate(e.to_string()))?;
            let mut names: Vec<String> = cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            if names.is_empty() {
                names
                    .extend(cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_lowercase));
            }
            let v = cert.validity();
            (
                names,
                (v.not_before.timestamp(), v.not_before.to_string()),
                (v.not_after.timestamp(), v.not_after.to_string()),
            )
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => EdgeCertError::NoKey,
            e => EdgeCertError::BadKey(e.to_string()),
        })?;
        let key_type = match &key {
            PrivateKeyDer::Pkcs1(_) => "RSA",
            PrivateKeyDer::Sec1(_) => "ECDSA",
            _ => "",
        };
        let signing = crate::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| EdgeCertError::BadKey(format!("not a usable private key: {e}")))?;
        let key_type = match (key_type, signing.algorithm()) {
            ("", rustls::SignatureAlgorithm::RSA) => "RSA",
            ("", rustls::SignatureAlgorithm::ECDSA) => "ECDSA",
            ("", rustls::SignatureAlgorithm::ED25519) => "Ed25519",
            (k, _) => k,
        };
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => return Err(EdgeCertError::KeyMismatch),
        }
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        if now > not_after.0 {
            return Err(EdgeCertError::Expired(not_after.1));
        }
        if now < not_before.0 {
            return Err(EdgeCertError::NotYetValid(not_before.1));
        }
        let not_after = not_after.0;
        let key = Arc::new(certified);
        let config = server_config(key.clone()).map_err(|e| EdgeCertError::BadKey(e.to_string()))?;
        Ok(EdgeCert { secret: Arc::from(secret), names, key_type, not_after, key, config })
    }

    /// Whether the certificate covers `host` (lower case, no port): a name equal to it, or a
    /// wildcard `*.rest` with `host` one label more than `rest` (RFC 6125 §6.4.3).
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_covers(n, host))
    }

    /// Whether one of its names is exactly `host` (not by a wildcard).
    pub fn names_exactly(&self, host: &str) -> bool {
        self.names.iter().any(|n| n == host)
    }

    /// The server configuration handshakes that pick this certificate answer with.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The chain and key.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }
}

/// Where Debian keeps the system's trusted roots (`wellKnownCACertificates: System`).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client configurations for TLS to a backend (BackendTLSPolicy): the server verified
/// against the roots in `ca_pem` (web PKI rules, the name checked by the dialler's server
/// name), TLS 1.3 and 1.2; one offering ALPN http/1.1, one h2.
pub fn origination_configs(ca_pem: &[u8]) -> Result<(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>), String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut bad = 0;
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        match c {
            Ok(c) => {
                if roots.add(c).is_err() {
                    bad += 1;
                }
            }
            Err(e) => return Err(format!("not PEM certificates: {e}")),
        }
    }
    if roots.is_empty() {
        return Err(if bad > 0 {
            format!("none of the {bad} certificate(s) is a usable CA certificate")
        } else {
            "no PEM certificate (expected -----BEGIN CERTIFICATE-----)".into()
        });
    }
    let base = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut h1 = base.clone();
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut h2 = base;
    h2.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(h1), Arc::new(h2)))
}

fn name_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(rest) => host.split_once('.').is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => name == host,
    }
}

/// A server configuration with no certificate: a ClientHello for a name no listener serves
/// gets a handshake_failure alert from it, rather than a silent close.
pub fn refusing_config() -> Option<Arc<ServerConfig>> {
    #[derive(Debug)]
    struct NoCert;
    impl rustls::server::ResolvesServerCert for NoCert {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            None
        }
    }
    static REFUSING: std::sync::OnceLock<Option<Arc<ServerConfig>>> = std::sync::OnceLock::new();
    REFUSING
        .get_or_init(|| {
            let builder = ServerConfig::builder_with_provider(crate::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .ok()?;
            Some(Arc::new(builder.with_no_client_auth().with_cert_resolver(Arc::new(NoCert))))
        })
        .clone()
}

fn server_config(key: Arc<CertifiedKey>) -> Result<Arc<ServerConfig>, rustls::Error> {
    #[derive(Debug)]
    struct One(Arc<CertifiedKey>);
    impl rustls::server::ResolvesServerCert for One {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(One(key)));
    config.alpn_protocols = EDGE_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(all(test, feature = "test-util"))]
mod tests;
