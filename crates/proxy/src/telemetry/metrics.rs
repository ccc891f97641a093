//! Istio's standard metrics, from the records: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes` and the
//! `istio_tcp_*` counters, with Istio's names, types, buckets and labels (so the queries of
//! Istio's Grafana dashboards and Kiali's graph read them unchanged), and the time spent inside
//! the proxy per request.
//!
//! Series are found by their label values (peers, principals, Service, code, flags: values the
//! configuration and the verified certificates bound, never paths or addresses) in a sharded
//! map; recording is a read lock on one shard and a few atomic adds. The labels' text is made
//! once, when a series is first seen. The number of series is capped: past the cap new label
//! sets are counted as dropped, never stored.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use meshgate_model::peer::{Peer, UNKNOWN};

use super::{ConnRecord, RequestRecord, Role, Security};
use crate::flags::Flags;

/// Envoy's default histogram buckets, which Istio's standard metrics use (milliseconds for
/// durations, bytes for sizes).
pub const ISTIO_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// Buckets for the time inside the proxy (milliseconds): tens of microseconds matter.
pub const PROXY_BUCKETS: [f64; 14] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0];

/// [`ISTIO_BUCKETS`] in micro-units, shared by every series (a table per series would be one
/// more cold cache line read per observation).
static ISTIO_MICRO: [u64; 19] = micro(&ISTIO_BUCKETS);
/// [`PROXY_BUCKETS`] in micro-units.
static PROXY_MICRO: [u64; 14] = micro(&PROXY_BUCKETS);

const fn micro<const N: usize>(bounds: &[f64; N]) -> [u64; N] {
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = (bounds[i] * 1000.0) as u64;
        i += 1;
    }
    out
}

/// At most this many request series (and as many TCP series) per proxy.
pub const MAX_SERIES: usize = 4096;

/// A histogram over fixed buckets; values in micro-units (µs, or bytes × 1000 is not needed:
/// bytes are whole), the sum kept exact.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    /// The bounds in micro-units: counting compares integers.
    micro_bounds: &'static [u64; N],
    /// Per bucket (not cumulative): the count of values at most its bound, above the previous.
    counts: [AtomicU64; N],
    /// Values above every bound.
    over: AtomicU64,
    /// The sum, in micro-units.
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    /// An empty histogram over `bounds` (`micro_bounds`: the same in micro-units).
    fn with(bounds: &'static [f64; N], micro_bounds: &'static [u64; N]) -> Self {
        Histogram {
            bounds,
            micro_bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            over: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts a value given in micro-units (µs for milliseconds buckets).
    #[inline]
    pub fn observe_micros(&self, micros: u64) {
        match self.micro_bounds.iter().position(|b| micros <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts a whole value (bytes).
    pub fn observe(&self, value: u64) {
        self.observe_micros(value.saturating_mul(1000));
    }

    /// The counts so far: cumulative per bucket, then the total.
    pub fn cumulative(&self) -> ([u64; N], u64) {
        let mut out = [0; N];
        let mut acc = 0;
        for (o, c) in out.iter_mut().zip(&self.counts) {
            acc += c.load(Ordering::Relaxed);
            *o = acc;
        }
        (out, acc + self.over.load(Ordering::Relaxed))
    }

    /// The counts per bucket (not cumulative), then above the last; and the sum in micro-units.
    pub fn raw(&self) -> (Vec<u64>, u64) {
        let mut counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        counts.push(self.over.load(Ordering::Relaxed));
        (counts, self.sum.load(Ordering::Relaxed))
    }

    /// The value below which `q` (0..1) of the values fall, interpolated within its bucket
    /// as Prometheus's `histogram_quantile` does; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let (cum, total) = self.cumulative();
        quantile_of(self.bounds, &cum, total, q)
    }

    /// Appends the histogram's Prometheus text (`_bucket`, `_sum`, `_count`) to `out`.
    pub fn write_to(&self, out: &mut String, name: &str, labels: &str) {
        let (cum, total) = self.cumulative();
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(cum) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
}

impl Histogram<19> {
    /// An empty histogram over Istio's (Envoy's) buckets.
    pub fn istio() -> Self {
        Histogram::with(&ISTIO_BUCKETS, &ISTIO_MICRO)
    }
}

impl Histogram<14> {
    /// An empty histogram over the buckets of the time inside the proxy.
    pub fn proxy() -> Self {
        Histogram::with(&PROXY_BUCKETS, &PROXY_MICRO)
    }
}

/// `histogram_quantile` over cumulative bucket counts.
pub fn quantile_of(bounds: &[f64], cumulative: &[u64], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (b, c) in bounds.iter().zip(cumulative) {
        if (*c as f64) >= rank {
            let in_bucket = (c - below) as f64;
            let frac = if in_bucket > 0.0 { (rank - below as f64) / in_bucket } else { 1.0 };
            return Some(lower + (b - lower) * frac);
        }
        below = *c;
        lower = *b;
    }
    // Above the last bound: Prometheus answers the last bound.
    bounds.last().copied()
}

/// A fast hasher for label keys: their values come from the configuration and verified
/// certificates, not from clients, so no keyed hash is needed (Fx, as rustc's).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`FxHasher`]s.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BuildFx;

impl BuildHasher for BuildFx {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher::default()
    }
}

const SHARDS: usize = 16;

/// How a series is found without building its owned key first (on the request path that would
/// be a handful of reference-count changes per request): its hash, whether a stored key is
/// its, and the owned key, made only when the series is new.
pub(crate) trait Lookup<K> {
    /// The hash; equal for every lookup matching the same key.
    fn hash(&self) -> u64;
    /// Whether `key` is the one looked for.
    fn matches(&self, key: &K) -> bool;
    /// The owned key.
    fn to_key(&self) -> K;
}

/// One shard: series by hash, each hash's series (almost always one) compared in turn.
type Shard<K, V> = HashMap<u64, Vec<(K, Arc<V>)>, BuildFx>;

/// Series by label set, in shards, found by hash then compared; bounded.
#[derive(Debug)]
pub(crate) struct Family<K, V> {
    shards: [RwLock<Shard<K, V>>; SHARDS],
    len: AtomicU64,
    dropped: AtomicU64,
}

impl<K: Clone, V> Default for Family<K, V> {
    fn default() -> Self {
        Family {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::with_hasher(BuildFx))),
            len: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

impl<K: Clone, V> Family<K, V> {
    /// Runs `f` on the series `lookup` finds (and its key), made by `make` if it is new (and the
    /// cap allows).
    pub(crate) fn with(&self, lookup: &impl Lookup<K>, make: impl FnOnce(&K) -> V, f: impl FnOnce(&K, &Arc<V>)) {
        let hash = lookup.hash();
        let shard = &self.shards[(hash as usize) % SHARDS];
        if let Ok(map) = shard.read()
            && let Some(bucket) = map.get(&hash)
            && let Some((k, v)) = bucket.iter().find(|(k, _)| lookup.matches(k))
        {
            return f(k, v);
        }
        let Ok(mut map) = shard.write() else { return };
        if let Some((k, v)) = map.get(&hash).and_then(|bucket| bucket.iter().find(|(k, _)| lookup.matches(k))) {
            return f(k, v);
        }
        if self.len.load(Ordering::Relaxed) >= MAX_SERIES as u64 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.len.fetch_add(1, Ordering::Relaxed);
        let key = lookup.to_key();
        let v = Arc::new(make(&key));
        f(&key, &v);
        map.entry(hash).or_default().push((key, v));
    }

    /// Every series (cloned handles: the caller formats without holding a lock).
    pub(crate) fn all(&self) -> Vec<(K, Arc<V>)> {
        let mut out = Vec::new();
        for s in &self.shards {
            if let Ok(map) = s.read() {
                out.extend(map.values().flatten().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        out
    }

    /// Label sets refused because the cap was reached.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Istio's `reporter` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The caller's proxy (a sidecar's outbound side, the gateway).
    Source,
    /// The callee's proxy.
    Destination,
    /// A waypoint (ambient).
    Waypoint,
}

impl Reporter {
    /// The reporter of what `role` handled.
    pub(crate) fn of(role: Role) -> Self {
        match role {
            Role::Gateway | Role::SidecarOutbound => Reporter::Source,
            Role::SidecarInbound => Reporter::Destination,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

/// Who called whom: the labels a request series and a TCP series share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Edge {
    /// Which side reported it.
    pub reporter: Reporter,
    /// The calling workload.
    pub source: Option<Arc<Peer>>,
    /// Its SPIFFE ID.
    pub source_principal: Option<Arc<str>>,
    /// The called workload.
    pub destination: Option<Arc<Peer>>,
    /// Its SPIFFE ID.
    pub destination_principal: Option<Arc<str>>,
    /// The Service called (`namespace/name:port`).
    pub service: Option<Arc<str>>,
}

impl Edge {
    fn labels(&self, l: &mut Labels) {
        l.push("reporter", self.reporter.as_str());
        l.peer("source", self.source.as_deref(), self.source_principal.as_deref());
        l.peer("destination", self.destination.as_deref(), self.destination_principal.as_deref());
        l.service(self.service.as_deref());
    }
}

/// The labels of one request series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// Who called whom.
    pub edge: Edge,
    /// A gRPC call.
    pub grpc: bool,
    /// The response status.
    pub code: u16,
    /// The gRPC status.
    pub grpc_status: Option<u16>,
    /// The response flags.
    pub flags: Flags,
    /// How the hop was secured.
    pub security: Option<Security>,
}

/// Whether two shared values are equal: the same allocation (the usual case: both come from
/// the same configuration), else by content (a reload made a new one with the same value).
fn same<T: PartialEq + ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
        (None, None) => true,
        _ => false,
    }
}

/// A request record, as the key of its series.
struct RequestLookup<'a>(&'a RequestRecord);

impl Lookup<RequestKey> for RequestLookup<'_> {
    fn hash(&self) -> u64 {
        let r = self.0;
        let mut h = FxHasher::default();
        (Reporter::of(r.role), r.source_workload.as_deref(), r.source.as_deref()).hash(&mut h);
        (r.destination_workload.as_deref(), r.destination.as_deref(), r.backend.as_deref()).hash(&mut h);
        (r.grpc, r.status, r.grpc_status, r.flags, r.security).hash(&mut h);
        h.finish()
    }

    fn matches(&self, k: &RequestKey) -> bool {
        let r = self.0;
        let e = &k.edge;
        k.code == r.status
            && k.flags == r.flags
            && k.security == r.security
            && k.grpc == r.grpc
            && k.grpc_status == r.grpc_status
            && e.reporter == Reporter::of(r.role)
            && same(&e.source, &r.source_workload)
            && same(&e.destination, &r.destination_workload)
            && same(&e.source_principal, &r.source)
            && same(&e.destination_principal, &r.destination)
            && same(&e.service, &r.backend)
    }

    fn to_key(&self) -> RequestKey {
        RequestKey::of(self.0)
    }
}

impl Lookup<TcpKey> for TcpKey {
    fn hash(&self) -> u64 {
        BuildFx.hash_one(self)
    }

    fn matches(&self, key: &TcpKey) -> bool {
        self == key
    }

    fn to_key(&self) -> TcpKey {
        self.clone()
    }
}

impl RequestKey {
    fn of(r: &RequestRecord) -> Self {
        RequestKey {
            edge: Edge {
                reporter: Reporter::of(r.role),
                source: r.source_workload.clone(),
                source_principal: r.source.clone(),
                destination: r.destination_workload.clone(),
                destination_principal: r.destination.clone(),
                service: r.backend.clone(),
            },
            grpc: r.grpc,
            code: r.status,
            grpc_status: r.grpc_status,
            flags: r.flags,
            security: r.security,
        }
    }

    fn labels(&self) -> String {
        let mut l = Labels::default();
        self.edge.labels(&mut l);
        l.push("request_protocol", if self.grpc { "grpc" } else { "http" });
        l.push("response_code", &self.code.to_string());
        l.push("grpc_response_status", &self.grpc_status.map(|s| s.to_string()).unwrap_or_default());
        l.push("response_flags", &self.flags.to_string());
        l.push("connection_security_policy", security_policy(self.security));
        l.0
    }
}

/// The labels of one TCP series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpKey {
    /// Who called whom.
    pub edge: Edge,
    /// Why it ended the way it did.
    pub flags: Flags,
    /// How it was secured.
    pub security: Security,
}

impl TcpKey {
    fn labels(&self) -> String {
        let mut l = Labels::default();
        self.edge.labels(&mut l);
        l.push("request_protocol", "tcp");
        l.push("response_flags", &self.flags.to_string());
        l.push("connection_security_policy", security_policy(Some(self.security)));
        l.0
    }
}

fn security_policy(s: Option<Security>) -> &'static str {
    match s {
        Some(Security::Mutual) => "mutual_tls",
        Some(Security::Tls | Security::Plaintext(_)) => "none",
        None => UNKNOWN,
    }
}

/// Prometheus label text, built once per series.
#[derive(Default)]
struct Labels(String);

impl Labels {
    fn push(&mut self, name: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        self.0.push_str(name);
        self.0.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    fn peer(&mut self, side: &str, peer: Option<&Peer>, principal: Option<&str>) {
        let unknown = Peer::unknown();
        let p = peer.unwrap_or(&unknown);
        self.push(&format!("{side}_workload"), &p.workload);
        self.push(&format!("{side}_workload_namespace"), &p.namespace);
        self.push(&format!("{side}_principal"), principal.unwrap_or(UNKNOWN));
        self.push(&format!("{side}_app"), &p.app);
        self.push(&format!("{side}_version"), &p.version);
        // Kiali's graph groups by the canonical service and revision.
        let canonical = if &*p.app == UNKNOWN { &p.workload } else { &p.app };
        self.push(&format!("{side}_canonical_service"), canonical);
        self.push(&format!("{side}_canonical_revision"), if &*p.version == UNKNOWN { "latest" } else { &p.version });
        self.push(&format!("{side}_cluster"), "Kubernetes");
    }

    fn service(&mut self, backend: Option<&str>) {
        match backend.and_then(split_backend) {
            Some((ns, name)) => {
                self.push("destination_service", &service_host(ns, name));
                self.push("destination_service_name", name);
                self.push("destination_service_namespace", ns);
            }
            None => {
                self.push("destination_service", UNKNOWN);
                self.push("destination_service_name", UNKNOWN);
                self.push("destination_service_namespace", UNKNOWN);
            }
        }
    }
}

/// The host name of Service `ns/name`, as Istio's `destination_service` names it.
pub fn service_host(ns: &str, name: &str) -> String {
    format!("{name}.{ns}.svc.cluster.local")
}

/// Appends the `# HELP` and `# TYPE` lines of metric `name` to `out`.
pub fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// `namespace/name:port` → (namespace, name).
pub fn split_backend(id: &str) -> Option<(&str, &str)> {
    let (ns, rest) = id.split_once('/')?;
    let name = rest.rsplit_once(':').map_or(rest, |(n, _)| n);
    Some((ns, name))
}

/// One request series.
#[derive(Debug)]
pub struct RequestSeries {
    labels: String,
    /// `istio_requests_total`.
    pub count: AtomicU64,
    /// `istio_request_duration_milliseconds`.
    pub duration: Histogram<19>,
    /// `istio_request_bytes`.
    pub request_bytes: Histogram<19>,
    /// `istio_response_bytes`.
    pub response_bytes: Histogram<19>,
    /// `meshgate_proxy_duration_milliseconds`.
    pub proxy: Histogram<14>,
}

impl RequestSeries {
    fn new(key: &RequestKey) -> Self {
        RequestSeries {
            labels: key.labels(),
            count: AtomicU64::new(0),
            duration: Histogram::istio(),
            request_bytes: Histogram::istio(),
            response_bytes: Histogram::istio(),
            proxy: Histogram::proxy(),
        }
    }
}

/// One TCP series.
#[derive(Debug)]
pub struct TcpSeries {
    labels: String,
    /// Connections opened.
    pub opened: AtomicU64,
    /// Connections closed.
    pub closed: AtomicU64,
    /// Bytes the downstream sent.
    pub sent: AtomicU64,
    /// Bytes the downstream received.
    pub received: AtomicU64,
}

/// The metrics of one proxy.
#[derive(Debug)]
pub struct Metrics {
    /// Tells this proxy's series from another's in the threads' caches (several proxies run in
    /// one process in tests; an address could be reused).
    id: u64,
    requests: Family<RequestKey, RequestSeries>,
    tcp: Family<TcpKey, TcpSeries>,
}

impl Default for Metrics {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Metrics { id: NEXT.fetch_add(1, Ordering::Relaxed), requests: Family::default(), tcp: Family::default() }
    }
}

/// The series of the last few requests each runtime thread counted, by proxy: a request like
/// one before it (the same caller, callee, code and flags: the common case on a keep-alive
/// connection) is counted without hashing its labels or taking a shard's lock — fewer cold
/// cache lines per request at moderate load, where that is what telemetry costs.
type Recent = [Option<(u64, RequestKey, Arc<RequestSeries>)>; RECENT];
const RECENT: usize = 4;

thread_local! {
    static RECENT_SERIES: std::cell::RefCell<Recent> = const { std::cell::RefCell::new([const { None }; RECENT]) };
}

impl RequestSeries {
    fn observe(&self, r: &RequestRecord) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.duration.observe_micros(micros(r.duration));
        self.request_bytes.observe(r.request_bytes);
        self.response_bytes.observe(r.response_bytes);
        self.proxy.observe_micros(micros(r.proxy_time));
    }
}

impl Metrics {
    /// Counts a request.
    pub fn request(&self, r: &RequestRecord) {
        let lookup = RequestLookup(r);
        let counted = RECENT_SERIES.with(|recent| {
            let Ok(recent) = recent.try_borrow() else { return false };
            match recent.iter().flatten().find(|(id, k, _)| *id == self.id && lookup.matches(k)) {
                Some((_, _, series)) => {
                    series.observe(r);
                    true
                }
                None => false,
            }
        });
        if counted {
            return;
        }
        self.requests.with(&lookup, RequestSeries::new, |k, s| {
            s.observe(r);
            RECENT_SERIES.with(|recent| {
                if let Ok(mut recent) = recent.try_borrow_mut() {
                    recent.rotate_right(1);
                    recent[0] = Some((self.id, k.clone(), s.clone()));
                }
            });
        });
    }

    /// Counts an opaque TCP connection (HTTP connections are counted by their requests, as
    /// Istio does).
    pub fn connection(&self, c: &ConnRecord) {
        if !c.opaque {
            return;
        }
        let key = TcpKey {
            edge: Edge {
                reporter: Reporter::of(c.role),
                source: c.source_workload.clone(),
                source_principal: match c.role {
                    Role::SidecarInbound => c.peer_identity.clone(),
                    _ => c.source.clone(),
                },
                destination: c.destination_workload.clone(),
                destination_principal: c.destination.clone(),
                service: c.backend.clone(),
            },
            flags: c.flags,
            security: c.security,
        };
        let make = |k: &TcpKey| TcpSeries {
            labels: k.labels(),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        };
        self.tcp.with(&key, make, |_, s| {
            s.opened.fetch_add(1, Ordering::Relaxed);
            s.closed.fetch_add(1, Ordering::Relaxed);
            // Istio's sent bytes are those the downstream sent (request direction).
            s.sent.fetch_add(c.bytes_in, Ordering::Relaxed);
            s.received.fetch_add(c.bytes_out, Ordering::Relaxed);
        });
    }

    /// Every request series: its labels and counters.
    pub fn request_series(&self) -> Vec<(RequestKey, Arc<RequestSeries>)> {
        self.requests.all()
    }

    /// Every TCP series.
    pub fn tcp_series(&self) -> Vec<(TcpKey, Arc<TcpSeries>)> {
        self.tcp.all()
    }

    /// Appends the Prometheus text exposition of every series to `out`.
    pub fn render(&self, out: &mut String) {
        let requests = self.requests.all();
        let tcp = self.tcp.all();
        help(out, "istio_requests_total", "counter", "Requests handled, by source, destination and response.");
        for (_, s) in &requests {
            let _ = writeln!(out, "istio_requests_total{{{}}} {}", s.labels, s.count.load(Ordering::Relaxed));
        }
        help(
            out,
            "istio_request_duration_milliseconds",
            "histogram",
            "Request duration, arrival to the end of the response.",
        );
        for (_, s) in &requests {
            s.duration.write_to(out, "istio_request_duration_milliseconds", &s.labels);
        }
        help(out, "istio_request_bytes", "histogram", "Request body sizes.");
        for (_, s) in &requests {
            s.request_bytes.write_to(out, "istio_request_bytes", &s.labels);
        }
        help(out, "istio_response_bytes", "histogram", "Response body sizes.");
        for (_, s) in &requests {
            s.response_bytes.write_to(out, "istio_response_bytes", &s.labels);
        }
        help(
            out,
            "meshgate_proxy_duration_milliseconds",
            "histogram",
            "Time spent inside this proxy per request, excluding upstream waits and configured delays.",
        );
        for (_, s) in &requests {
            s.proxy.write_to(out, "meshgate_proxy_duration_milliseconds", &s.labels);
        }
        type Field = fn(&TcpSeries) -> &AtomicU64;
        let counters: [(&str, &str, Field); 4] = [
            ("istio_tcp_sent_bytes_total", "Bytes the downstream sent on opaque TCP connections.", |s| &s.sent),
            ("istio_tcp_received_bytes_total", "Bytes the downstream received on opaque TCP connections.", |s| {
                &s.received
            }),
            ("istio_tcp_connections_opened_total", "Opaque TCP connections opened.", |s| &s.opened),
            ("istio_tcp_connections_closed_total", "Opaque TCP connections closed.", |s| &s.closed),
        ];
        for (name, text, field) in counters {
            help(out, name, "counter", text);
            for (_, s) in &tcp {
                let _ = writeln!(out, "{name}{{{}}} {}", s.labels, field(s).load(Ordering::Relaxed));
            }
        }
        help(
            out,
            "meshgate_metrics_series_dropped_total",
            "counter",
            "Label sets not recorded: the series cap was reached.",
        );
        let _ = writeln!(out, "meshgate_metrics_series_dropped_total {}", self.requests.dropped() + self.tcp.dropped());
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantile() {
        let h = Histogram::istio();
        for ms in [0.3, 0.7, 3.0, 3.0, 7.0, 2000.0] {
            h.observe_micros((ms * 1000.0) as u64);
        }
        let (cum, total) = h.cumulative();
        assert_eq!((cum[0], cum[1], cum[2], cum[3], total), (1, 2, 4, 5, 6));
        // Half of 6 is the 3rd value: in the (1, 5] bucket, halfway.
        let p50 = h.quantile(0.5).unwrap_or_default();
        assert!((p50 - 3.0).abs() < 1e-9, "{p50}");
        let mut out = String::new();
        h.write_to(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.5\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 6\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 6\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 2014\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut l = Labels::default();
        l.push("a", "x\"y\\z\n");
        assert_eq!(l.0, "a=\"x\\\"y\\\\z\\n\"");
    }

    fn record(status: u16, backend: &str) -> RequestRecord {
        RequestRecord { backend: Some(backend.into()), ..crate::telemetry::test_record(status) }
    }

    fn counts(m: &Metrics) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = m
            .requests
            .all()
            .iter()
            .map(|(k, s)| {
                (format!("{} {}", k.code, k.edge.service.as_deref().unwrap_or("")), s.count.load(Ordering::Relaxed))
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_threads_recent_series_count_for_their_own_proxy_only() {
        let (a, b) = (Metrics::default(), Metrics::default());
        // More series than the cache holds, interleaved, on two proxies of one thread.
        for round in 0..3 {
            for code in [200, 404, 500, 503, 502, 200] {
                a.request(&record(code, "ns/x:80"));
                if round > 0 {
                    b.request(&record(code, "ns/y:80"));
                }
            }
        }
        let want = |svc: &str, n: u64| -> Vec<(String, u64)> {
            let mut v: Vec<(String, u64)> = [200, 404, 500, 502, 503]
                .iter()
                .map(|c| (format!("{c} {svc}"), if *c == 200 { 2 * n } else { n }))
                .collect();
            v.sort();
            v
        };
        assert_eq!(counts(&a), want("ns/x:80", 3));
        assert_eq!(counts(&b), want("ns/y:80", 2));
        // Another thread counts into the same series.
        std::thread::scope(|t| {
            t.spawn(|| a.request(&record(200, "ns/x:80")));
        });
        assert_eq!(counts(&a)[0], ("200 ns/x:80".to_string(), 7));
    }

    #[test]
    fn backend_ids_split() {
        assert_eq!(split_backend("lab/inventory:8080"), Some(("lab", "inventory")));
        assert_eq!(split_backend("nope"), None);
    }
}
