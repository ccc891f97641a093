//! Join tokens: how a proxy proves, once, which namespace and service account it runs as
//! before it has a certificate. Stored hashed (SHA-256), single use, with an expiry.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Unix seconds.
    pub expires: u64,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Never issued, or already used.
    #[error("unknown or already used join token")]
    Unknown,
    /// Past its expiry.
    #[error("join token expired {0} s ago")]
    Expired(u64),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn key(token: &str) -> String {
    format!("tokens/{}", meshgate_tls::hex(&meshgate_tls::sha256(token.as_bytes())))
}

/// Creates a token for `namespace/service_account`, valid for `ttl`.
pub async fn create<S: Store>(
    store: &S,
    namespace: &str,
    service_account: &str,
    ttl: Duration,
) -> Result<String, StoreError> {
    let token = format!("mgj.{}", meshgate_tls::hex(&meshgate_tls::random_bytes(24)));
    let grant = Grant {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        expires: crate::plane::unix_now() + ttl.as_secs(),
    };
    let value = serde_json::to_vec(&grant).map_err(|e| StoreError::Refused(e.to_string()))?;
    store.put_blob(&key(&token), &value).await?;
    Ok(token)
}

/// Uses a token (once): what it grants, or why not.
pub async fn redeem<S: Store>(store: &S, token: &str) -> Result<Grant, TokenError> {
    let raw = store.take_blob(&key(token)).await?.ok_or(TokenError::Unknown)?;
    let grant: Grant = serde_json::from_slice(&raw).map_err(|_| TokenError::Unknown)?;
    let t = crate::plane::unix_now();
    if grant.expires < t {
        return Err(TokenError::Expired(t - grant.expires));
    }
    Ok(grant)
}
