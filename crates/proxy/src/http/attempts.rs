//! Stage 3, the attempts: the policy in force (the rule's timeouts and retries over the first
//! backend's TrafficPolicy), the body across attempts (kept for replay when a retry may come),
//! mirrors started, then the retry loop — the circuit breaker, one attempt forwarded to an
//! endpoint (stage 4) under the per-try and request timeouts, the answer or the failure
//! classified, the retry budget asked, backoff with full jitter, and the weighted split made
//! again for every attempt.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;

use super::ConnInfo;
use super::filters::Upstream;
use super::forward::{Picked, hash_request, pick_backend, pick_endpoint, send, send_mirror};
use super::outcome::{Failure, Hop, Outcome};
use super::response::ResponseBody;
use crate::body::replay::ReplayBody;
use crate::body::{BodyTooLarge, ClientBody, RequestBody};
use crate::core::Snapshot;
use crate::flags::Flags;
use crate::headers::strip_hop_by_hop;
use crate::upstream::balance::Outcome as Outcome5;
use crate::upstream::pool::{EndpointPool, SendError, UpstreamError};
use crate::upstream::state::BackendEvents;

/// The retry and timeout policy in force for one request.
struct Effective<'p> {
    request_timeout: Option<Duration>,
    per_try_timeout: Option<Duration>,
    attempts: u32,
    codes: &'p [u16],
    backoff: Duration,
    max_backoff: Duration,
    idempotent: bool,
}

impl<'p> Effective<'p> {
    /// The rule's overrides over the first backend's policy.
    fn new(rule: &'p meshgate_model::rule::Rule, first: &'p Picked<'_, '_>, method: &Method) -> Self {
        let policy = first.1.policy();
        let rp = &rule.policy;
        let backoff = rp.retry_backoff.unwrap_or(policy.retry.backoff);
        Effective {
            request_timeout: rp.request_timeout.unwrap_or(policy.request_timeout),
            per_try_timeout: rp.per_try_timeout.unwrap_or(policy.per_try_timeout),
            attempts: rp.retry_attempts.unwrap_or(policy.retry.attempts),
            codes: rp.retry_codes.as_deref().unwrap_or(&policy.retry.codes),
            backoff,
            max_backoff: policy.retry.max_backoff.max(backoff),
            idempotent: matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
            ),
        }
    }
}

/// Runs the attempts for `request` until one answers or the policy gives up; `hop` learns
/// about the upstream as they go.
pub(super) async fn run(
    snapshot: &Snapshot,
    conn: &ConnInfo,
    request: Upstream<'_>,
    parts: &mut Parts,
    mut body: ClientBody,
    hop: &mut Hop,
) -> Outcome {
    let Upstream { rule, mirrors, mut flags } = request;
    let over_limit = match rule.max_request_body.map(|max| body.limit(max)) {
        Some(Err(e)) => return Outcome::local(StatusCode::PAYLOAD_TOO_LARGE, e.to_string(), Some(rule), flags),
        Some(Ok(watch)) => watch,
        None => None,
    };
    let first = match pick_backend(snapshot, &rule) {
        Ok(b) => b,
        Err((status, msg, f)) => return Outcome::local(status, msg, Some(rule), flags | f),
    };
    let policy = Effective::new(&rule, &first, &parts.method);
    let deadline = policy.request_timeout.map(|t| tokio::time::Instant::now() + t);
    let hash = first.1.hash_key().map(|k| hash_request(k, &parts.headers, conn.peer));
    let max_body = first.1.policy().retry.max_body_bytes;
    let mut source = Source::new(snapshot, parts, body, &mirrors, policy.attempts > 0 && policy.idempotent, max_body);

    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut current = first;
    let mut last: Option<Arc<EndpointPool>> = None;
    let mut attempt = 0u32;
    let mut _retry_guard = None;
    loop {
        let (weighted, backend) = current;
        let Some(active) = backend.state.try_start(backend.policy().limits.max_requests) else {
            let msg = format!(
                "circuit breaker: {} requests in flight to {} (maxRequests {})",
                backend.state.active(),
                backend.model.id,
                backend.policy().limits.max_requests
            );
            BackendEvents::count(&backend.state.events.overflow);
            return Outcome::local(StatusCode::SERVICE_UNAVAILABLE, msg, Some(rule), flags | Flags::UPSTREAM_OVERFLOW);
        };
        let endpoint = match pick_endpoint(backend, hash, last.as_ref(), &mut hop.waited).await {
            Ok(e) => e,
            Err((status, msg, f)) => return Outcome::local(status, msg, Some(rule), flags | f),
        };
        let Some(body) = source.next_body() else {
            let msg = "request body no longer available for another attempt".to_string();
            return Outcome::local(StatusCode::BAD_GATEWAY, msg, Some(rule), flags | Flags::REPLAY_OVERFLOW);
        };
        let last_attempt = attempt >= policy.attempts;
        let req = attempt_request(parts, body, last_attempt, weighted);
        let try_deadline = match (policy.per_try_timeout, deadline) {
            (Some(t), Some(d)) => Some(d.min(tokio::time::Instant::now() + t)),
            (Some(t), None) => Some(tokio::time::Instant::now() + t),
            (None, d) => d,
        };
        let sent_at = tokio::time::Instant::now();
        let result = send(&endpoint, req, try_deadline, &mut timer).await;
        let latency = sent_at.elapsed();
        hop.attempted(&backend.model.id, &endpoint, latency);
        let addr = endpoint.addr;
        // Decide: answer, or try again.
        let (retryable, failure): (bool, Failure) = match result {
            Some(Ok((resp, returner))) => {
                let status = resp.status().as_u16();
                let outcome = match status {
                    502..=504 => Outcome5::GatewayError,
                    500..=599 => Outcome5::ServerError,
                    _ => Outcome5::Success,
                };
                backend.record(&endpoint, outcome, latency);
                let wants_retry = policy.codes.contains(&status) && policy.idempotent;
                if !wants_retry || last_attempt {
                    if wants_retry {
                        flags.insert(Flags::RETRY_LIMIT);
                    }
                    let (mut rparts, rbody) = resp.into_parts();
                    strip_hop_by_hop(&mut rparts.headers);
                    rule.response_headers.apply(&mut rparts.headers);
                    weighted.response_headers.apply(&mut rparts.headers);
                    // The request timeout goes on with the body: the one timer, reset.
                    let body_timer = match (deadline, timer.take()) {
                        (Some(d), Some(mut t)) => {
                            t.as_mut().reset(d);
                            Some(t)
                        }
                        (Some(d), None) => Some(Box::pin(tokio::time::sleep_until(d))),
                        (None, _) => None,
                    };
                    let body = ResponseBody::upstream(rbody, Some(returner), Some(active), body_timer);
                    return Outcome {
                        resp: Response::from_parts(rparts, body),
                        rule: Some(rule),
                        upstream: Some(addr),
                        flags,
                        attempts: attempt + 1,
                    };
                }
                (true, Failure::Status(status))
            }
            Some(Err(SendError { error, request })) => {
                if let Some(r) = request {
                    source.give_back(r.into_body());
                }
                match &error {
                    UpstreamError::Overflow(msg) => {
                        let msg = format!("{msg} (Service {})", backend.model.id);
                        let flags = flags | Flags::UPSTREAM_OVERFLOW;
                        BackendEvents::count(&backend.state.events.overflow);
                        return Outcome::local(StatusCode::SERVICE_UNAVAILABLE, msg, Some(rule), flags);
                    }
                    _ if over_limit.as_ref().is_some_and(|o| o.load(std::sync::atomic::Ordering::Relaxed)) => {
                        // The client's fault, not the endpoint's: no retry, no ejection.
                        let max = rule.max_request_body.unwrap_or_default();
                        let msg = BodyTooLarge(max).to_string();
                        return Outcome::local(StatusCode::PAYLOAD_TOO_LARGE, msg, Some(rule), flags);
                    }
                    e if e.is_connect() => {
                        backend.record(&endpoint, Outcome5::ConnectFailure, latency);
                        flags.insert(Flags::UPSTREAM_CONNECT_FAILURE);
                        // Never reached the application: safe to retry whatever the method.
                        (true, Failure::Connect(format!("{error}")))
                    }
                    _ => {
                        backend.record(&endpoint, Outcome5::GatewayError, latency);
                        flags.insert(Flags::UPSTREAM_RESET);
                        (policy.idempotent || source.is_fresh(), Failure::Reset(format!("{error}")))
                    }
                }
            }
            None => {
                backend.record(&endpoint, Outcome5::GatewayError, latency);
                flags.insert(Flags::UPSTREAM_TIMEOUT);
                let overall = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
                (policy.idempotent && !overall, Failure::Timeout { overall })
            }
        };
        last = Some(endpoint.clone());
        let give_up = |failure: Failure, flags| {
            failure.into_outcome(&backend.model.id, addr, Some(rule.clone()), flags, attempt + 1)
        };
        if !retryable || last_attempt {
            if retryable {
                flags.insert(Flags::RETRY_LIMIT);
            }
            return give_up(failure, flags);
        }
        if !source.can_replay() {
            return give_up(failure, flags | Flags::REPLAY_OVERFLOW);
        }
        // A request that never reached an application costs it nothing to retry: connect
        // failures do not draw on the budget (the attempt count still bounds them).
        if !matches!(failure, Failure::Connect(_)) {
            let Some(guard) = backend.state.try_retry(&backend.policy().retry) else {
                tracing::debug!(backend = %backend.model.id, "retry budget exhausted");
                return give_up(failure, flags | Flags::RETRY_LIMIT);
            };
            _retry_guard = Some(guard);
        }
        drop(active);
        BackendEvents::count(&backend.state.events.retries);
        // Exponential backoff with full jitter.
        let cap = policy.backoff.saturating_mul(1u32 << attempt.min(16)).min(policy.max_backoff);
        let pause = cap.mul_f64(fastrand::f64());
        if deadline.is_some_and(|d| tokio::time::Instant::now() + pause >= d) {
            return give_up(failure, flags | Flags::UPSTREAM_TIMEOUT);
        }
        tokio::time::sleep(pause).await;
        hop.waited += pause;
        attempt += 1;
        // The split is made again for every attempt.
        current = match pick_backend(snapshot, &rule) {
            Ok(b) => b,
            Err((status, msg, f)) => return Outcome::local(status, msg, Some(rule), flags | f),
        };
    }
}

/// One attempt's request: the upstream head (moved on the last attempt, copied before), the
/// weighted backend's header modifiers.
fn attempt_request(
    parts: &mut Parts,
    body: RequestBody,
    last_attempt: bool,
    weighted: &meshgate_model::rule::WeightedBackend,
) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.headers_mut() = if last_attempt { std::mem::take(&mut parts.headers) } else { parts.headers.clone() };
    weighted.request_headers.apply(req.headers_mut());
    req
}

/// The request body across attempts.
enum Source {
    Empty,
    /// Sent once; given back only if an attempt failed before writing it.
    Once(Option<RequestBody>),
    Replay(ReplayBody),
}

impl Source {
    /// The body for the attempts, with a copy for each mirror (mirrors start here): kept for
    /// replay when a retry may come (`replayable`) and no mirror reads it.
    fn new(
        snapshot: &Snapshot,
        parts: &Parts,
        body: ClientBody,
        mirrors: &[&meshgate_model::rule::Mirror],
        replayable: bool,
        max_body: usize,
    ) -> Self {
        if body.is_end_stream() {
            for mirror in mirrors {
                send_mirror(snapshot, &mirror.backend, parts, RequestBody::Empty);
            }
            Source::Empty
        } else if !mirrors.is_empty() {
            let (tee, copies) = RequestBody::tee(body, mirrors.len());
            for (mirror, copy) in mirrors.iter().zip(copies) {
                send_mirror(snapshot, &mirror.backend, parts, copy);
            }
            Source::Once(Some(tee))
        } else if replayable {
            Source::Replay(ReplayBody::new(body, max_body))
        } else {
            Source::Once(Some(RequestBody::Client { body }))
        }
    }

    fn next_body(&mut self) -> Option<RequestBody> {
        match self {
            Source::Empty => Some(RequestBody::Empty),
            Source::Once(b) => b.take(),
            Source::Replay(r) => r.try_clone().map(|body| RequestBody::Replay { body }),
        }
    }

    fn give_back(&mut self, body: RequestBody) {
        if let Source::Once(slot) = self
            && slot.is_none()
        {
            *slot = Some(body);
        }
    }

    fn can_replay(&self) -> bool {
        match self {
            Source::Empty => true,
            Source::Once(b) => b.is_some(),
            Source::Replay(r) => !r.overflowed(),
        }
    }

    /// True when the body was never sent (so even a non-idempotent request may go again).
    fn is_fresh(&self) -> bool {
        matches!(self, Source::Once(Some(_)))
    }
}
