//! The proxy's own identity: a key generated here (it never leaves), an SVID obtained by
//! sending a CSR to a certifier (the control plane, or a local CA), renewed at half-life with
//! jitter; every renewal publishes new TLS configs, so new connections use the new certificate
//! and live ones keep theirs.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshgate_identity::SpiffeId;
use meshgate_tls::{CertificateAuthority, MeshTls, SvidRequest, TrustBundle};

/// What a certifier answers: the SVID chain and the trust bundle to use.
#[derive(Debug, Clone)]
pub struct Certified {
    /// Leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// The roots to trust.
    pub bundle: TrustBundle,
}

/// Something that turns a CSR into an SVID (the control plane's `Identity.Certify`).
pub trait Certifier: Send + Sync + 'static {
    /// Signs `csr` for `id`.
    fn certify<'a>(
        &'a self,
        id: &'a SpiffeId,
        csr: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Certified, String>> + Send + 'a>>;
}

/// A certifier backed by an in-process CA (tests, and a standalone proxy with its own CA).
pub struct LocalCa {
    /// The CA.
    pub ca: Mutex<CertificateAuthority>,
    /// Leaf lifetime.
    pub ttl: Duration,
}

impl Certifier for LocalCa {
    fn certify<'a>(
        &'a self,
        id: &'a SpiffeId,
        csr: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Certified, String>> + Send + 'a>> {
        Box::pin(async move {
            let ca = self.ca.lock().map_err(|_| "CA lock poisoned".to_string())?;
            let chain = ca.sign(&csr, id, Some(self.ttl)).map_err(|e| e.to_string())?;
            Ok(Certified { chain, bundle: ca.bundle() })
        })
    }
}

/// Why the identity could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The certifier refused or could not be reached.
    #[error("certificate request for {id} failed: {reason}")]
    Certify {
        /// The identity.
        id: SpiffeId,
        /// Why.
        reason: String,
    },
    /// The answer was not a usable SVID.
    #[error("certificate for {id} unusable: {reason}")]
    Unusable {
        /// The identity.
        id: SpiffeId,
        /// Why.
        reason: String,
    },
}

async fn obtain(certifier: &dyn Certifier, id: &SpiffeId) -> Result<(meshgate_tls::Svid, TrustBundle), IdentityError> {
    let req = SvidRequest::new(id).map_err(|e| IdentityError::Unusable { id: id.clone(), reason: e.to_string() })?;
    let csr = req.csr.clone();
    let certified =
        certifier.certify(id, csr).await.map_err(|reason| IdentityError::Certify { id: id.clone(), reason })?;
    let svid =
        req.complete(certified.chain).map_err(|e| IdentityError::Unusable { id: id.clone(), reason: e.to_string() })?;
    Ok((svid, certified.bundle))
}

/// Obtains the first SVID and builds the TLS state.
pub async fn bootstrap(certifier: &dyn Certifier, id: &SpiffeId) -> Result<Arc<MeshTls>, IdentityError> {
    let (svid, bundle) = obtain(certifier, id).await?;
    tracing::info!(%id, not_after = ?svid.not_after, "identity issued");
    MeshTls::new(svid, bundle)
        .map(Arc::new)
        .map_err(|e| IdentityError::Unusable { id: id.clone(), reason: e.to_string() })
}

/// What the control plane and the rotation task tell each other about the proxy's SVID: which
/// root signs now (a leaf from another root is renewed at once, not at its half-life: the
/// second step of a root rotation reaches every proxy in seconds), and that a renewal happened
/// (so the control plane learns which root the new leaf chains to).
#[derive(Debug)]
pub struct Renewal {
    /// SHA-256 (hex) of the root that signs now, as the control plane last said; empty: unknown.
    signer: Mutex<String>,
    signer_changed: tokio::sync::Notify,
    renewed: tokio::sync::watch::Sender<u64>,
}

impl Default for Renewal {
    fn default() -> Self {
        Renewal {
            signer: Mutex::new(String::new()),
            signer_changed: tokio::sync::Notify::new(),
            renewed: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Renewal {
    /// The control plane says `fingerprint` signs now.
    pub fn set_signer(&self, fingerprint: &str) {
        let Ok(mut s) = self.signer.lock() else { return };
        if *s != fingerprint {
            fingerprint.clone_into(&mut s);
            self.signer_changed.notify_one();
        }
    }

    /// Whether `mesh`'s leaf chains to the root that signs now (true when that is not known).
    pub fn leaf_from_signer(&self, mesh: &MeshTls) -> bool {
        let signer = self.signer.lock().map(|s| s.clone()).unwrap_or_default();
        signer.is_empty() || credentials(mesh).leaf_root == signer
    }

    /// Counts renewals: a receiver sees each one.
    pub fn renewals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.renewed.subscribe()
    }
}

/// What a proxy's credentials are now, as the control plane is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialState {
    /// Fingerprint of the bundle root the leaf chains to (empty when none does).
    pub leaf_root: String,
    /// The leaf's expiry, Unix seconds.
    pub not_after: u64,
    /// Fingerprints of every root trusted.
    pub trusts: Vec<String>,
}

/// `mesh`'s credentials now.
pub fn credentials(mesh: &MeshTls) -> CredentialState {
    let m = mesh.material();
    let leaf_root =
        meshgate_tls::issuing_root(&m.svid.chain, &m.bundle).map(|r| meshgate_tls::fingerprint(r)).unwrap_or_default();
    let not_after = m.svid.not_after.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let trusts = m.bundle.roots.iter().map(|r| meshgate_tls::fingerprint(r)).collect();
    CredentialState { leaf_root, not_after, trusts }
}

/// Renews the SVID at its rotation time for as long as the task runs, and at once (within a
/// second, spread so a fleet does not ask together) when `renewal` says another root signs now;
/// on failure, retries with backoff (the current SVID stays in use until it expires).
pub async fn rotate(mesh: Arc<MeshTls>, certifier: Arc<dyn Certifier>, id: SpiffeId, renewal: Arc<Renewal>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let due = mesh.material().next_rotation;
        let wait = due.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        let early = tokio::select! {
            () = tokio::time::sleep(wait) => false,
            () = renewal.signer_changed.notified() => true,
        };
        if early {
            if renewal.leaf_from_signer(&mesh) {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
        }
        match obtain(certifier.as_ref(), &id).await {
            Ok((svid, bundle)) => {
                let not_after = svid.not_after;
                match mesh.update(Some(svid), Some(bundle)) {
                    Ok(()) => {
                        tracing::info!(%id, ?not_after, early, "identity rotated");
                        renewal.renewed.send_modify(|n| *n += 1);
                        backoff = Duration::from_millis(500);
                    }
                    Err(e) => tracing::error!(%id, error = %e, "rotated certificate unusable"),
                }
                if !renewal.leaf_from_signer(&mesh) {
                    // The replica that signed had not switched roots yet: ask again shortly.
                    tracing::info!(%id, "renewed leaf is not from the root that signs now; renewing again in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    renewal.signer_changed.notify_one();
                }
            }
            Err(e) => {
                let expires = mesh.material().svid.not_after;
                tracing::warn!(error = %e, ?expires, "certificate renewal failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                if early {
                    renewal.signer_changed.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use meshgate_identity::TrustDomain;
    use meshgate_tls::CertificateAuthority;

    use super::*;

    fn local_ca(leaf_ttl: Duration) -> Arc<LocalCa> {
        let mut ca =
            CertificateAuthority::self_signed(TrustDomain::new("cluster.local").unwrap(), Duration::from_secs(3600))
                .unwrap();
        ca.min_ttl = Duration::from_secs(1);
        Arc::new(LocalCa { ca: Mutex::new(ca), ttl: leaf_ttl })
    }

    /// Renewal at half-life with jitter, again and again, and at once when the control plane
    /// says another root signs now — all on the runtime's (paused) clock.
    #[tokio::test(start_paused = true)]
    async fn leaves_renew_at_half_life_and_at_once_when_another_root_signs() {
        let ca = local_ca(Duration::from_secs(600));
        let id = TrustDomain::new("cluster.local").unwrap().workload_id("shop", "a").unwrap();
        let mesh = bootstrap(ca.as_ref(), &id).await.unwrap();
        let renewal = Arc::new(Renewal::default());
        let mut renewals = renewal.renewals();
        let task = tokio::spawn(rotate(mesh.clone(), ca.clone() as Arc<dyn Certifier>, id.clone(), renewal.clone()));
        // The CA backdates leaves a minute: 660 s of life, renewed at half (330 s from its
        // start, 270 s from issue) less up to 10% jitter (66 s).
        for round in 0..3 {
            let t0 = tokio::time::Instant::now();
            renewals.changed().await.unwrap();
            let took = t0.elapsed();
            assert!(
                (Duration::from_secs(203)..=Duration::from_secs(271)).contains(&took),
                "renewal {round} after {took:?}"
            );
        }
        // A new root signs: the leaf is renewed from it within a second, not at half-life.
        let new_root = {
            let mut ca = ca.ca.lock().unwrap();
            ca.rotate_root(Duration::from_secs(3600)).unwrap();
            meshgate_tls::fingerprint(ca.signing_root().unwrap())
        };
        assert!(!credentials(&mesh).leaf_root.is_empty());
        assert_ne!(credentials(&mesh).leaf_root, new_root);
        let t0 = tokio::time::Instant::now();
        renewal.set_signer(&new_root);
        renewals.changed().await.unwrap();
        assert!(t0.elapsed() <= Duration::from_secs(1), "early renewal after {:?}", t0.elapsed());
        assert_eq!(credentials(&mesh).leaf_root, new_root);
        assert!(renewal.leaf_from_signer(&mesh));
        // Telling it the same signer again changes nothing.
        renewal.set_signer(&new_root);
        let quiet = tokio::time::timeout(Duration::from_secs(60), renewals.changed()).await;
        assert!(quiet.is_err(), "renewed again although the leaf is from the signing root");
        task.abort();
    }
}
