//! Stage 2, the rule's filters: a rule that cannot be served answers 500; a client outside the
//! rule's allowed source ranges 403; a redirect answers
//! at once; an injected fault delays or aborts; then the upstream request head is made from the
//! client's, in place and once for every attempt (request id, hop-by-hop headers out,
//! forwarded headers, the rule's header modifiers, path and host rewrites), and the mirrors
//! that sample this request are chosen (they start with the body, in the attempts stage).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Response, StatusCode, Uri};
use meshgate_model::rule::{Mirror, Rule};

use super::ConnInfo;
use super::Step;
use super::outcome::Outcome;
use super::response::ResponseBody;
use super::route::Routed;
use crate::flags::Flags;
use crate::headers::{ensure_request_id, set_forwarded, strip_hop_by_hop};

/// What the filters decided for a request going upstream (its head, made in place, stays with
/// the stage runner).
pub(super) struct Upstream<'s> {
    /// The rule that matched.
    pub(super) rule: Arc<Rule>,
    /// The mirrors this request goes to as well.
    pub(super) mirrors: Vec<&'s Mirror>,
    /// Flags so far (a delay injected).
    pub(super) flags: Flags,
}

/// Applies the rule's filters; a filter that answers (redirect, fault abort, a rule that
/// cannot be served) ends the request here. An injected delay is returned for the caller to
/// wait before either (this stage does not await: one future fewer on every request).
pub(super) fn apply<'s>(
    conn: &ConnInfo,
    routed: Routed<'s>,
    parts: &mut Parts,
) -> (Option<Duration>, Step<Upstream<'s>>) {
    let entry = routed.entry;
    let rule = &entry.rule;
    if let Some(failure) = &rule.failure {
        let msg = format!("route {} rule {} cannot be served: {failure}", rule.route, rule.index);
        let answer = Outcome::local(StatusCode::INTERNAL_SERVER_ERROR, msg, Some(rule.clone()), Flags::NO_ROUTE);
        return (None, Step::Answer(answer));
    }
    if !rule.source_ranges.is_empty() && !rule.source_ranges.iter().any(|r| r.contains(conn.peer.ip())) {
        let msg = format!(
            "route {} rule {}: client address {} is not in the allowed source ranges",
            rule.route,
            rule.index,
            conn.peer.ip()
        );
        return (None, Step::Answer(Outcome::local(StatusCode::FORBIDDEN, msg, Some(rule.clone()), Flags::NONE)));
    }
    if let Some(redirect) = &rule.redirect {
        let (path, query) = (parts.uri.path(), parts.uri.query());
        let location = redirect.location(conn.scheme, &routed.host(), conn.port, path, query, entry.matched_prefix());
        let mut resp = Response::new(ResponseBody::local(Bytes::new()));
        *resp.status_mut() = StatusCode::from_u16(redirect.status_code).unwrap_or(StatusCode::FOUND);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        rule.response_headers.apply(resp.headers_mut());
        let answer = Outcome { resp, rule: Some(rule.clone()), upstream: None, flags: Flags::NONE, attempts: 0 };
        return (None, Step::Answer(answer));
    }
    let mut flags = Flags::NONE;
    let mut delay = None;
    if let Some(fault) = &rule.fault {
        if let Some((millis, share)) = fault.delay
            && fastrand::f64() < share
        {
            flags.insert(Flags::DELAY_INJECTED);
            delay = Some(Duration::from_millis(millis));
        }
        if let Some((status, share)) = fault.abort
            && fastrand::f64() < share
        {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let answer =
                Outcome::local(status, "fault filter abort".into(), Some(rule.clone()), flags | Flags::FAULT_INJECTED);
            return (delay, Step::Answer(answer));
        }
    }
    let Routed { entry, host_value } = routed;
    upstream_head(parts, conn, &entry.rule, entry.matched_prefix(), host_value);
    let mirrors = entry.rule.mirrors.iter().filter(|m| m.sample()).collect();
    (delay, Step::Next(Upstream { rule: entry.rule.clone(), mirrors, flags }))
}

/// The upstream request head: the client's, changed in place.
fn upstream_head(
    parts: &mut Parts,
    conn: &ConnInfo,
    rule: &Rule,
    matched_prefix: Option<&str>,
    host_value: Option<HeaderValue>,
) {
    ensure_request_id(&mut parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    // The proxy answers `Expect: 100-continue` itself (hyper sends 100 when the body is read).
    if parts.headers.contains_key(header::EXPECT) {
        parts.headers.remove(header::EXPECT);
    }
    set_forwarded(&mut parts.headers, conn.peer.ip(), conn.scheme, host_value.as_ref());
    rule.request_headers.apply(&mut parts.headers);
    let rewrite = rule.rewrite.as_ref();
    let (path, query) = (parts.uri.path(), parts.uri.query());
    let new_path = rewrite.and_then(|r| r.path.as_ref()).map(|m| m.apply(path, matched_prefix));
    let new_host = rewrite.and_then(|r| r.hostname.as_deref());
    let path_and_query: Option<PathAndQuery> = match new_path {
        Some(p) => {
            let pq = match query {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            PathAndQuery::try_from(pq).ok()
        }
        None => parts.uri.path_and_query().cloned(),
    };
    let upstream_authority: Option<HeaderValue> = match new_host {
        Some(h) => HeaderValue::from_str(h).ok(),
        None => host_value,
    };
    // An HTTP/1.1 request without a rewrite already carries its Host: leave it be.
    let keep_host = new_host.is_none() && parts.uri.authority().is_none();
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.path_and_query = path_and_query.or_else(|| Some(PathAndQuery::from_static("/")));
    parts.uri = Uri::from_parts(uri_parts).unwrap_or_else(|_| Uri::from_static("/"));
    match (upstream_authority, keep_host) {
        (Some(a), false) => {
            parts.headers.insert(header::HOST, a);
        }
        (Some(_), true) => {}
        (None, _) => {
            parts.headers.remove(header::HOST);
        }
    }
}
