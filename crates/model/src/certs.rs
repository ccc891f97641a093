//! The certificates of HTTPS listeners: each `tls.certificateRefs` entry resolved to a
//! `kubernetes.io/tls` Secret (another namespace's only with a ReferenceGrant), read and
//! checked. A reference that fails is reported on its Gateway; when the previous configuration
//! served a good certificate from the same Secret, that one stays in force (a bad edit of a live
//! Secret loses nothing); a listener left with no certificate is not served.

use std::sync::Arc;
use std::time::SystemTime;

use meshgate_api::gw::gateways::{GatewayListeners, GatewayListenersTlsMode};
use meshgate_api::{GATEWAY_GROUP, Kind, Object, Resource, ResourceSet};
use meshgate_tls::edge::EdgeCert;

use crate::resolve::{Discovery, Referrer};
use crate::status::{Condition, cond};
use crate::table::ListenerTls;

/// What the compiler may know beyond the resources.
#[derive(Clone)]
pub struct CompileInputs<'a> {
    /// The certificate the configuration in force serves from a Secret (`namespace/name`).
    pub last_good: &'a dyn Fn(&str) -> Option<Arc<EdgeCert>>,
    /// When the certificates' validity is checked.
    pub now: SystemTime,
    /// The ports Ingresses are served on.
    pub ingress: crate::settings::IngressPorts,
}

impl std::fmt::Debug for CompileInputs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileInputs").field("now", &self.now).finish_non_exhaustive()
    }
}

/// Nothing from before: a first load, `meshgate validate`.
pub fn fresh() -> CompileInputs<'static> {
    CompileInputs { last_good: &|_| None, now: SystemTime::now(), ingress: Default::default() }
}

/// The TLS of an HTTPS listener, or `None` (reported) when it cannot be served.
pub(crate) fn listener_tls(
    set: &ResourceSet,
    disc: &Discovery<'_>,
    gw: &Object,
    l: &GatewayListeners,
    field: &str,
    inputs: &CompileInputs<'_>,
    conditions: &mut Vec<Condition>,
) -> Option<ListenerTls> {
    let gw_ns = gw.id.ns();
    let Some(tls) = &l.tls else {
        conditions.push(cond(
            gw,
            format!("{field}.tls"),
            "Programmed",
            false,
            "Invalid",
            format!("listener {:?}: protocol {} needs tls.certificateRefs", l.name, l.protocol),
        ));
        return None;
    };
    if matches!(tls.mode, Some(GatewayListenersTlsMode::Passthrough)) {
        conditions.push(cond(
            gw,
            format!("{field}.tls.mode"),
            "Accepted",
            false,
            "UnsupportedValue",
            format!("listener {:?}: tls.mode Passthrough needs protocol TLS; HTTPS terminates", l.name),
        ));
        return None;
    }
    let refs = tls.certificate_refs.as_deref().unwrap_or_default();
    let mut certs = Vec::new();
    let mut failed = 0;
    for (j, r) in refs.iter().enumerate() {
        let at = format!("{field}.tls.certificateRefs[{j}]");
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        let key = format!("{ns}/{}", r.name);
        let loaded = load(set, disc, gw_ns, r.group.as_deref(), r.kind.as_deref(), ns, &r.name, &key, inputs.now);
        match loaded {
            Ok(cert) => certs.push(Arc::new(cert)),
            Err((reason, message)) => {
                failed += 1;
                let kept = (inputs.last_good)(&key);
                let message = match &kept {
                    Some(_) => format!("{message}; the certificate served from it before stays in force"),
                    None => message,
                };
                conditions.push(cond(
                    gw,
                    at,
                    "ResolvedRefs",
                    false,
                    reason,
                    format!("listener {:?}: {message}", l.name),
                ));
                certs.extend(kept);
            }
        }
    }
    if refs.is_empty() {
        conditions.push(cond(
            gw,
            format!("{field}.tls.certificateRefs"),
            "ResolvedRefs",
            false,
            "InvalidCertificateRef",
            format!("listener {:?}: protocol {} needs at least one certificateRef", l.name, l.protocol),
        ));
    }
    if certs.is_empty() {
        conditions.push(cond(
            gw,
            field.to_string(),
            "Programmed",
            false,
            "Invalid",
            format!("listener {:?}: no usable certificate; not served (the Gateway's other listeners are)", l.name),
        ));
        return None;
    }
    if failed == 0 && !refs.is_empty() {
        conditions.push(cond(
            gw,
            format!("{field}.tls"),
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            format!("listener {:?}: {} certificate(s)", l.name, certs.len()),
        ));
    }
    Some(ListenerTls { certs })
}

#[allow(clippy::too_many_arguments)]
fn load(
    set: &ResourceSet,
    disc: &Discovery<'_>,
    gw_ns: &str,
    group: Option<&str>,
    kind: Option<&str>,
    ns: &str,
    name: &str,
    key: &str,
    now: SystemTime,
) -> Result<EdgeCert, (&'static str, String)> {
    let (group, kind) = (group.unwrap_or(""), kind.unwrap_or("Secret"));
    if !(group.is_empty() && kind == "Secret") {
        return Err((
            "InvalidCertificateRef",
            format!("certificateRef kind {group}/{kind} is not supported (only core Secrets)"),
        ));
    }
    let from = Referrer { group: GATEWAY_GROUP, kind: "Gateway", namespace: gw_ns };
    if !disc.ref_permitted(from, "", "Secret", ns, name) {
        return Err((
            "RefNotPermitted",
            format!(
                "Secret {key} is in another namespace and no ReferenceGrant in namespace {ns} allows Gateways of {gw_ns} to use it"
            ),
        ));
    }
    let secret = match set.lookup(Kind::Secret, ns, name).map(|o| &o.resource) {
        Some(Resource::Secret(s)) => s,
        _ => return Err(("InvalidCertificateRef", format!("Secret {key} not found"))),
    };
    if secret.type_.as_deref() != Some("kubernetes.io/tls") {
        return Err((
            "InvalidCertificateRef",
            format!("Secret {key} is of type {:?}, not kubernetes.io/tls", secret.type_.as_deref().unwrap_or("Opaque")),
        ));
    }
    let value = |k: &str| -> Option<Vec<u8>> {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| secret.data.as_ref().and_then(|d| d.get(k)).map(|b| b.0.clone()))
    };
    let (Some(crt), Some(tls_key)) = (value("tls.crt"), value("tls.key")) else {
        return Err(("InvalidCertificateRef", format!("Secret {key} lacks tls.crt or tls.key")));
    };
    EdgeCert::from_pem(key, &crt, &tls_key, now).map_err(|e| ("InvalidCertificateRef", format!("Secret {key}: {e}")))
}
