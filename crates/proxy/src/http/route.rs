//! Stage 1, route selection: the route table the connection's target names (the listener on
//! the connection's port whose hostname best matches the request's host, or the mesh routes of
//! the Service a sidecar's connection was dialled to), then the first entry of that table, in
//! Gateway API precedence, whose match holds. A sidecar connection to a pod by address has no
//! routes: it goes to that pod.

use std::borrow::Cow;
use std::sync::Arc;

use http::StatusCode;
use http::header::{self, HeaderValue};
use http::request::Parts;
use meshgate_model::host::normalize_host;
use meshgate_model::matching::RequestView;
use meshgate_model::table::Entry;

use super::Step;
use super::outcome::Outcome;
use super::{ConnInfo, Target};
use crate::core::Snapshot;
use crate::flags::Flags;
use crate::upstream::pool::EndpointPool;

/// Where a request goes.
pub(super) enum Selected<'s> {
    /// A rule of a route table.
    Rule(Routed<'s>),
    /// A meshed pod dialled by address: that pod and no other, no route policies.
    Pod(&'s Arc<EndpointPool>),
}

/// The table entry that matched a request. The request head itself stays where it is, with
/// the stage runner: the stages borrow it rather than move it.
pub(super) struct Routed<'s> {
    /// The matching entry (its rule, and its path match for prefix rewrites).
    pub(super) entry: &'s Entry,
    /// The request's authority as it arrived: the URI's (HTTP/2, absolute form) or `Host`.
    pub(super) host_value: Option<HeaderValue>,
}

impl Routed<'_> {
    /// The host routed on: lower case, without a port.
    pub(super) fn host(&self) -> Cow<'_, str> {
        host_of(self.host_value.as_ref())
    }
}

fn host_of(value: Option<&HeaderValue>) -> Cow<'_, str> {
    normalize_host(value.and_then(|h| h.to_str().ok()).unwrap_or(""))
}

/// Chooses the route table and the entry for `req`; a request nothing serves is answered here
/// (404, flag NR).
pub(super) fn select<'s>(snapshot: &'s Snapshot, conn: &ConnInfo, parts: &Parts) -> Step<Selected<'s>> {
    let gone = |dest| {
        let msg = format!("{dest} is no longer a Service or endpoint in the mesh");
        Outcome::local(StatusCode::NOT_FOUND, msg, None, Flags::NO_ROUTE)
    };
    let mesh_routes = match conn.target {
        Target::Listeners => None,
        Target::Service(dest) => match snapshot.config.mesh.as_ref().and_then(|m| m.services.get(&dest)) {
            Some(service) => Some(&service.routes),
            None => return Step::Answer(gone(dest)),
        },
        Target::Pod(dest) => {
            return match snapshot.mesh_endpoint(&dest) {
                Some(pool) => Step::Next(Selected::Pod(pool)),
                None => Step::Answer(gone(dest)),
            };
        }
    };
    // HTTP/2 and absolute-form requests carry the host in the URI; HTTP/1.1 in Host.
    let host_value: Option<HeaderValue> = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let host = host_of(host_value.as_ref());
    if let Some(cert) = &conn.tls
        && !cert.covers(&host)
    {
        // RFC 9110 §15.5.20: this connection's certificate does not cover the host, so it was
        // not meant to carry the request (an HTTP/2 connection reused across names).
        let msg = format!("the certificate of this connection does not cover host {host:?}: open a connection for it");
        return Step::Answer(Outcome::local(StatusCode::MISDIRECTED_REQUEST, msg, None, Flags::NO_ROUTE));
    }
    let routes = match mesh_routes {
        Some(routes) => routes,
        None => {
            match snapshot.config.ports.get(&conn.port).and_then(|set| set.select(conn.sni.as_deref().unwrap_or(&host)))
            {
                Some(listener) => &listener.routes,
                None => {
                    let msg = format!("no listener on port {} for host {host:?}", conn.port);
                    return Step::Answer(Outcome::local(StatusCode::NOT_FOUND, msg, None, Flags::NO_ROUTE));
                }
            }
        }
    };
    let view = RequestView {
        method: &parts.method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let Some(entry) = routes.find(&host, &view) else {
        let msg = format!("no route for {} {} on host {host:?}", parts.method, parts.uri.path());
        return Step::Answer(Outcome::local(StatusCode::NOT_FOUND, msg, None, Flags::NO_ROUTE));
    };
    drop(host);
    Step::Next(Selected::Rule(Routed { entry, host_value }))
}
