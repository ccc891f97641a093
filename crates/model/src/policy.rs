//! Compiled traffic policy: what a TrafficPolicy (per Service port) and an HTTPRoute rule's
//! `timeouts`/`retry` (per route) say, with every default filled in.
//!
//! Precedence, most specific first, field by field:
//! 1. the HTTPRoute rule's `timeouts.request`, `timeouts.backendRequest` (per try) and `retry`
//!    (`attempts`, `codes`, `backoff`);
//! 2. a TrafficPolicy targeting the Service *port*;
//! 3. a TrafficPolicy targeting the whole Service;
//! 4. meshgate's defaults.
//!
//! Two policies at the same level for the same target do not merge: the older one (creation
//! time, then namespace/name) applies and the other is reported `Conflicted`.

use std::time::Duration;

use http::HeaderName;
use meshgate_api::policy::{LoadBalancerType, TrafficPolicySpec};
use meshgate_api::validate::syntax::gateway_duration;
use serde::{Serialize, Serializer};

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{}ms", d.as_millis()))
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// How consistent hashing finds its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// The client address.
    SourceIp,
}

impl Serialize for HashKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HashKey::Header(h) => s.collect_str(&format_args!("header:{h}")),
            HashKey::Cookie(c) => s.collect_str(&format_args!("cookie:{c}")),
            HashKey::SourceIp => s.serialize_str("sourceIP"),
        }
    }
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Lb {
    /// P2C on peak-EWMA latency × (in-flight + 1).
    LeastRequest,
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Maglev on a key.
    ConsistentHash(HashKey),
}

/// Retry settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Status codes retried.
    pub codes: Vec<u16>,
    /// First backoff.
    #[serde(serialize_with = "ser_duration")]
    pub backoff: Duration,
    /// Longest backoff.
    #[serde(serialize_with = "ser_duration")]
    pub max_backoff: Duration,
    /// Largest body kept for replay.
    pub max_body_bytes: usize,
    /// Retries in flight ≤ this fraction of requests in flight…
    pub budget_ratio: f64,
    /// …or below this many…
    pub budget_min_concurrency: u32,
    /// …or this many retries per second.
    pub budget_min_per_second: u32,
}

/// Circuit-breaking limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Upstream connections.
    pub max_connections: usize,
    /// Requests waiting.
    pub max_pending: usize,
    /// Requests in flight.
    pub max_requests: usize,
}

/// Outlier detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    /// Consecutive 5xx that eject (0 = off).
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors that eject (0 = off).
    pub consecutive_gateway: u32,
    /// Consecutive connect failures that eject (0 = off).
    pub consecutive_connect: u32,
    /// First ejection.
    #[serde(serialize_with = "ser_duration")]
    pub base_ejection: Duration,
    /// Longest ejection.
    #[serde(serialize_with = "ser_duration")]
    pub max_ejection: Duration,
    /// Most endpoints ejected at once, percent (at least one).
    pub max_ejection_percent: u32,
}

/// Everything about how requests to one Service port are sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicy {
    /// Endpoint choice.
    pub load_balancer: Lb,
    /// Whole request (None: no limit).
    #[serde(serialize_with = "ser_opt_duration")]
    pub request_timeout: Option<Duration>,
    /// Each attempt until response headers (None: no limit).
    #[serde(serialize_with = "ser_opt_duration")]
    pub per_try_timeout: Option<Duration>,
    /// TCP connect.
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Idle upstream connections are closed after this.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Retries.
    pub retry: RetryPolicy,
    /// Circuit breaking.
    pub limits: Limits,
    /// Ejection of failing endpoints (None: off).
    pub outlier: Option<Outlier>,
    /// The TrafficPolicies that set this, for `config_dump`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

impl Default for BackendPolicy {
    fn default() -> Self {
        BackendPolicy {
            load_balancer: Lb::LeastRequest,
            request_timeout: None,
            per_try_timeout: None,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            retry: RetryPolicy {
                attempts: 2,
                codes: vec![502, 503, 504],
                backoff: Duration::from_millis(25),
                max_backoff: Duration::from_millis(250),
                max_body_bytes: 64 * 1024,
                budget_ratio: 0.2,
                budget_min_concurrency: 3,
                budget_min_per_second: 10,
            },
            limits: Limits { max_connections: 1024, max_pending: 1024, max_requests: 1024 },
            outlier: None,
            from: Vec::new(),
        }
    }
}

fn dur(v: Option<&String>) -> Option<Duration> {
    v.and_then(|s| gateway_duration(s).ok())
}

fn nonzero(d: Option<Duration>) -> Option<Option<Duration>> {
    d.map(|d| (!d.is_zero()).then_some(d))
}

fn count(v: Option<i64>) -> Option<usize> {
    v.and_then(|n| usize::try_from(n).ok())
}

impl BackendPolicy {
    /// Layers `spec` over this policy: every field `spec` sets replaces ours.
    pub fn layer(&mut self, name: String, spec: &TrafficPolicySpec) {
        self.from.push(name);
        if let Some(lb) = &spec.load_balancer {
            self.load_balancer = match lb.type_ {
                Some(LoadBalancerType::RoundRobin) => Lb::RoundRobin,
                Some(LoadBalancerType::Random) => Lb::Random,
                Some(LoadBalancerType::LeastRequest) | None => Lb::LeastRequest,
                Some(LoadBalancerType::ConsistentHash) => {
                    let h = lb.consistent_hash.clone().unwrap_or_default();
                    match (h.header, h.cookie) {
                        (Some(header), _) => HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
                            .map_or(Lb::LeastRequest, |n| Lb::ConsistentHash(HashKey::Header(n))),
                        (None, Some(cookie)) => Lb::ConsistentHash(HashKey::Cookie(cookie)),
                        (None, None) => Lb::ConsistentHash(HashKey::SourceIp),
                    }
                }
            };
        }
        if let Some(t) = &spec.timeouts {
            if let Some(d) = nonzero(dur(t.request.as_ref())) {
                self.request_timeout = d;
            }
            if let Some(d) = nonzero(dur(t.per_try.as_ref())) {
                self.per_try_timeout = d;
            }
            if let Some(d) = dur(t.connect.as_ref()).filter(|d| !d.is_zero()) {
                self.connect_timeout = d;
            }
            if let Some(d) = dur(t.idle.as_ref()) {
                self.idle_timeout = d;
            }
        }
        if let Some(r) = &spec.retry {
            if let Some(n) = r.attempts.and_then(|n| u32::try_from(n).ok()) {
                self.retry.attempts = n;
            }
            if let Some(codes) = &r.codes {
                self.retry.codes = codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect();
            }
            if let Some(b) = dur(r.backoff.as_ref()) {
                self.retry.backoff = b;
                self.retry.max_backoff = b * 10;
            }
            if let Some(n) = count(r.max_body_bytes) {
                self.retry.max_body_bytes = n;
            }
            if let Some(b) = &r.budget {
                if let Some(p) = b.percent {
                    self.retry.budget_ratio = p / 100.0;
                }
                if let Some(n) = b.min_retries_per_second.and_then(|n| u32::try_from(n).ok()) {
                    self.retry.budget_min_per_second = n;
                }
                if let Some(n) = b.min_retry_concurrency.and_then(|n| u32::try_from(n).ok()) {
                    self.retry.budget_min_concurrency = n;
                }
            }
        }
        if let Some(l) = &spec.connection_limits {
            if let Some(n) = count(l.max_connections) {
                self.limits.max_connections = n;
            }
            if let Some(n) = count(l.max_pending_requests) {
                self.limits.max_pending = n;
            }
            if let Some(n) = count(l.max_requests) {
                self.limits.max_requests = n;
            }
        }
        if let Some(o) = &spec.outlier_detection {
            let mut out = self.outlier.clone().unwrap_or(Outlier {
                consecutive_5xx: 5,
                consecutive_gateway: 5,
                consecutive_connect: 5,
                base_ejection: Duration::from_secs(30),
                max_ejection: Duration::from_secs(300),
                max_ejection_percent: 10,
            });
            let n = |v: Option<i64>| v.and_then(|n| u32::try_from(n).ok());
            if let Some(v) = n(o.consecutive_5xx) {
                out.consecutive_5xx = v;
            }
            if let Some(v) = n(o.consecutive_gateway_errors) {
                out.consecutive_gateway = v;
            }
            if let Some(v) = n(o.consecutive_connect_failures) {
                out.consecutive_connect = v;
            }
            if let Some(d) = dur(o.base_ejection_time.as_ref()) {
                out.base_ejection = d;
                out.max_ejection = out.max_ejection.max(d);
            }
            if let Some(d) = dur(o.max_ejection_time.as_ref()) {
                out.max_ejection = d;
            }
            if let Some(v) = n(o.max_ejection_percent) {
                out.max_ejection_percent = v;
            }
            self.outlier = Some(out);
        }
    }
}

/// What an HTTPRoute rule overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutePolicy {
    /// `timeouts.request`: `Some(None)` disables the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Option<Duration>>,
    /// `timeouts.backendRequest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Option<Duration>>,
    /// `retry.attempts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_attempts: Option<u32>,
    /// `retry.codes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_codes: Option<Vec<u16>>,
    /// `retry.backoff`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<Duration>,
}

impl RoutePolicy {
    /// From an HTTPRoute rule's `timeouts` and `retry`.
    pub fn from_rule(rule: &meshgate_api::gw::httproutes::HttpRouteRules) -> Self {
        let mut p = RoutePolicy::default();
        if let Some(t) = &rule.timeouts {
            p.request_timeout = nonzero(dur(t.request.as_ref()));
            p.per_try_timeout = nonzero(dur(t.backend_request.as_ref()));
        }
        if let Some(r) = &rule.retry {
            p.retry_attempts = r.attempts.and_then(|n| u32::try_from(n).ok());
            p.retry_codes = r.codes.as_ref().map(|c| c.iter().filter_map(|c| u16::try_from(*c).ok()).collect());
            p.retry_backoff = dur(r.backoff.as_ref());
        }
        p
    }

    /// True when the rule overrides nothing.
    pub fn is_empty(&self) -> bool {
        *self == RoutePolicy::default()
    }
}

/// Faults injected by a rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Delay and the share of requests delayed (0..=1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<(u64, f64)>,
    /// Abort status and the share of requests aborted (0..=1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<(u16, f64)>,
}

impl Fault {
    /// From a FaultInjection spec.
    pub fn from_spec(spec: &meshgate_api::policy::FaultInjectionSpec) -> Self {
        Fault {
            delay: spec.delay.as_ref().and_then(|d| {
                let t = gateway_duration(&d.fixed_delay).ok()?;
                Some((u64::try_from(t.as_millis()).unwrap_or(u64::MAX), d.percentage.unwrap_or(100.0) / 100.0))
            }),
            abort: spec
                .abort
                .as_ref()
                .and_then(|a| Some((u16::try_from(a.http_status).ok()?, a.percentage.unwrap_or(100.0) / 100.0))),
        }
    }
}
