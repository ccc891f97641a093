//! The control plane's CA, shared through the store: the first replica to start creates it (or
//! imports the user's root or intermediate); every replica loads the same material.

use std::time::Duration;

use meshgate_identity::TrustDomain;
use meshgate_tls::{CaPem, CertificateAuthority};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// Where the CA material lives in the store.
pub(crate) const KEY: &str = "ca/material.json";

#[derive(Debug, Serialize, Deserialize)]
struct Material {
    trust_domain: String,
    cert: String,
    key: String,
    chain: String,
    /// A root added for rotation and not yet signing (its certificate and key): kept in the
    /// store, so that the step after `add-root` finds it on any replica and after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_key: Option<String>,
}

/// User-provided CA material (PEM).
#[derive(Debug, Clone)]
pub struct UserCa {
    /// Root or intermediate certificate.
    pub cert: String,
    /// Its key.
    pub key: String,
    /// The chain up to (and including) the root, for an intermediate.
    pub chain: Option<String>,
}

/// Loads the CA from the store, creating it first if the store has none; with the raw
/// material as stored.
pub async fn load_or_create<S: Store>(
    store: &S,
    trust_domain: &TrustDomain,
    root_lifetime: Duration,
    user: Option<UserCa>,
) -> Result<(CertificateAuthority, Vec<u8>), StoreError> {
    if store.get_blob(KEY).await?.is_none() {
        let ca = match &user {
            Some(u) => CertificateAuthority::from_pem(trust_domain.clone(), &u.cert, &u.key, u.chain.as_deref()),
            None => CertificateAuthority::self_signed(trust_domain.clone(), root_lifetime),
        }
        .map_err(|e| StoreError::Refused(e.to_string()))?;
        let bytes = encode(&ca)?;
        if store.create_blob(KEY, &bytes).await? {
            tracing::info!(%trust_domain, "certificate authority created");
        }
    }
    let raw = store.get_blob(KEY).await?.ok_or_else(|| StoreError::Refused("CA material vanished".into()))?;
    Ok((decode(trust_domain, &raw)?, raw))
}

/// The CA from its stored form.
pub fn decode(trust_domain: &TrustDomain, raw: &[u8]) -> Result<CertificateAuthority, StoreError> {
    let m: Material = serde_json::from_slice(raw).map_err(|e| StoreError::Refused(format!("CA material: {e}")))?;
    if m.trust_domain != trust_domain.as_str() {
        return Err(StoreError::Refused(format!(
            "the store's CA is for trust domain {:?}, not {trust_domain:?}",
            m.trust_domain
        )));
    }
    let next = match (m.next_cert, m.next_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(StoreError::Refused("CA material: a pending root without its key, or a key without it".into()));
        }
    };
    let pem = CaPem { cert: m.cert, key: m.key, chain: m.chain, next };
    CertificateAuthority::from_stored(trust_domain.clone(), &pem).map_err(|e| StoreError::Refused(e.to_string()))
}

/// The CA's stored form.
pub fn encode(ca: &CertificateAuthority) -> Result<Vec<u8>, StoreError> {
    let CaPem { cert, key, chain, next } = ca.to_pem();
    let (next_cert, next_key) = next.unzip();
    let m = Material { trust_domain: ca.trust_domain().to_string(), cert, key, chain, next_cert, next_key };
    serde_json::to_vec(&m).map_err(|e| StoreError::Refused(e.to_string()))
}
