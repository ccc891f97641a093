//! Everything TLS, in one place: the certificate authority that issues X.509-SVIDs, key and
//! CSR generation on the proxy side, the SPIFFE certificate verifier, and the rustls
//! configurations the proxies use (rotated by swapping `Arc`s). One crypto provider for the
//! whole workspace: aws-lc-rs.

pub mod ca;
pub mod config;
pub mod edge;
pub mod svid;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod verify;

pub use rustls;

use std::sync::{Arc, OnceLock};

pub use ca::{CaError, CaPem, CertificateAuthority};
pub use config::{MeshTls, PeerIdentity};
pub use svid::{Svid, SvidRequest, TrustBundle};
pub use verify::{SvidError, issuing_root, validate_svid};

/// The workspace's crypto provider (aws-lc-rs), shared by every config.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

/// SHA-256 of `data` (through the workspace's crypto provider).
pub fn sha256(data: &[u8]) -> Vec<u8> {
    crate::provider()
        .cipher_suites
        .iter()
        .filter_map(|s| s.tls13())
        .map(|s| s.common.hash_provider)
        .find(|h| h.output_len() == 32)
        .map(|h| h.hash(data).as_ref().to_vec())
        .unwrap_or_default()
}

/// A certificate's fingerprint: hex of the SHA-256 of its DER (what `openssl x509 -fingerprint
/// -sha256` prints, without the colons).
pub fn fingerprint(der: &[u8]) -> String {
    hex(&sha256(der))
}

/// Hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Random bytes from the crypto provider's secure random source.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    if crate::provider().secure_random.fill(&mut out).is_err() {
        // Never expected; fall back to a non-cryptographic source rather than zeros.
        out.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    out
}

/// PEM for a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// Standard base64 with padding (RFC 4648 §4): PEM bodies, WebSocket keys.
pub fn base64(bytes: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    b64
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or(""));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
