//! The rustls configurations of a proxy, rebuilt whenever its SVID or trust bundle changes
//! and published as new `Arc`s: live connections keep theirs, new ones take the new one.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use meshgate_identity::SpiffeId;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::svid::{Svid, TrustBundle};
use crate::verify::SpiffeVerifier;

/// ALPN between meshgate proxies: HTTP/2, multiplexing everything on one connection.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for opaque TCP tunnelled between meshgate proxies.
pub const ALPN_TCP: &[u8] = b"meshgate-tcp";

/// The credentials in force and the configurations built from them.
#[derive(Debug)]
pub struct Material {
    /// The proxy's SVID.
    pub svid: Arc<Svid>,
    /// The roots it trusts.
    pub bundle: Arc<TrustBundle>,
    /// For accepting mTLS.
    pub server: Arc<ServerConfig>,
    /// For dialling mTLS (HTTP/2 between proxies).
    pub client: Arc<ClientConfig>,
    /// For dialling mTLS that carries opaque TCP.
    pub client_tcp: Arc<ClientConfig>,
    /// When the SVID will be renewed.
    pub next_rotation: SystemTime,
}

/// A proxy's TLS state, swapped atomically on rotation.
#[derive(Debug)]
pub struct MeshTls {
    current: ArcSwap<Material>,
}

fn build(svid: Arc<Svid>, bundle: Arc<TrustBundle>) -> Result<Material, rustls::Error> {
    let verifier = SpiffeVerifier::new(bundle.clone());
    let provider = crate::provider();
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(svid.chain.clone(), svid.key.clone_key())?;
    server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_TCP.to_vec(), b"http/1.1".to_vec()];
    server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(svid.chain.clone(), svid.key.clone_key())?;
    let mut client_tcp = client.clone();
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    client_tcp.alpn_protocols = vec![ALPN_TCP.to_vec()];
    let next_rotation = svid.renew_at();
    Ok(Material {
        svid,
        bundle,
        server: Arc::new(server),
        client: Arc::new(client),
        client_tcp: Arc::new(client_tcp),
        next_rotation,
    })
}

impl MeshTls {
    /// Builds the configurations for an SVID and a bundle.
    pub fn new(svid: Svid, bundle: TrustBundle) -> Result<Self, rustls::Error> {
        Ok(MeshTls { current: ArcSwap::from_pointee(build(Arc::new(svid), Arc::new(bundle))?) })
    }

    /// Replaces the SVID, the bundle, or both.
    pub fn update(&self, svid: Option<Svid>, bundle: Option<TrustBundle>) -> Result<(), rustls::Error> {
        let cur = self.current.load();
        let svid = svid.map_or_else(|| cur.svid.clone(), Arc::new);
        let bundle = bundle.map_or_else(|| cur.bundle.clone(), Arc::new);
        self.current.store(Arc::new(build(svid, bundle)?));
        Ok(())
    }

    /// What is in force now.
    pub fn material(&self) -> Arc<Material> {
        self.current.load_full()
    }

    /// The server config in force.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.load().server.clone()
    }

    /// This proxy's identity.
    pub fn id(&self) -> SpiffeId {
        self.current.load().svid.id.clone()
    }
}

/// Who is on the other side of an mTLS connection.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The SPIFFE ID from the verified SVID.
    pub id: SpiffeId,
    /// The leaf certificate (for the XFCC hash).
    pub leaf: CertificateDer<'static>,
}

impl PeerIdentity {
    /// The verified peer of a finished handshake.
    pub fn from_connection(conn: &rustls::CommonState) -> Option<Self> {
        let leaf = conn.peer_certificates()?.first()?.clone().into_owned();
        let facts = crate::verify::leaf_facts(&leaf).ok()?;
        Some(PeerIdentity { id: facts.id, leaf })
    }

    /// SHA-256 of the leaf certificate, hex (Envoy's XFCC `Hash`).
    pub fn cert_sha256_hex(&self) -> String {
        crate::hex(&crate::sha256(&self.leaf))
    }
}

/// The control plane's server config: its SVID, client certificates optional (verified when
/// presented), HTTP/2 for gRPC.
pub fn control_plane_server(svid: &Svid, bundle: Arc<TrustBundle>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let verifier = SpiffeVerifier::client_cert_optional(bundle);
    let mut server = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(svid.chain.clone(), svid.key.clone_key())?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(server))
}

/// A proxy's config for dialling the control plane: verifies it against `bundle`; presents
/// `svid` when there is one.
pub fn control_plane_client(bundle: Arc<TrustBundle>, svid: Option<&Svid>) -> Result<Arc<ClientConfig>, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(SpiffeVerifier::new(bundle));
    let mut client = match svid {
        Some(s) => builder.with_client_auth_cert(s.chain.clone(), s.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(client))
}

/// Reads a PEM bundle of root certificates.
pub fn bundle_from_pem(trust_domain: meshgate_identity::TrustDomain, pem: &str) -> Result<TrustBundle, String> {
    use rustls_pki_types::pem::PemObject;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("trust bundle: {e}"))?;
    if roots.is_empty() {
        return Err("trust bundle: no certificate in it".into());
    }
    Ok(TrustBundle { trust_domain, roots })
}
