//! meshgate's own policy kinds (`meshgate.io/v1alpha1`): `TrafficPolicy` (how requests to a
//! Service are balanced, timed out, retried, limited and ejected) and `FaultInjection`
//! (delays and aborts, attached to an HTTPRoute rule through an `ExtensionRef` filter).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Traffic policy for one or more Services (or one port of a Service).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Always `meshgate.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Always `TrafficPolicy`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: TrafficPolicySpec,
}

/// What a TrafficPolicy sets. Every section is optional; unset fields keep their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Services this policy applies to (same namespace as the policy).
    pub target_refs: Vec<PolicyTargetRef>,
    /// How an endpoint is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Time limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Circuit breaking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limits: Option<ConnectionLimits>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// A reference to the Service a policy applies to, optionally one of its ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// API group: "" (core).
    #[serde(default)]
    pub group: String,
    /// Kind: `Service`.
    pub kind: String,
    /// Service name.
    pub name: String,
    /// Service port number: the policy applies to this port only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// `LeastRequest` (power of two choices on peak-EWMA latency × in-flight requests, the
    /// default), `RoundRobin`, `Random` or `ConsistentHash`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<LoadBalancerType>,
    /// The key for `ConsistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

/// Load-balancing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadBalancerType {
    /// P2C on peak-EWMA latency and in-flight requests.
    LeastRequest,
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Maglev consistent hashing on a request key.
    ConsistentHash,
}

/// What consistent hashing hashes: exactly one of these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    /// A request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The client's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

/// Time limits (Gateway API duration strings: `10s`, `250ms`, `1m`). `0s` disables one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Whole request, all attempts included (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Each attempt, until response headers (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<String>,
    /// TCP connect (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Idle upstream connections are closed after this (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
}

/// Retries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Retries after the first attempt (default 2; 0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    /// Response codes that are retried (default 502, 503, 504). Connect failures and resets
    /// before a response are always retryable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<i64>>,
    /// First backoff (default 25ms); doubles per retry with full jitter, up to 10× the base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// Largest request body kept for replay (default 64 KiB); a longer body is not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<i64>,
    /// Retry budget: keeps retries from amplifying an outage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

/// A retry is granted while the retries in flight stay within `percent` of the requests in
/// flight, or below `minRetryConcurrency` (as Envoy's `retry_budget`), or from an allowance of
/// `minRetriesPerSecond`. A budget exists to stop retry storms under load, which need many
/// requests in flight; a caller with a few requests in flight retries freely (each of its
/// requests is still bounded by `attempts`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Percent of active requests (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Retries in flight always allowed, whatever the share (default 3, as Envoy's
    /// `min_retry_concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<i64>,
    /// Retries per second allowed beyond the share (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<i64>,
}

/// Circuit breaking per Service port: overflow is answered at once with 503 (flag UO).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionLimits {
    /// Upstream connections (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    /// Requests waiting for a connection or an endpoint (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<i64>,
    /// Requests in flight (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<i64>,
}

/// Endpoints failing in a row are ejected for `baseEjectionTime` × times ejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx responses (including gateway errors) that eject (default 5; 0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<i64>,
    /// Consecutive gateway errors (502, 503, 504, connect failures, resets) (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<i64>,
    /// Consecutive connect failures (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_connect_failures: Option<i64>,
    /// First ejection length (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Longest ejection (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<String>,
    /// At most this percent of endpoints ejected at once (default 10; at least one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i64>,
}

/// Faults injected into requests that match a rule (for testing resilience).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultInjection {
    /// Always `meshgate.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Always `FaultInjection`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The faults.
    pub spec: FaultInjectionSpec,
}

/// A delay, an abort, or both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultInjectionSpec {
    /// Delay requests before they are forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer requests with an error instead of forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A fixed delay for a share of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long (Gateway API duration).
    pub fixed_delay: String,
    /// Share of requests, 0..100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
}

/// An error response for a share of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// Status code, 200..599.
    pub http_status: i64,
    /// Share of requests, 0..100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
}

/// What an HTTPRoute rule needs that Gateway API's own filters cannot say, attached through an
/// `ExtensionRef` filter (group `meshgate.io`, kind `HTTPRouteFilter`): a regular-expression
/// path rewrite, a request body limit, the client address ranges allowed, the backend's
/// protocol. The shape follows Envoy Gateway's HTTPRouteFilter where it has the field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// Always `meshgate.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Always `HTTPRouteFilter`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the filter does; every field optional.
    pub spec: HttpRouteFilterSpec,
}

/// The parts of an HTTPRouteFilter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilterSpec {
    /// A path rewrite by regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<RegexUrlRewrite>,
    /// Requests with a longer body are answered 413 (`0`: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
    /// Only clients from these address ranges (CIDR, or one address) are served; others get 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_ranges: Option<Vec<String>>,
    /// How the rule's backends are spoken to: `HTTP1` (the Service port's appProtocol decides,
    /// the default) or `HTTP2` (prior knowledge; over TLS when a BackendTLSPolicy says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<String>,
}

/// `urlRewrite` of an HTTPRouteFilter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegexUrlRewrite {
    /// The path change.
    pub path: RegexPathModifier,
}

/// `urlRewrite.path`: `type: ReplaceRegexMatch` with its `replaceRegexMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegexPathModifier {
    /// `ReplaceRegexMatch`.
    pub r#type: String,
    /// The pattern and its substitution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_regex_match: Option<ReplaceRegexMatch>,
}

/// Every match of `pattern` in the path is replaced with `substitution`, in which `$1`/`${1}`
/// or `${name}` stand for the pattern's capture groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplaceRegexMatch {
    /// A regular expression (RE2 syntax), matched against the path without the query.
    pub pattern: String,
    /// The replacement.
    pub substitution: String,
}

/// How a Gateway's listeners take connections: PROXY protocol, timeouts, a connection limit.
/// What Envoy Gateway's ClientTrafficPolicy sets, for meshgate's gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerPolicy {
    /// Always `meshgate.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// Always `ListenerPolicy`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The settings.
    pub spec: ListenerPolicySpec,
}

/// What a ListenerPolicy sets; unset fields keep the gateway's defaults (its flags).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerPolicySpec {
    /// The Gateways (same namespace), or one listener of one (`sectionName`).
    pub target_refs: Vec<ListenerTargetRef>,
    /// Accept the PROXY protocol (v1 or v2) from the load balancer in front: the client's
    /// address is the one its header carries. Connections without a valid header are closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Time an HTTP/1.1 client has to send a request head (a Gateway API duration; `0s`: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<String>,
    /// A connection that moves no byte for this long is closed (`0s`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Most connections open at once on the listener's port; more are closed on accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// PROXY protocol settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyProtocol {
    /// Require a PROXY header on every connection.
    pub enabled: bool,
}

/// A Gateway, or one of its listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTargetRef {
    /// `gateway.networking.k8s.io`.
    #[serde(default)]
    pub group: String,
    /// `Gateway`.
    pub kind: String,
    /// The Gateway's name.
    pub name: String,
    /// One listener of it (all when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}
