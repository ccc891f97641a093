//! The live service graph: proxies stream edge statistics (`Telemetry.Report`), the control
//! plane keeps them in 5-second slots for ten minutes and answers `GET /api/graph?window=60s`
//! with nodes and edges: request rate, success rate, latency percentiles, bytes, how the hop is
//! secured (and why not, for plaintext), and the share of the latency the proxies themselves
//! added.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshgate_proto::meshgate::{EdgeReport, EdgeStats, PeerInfo};
use meshgate_proxy::telemetry::metrics::{ISTIO_BUCKETS, PROXY_BUCKETS, quantile_of};
use meshgate_proxy::telemetry::report::add;
use serde_json::{Value, json};

/// Width of one slot.
const SLOT_SECS: u64 = 5;
/// Slots kept (ten minutes).
const SLOTS: usize = 120;
/// Edges kept per slot, at most (the rest are counted as dropped).
const MAX_EDGES: usize = 20_000;
/// The longest window a query may ask for.
pub const MAX_WINDOW: Duration = Duration::from_secs(SLOT_SECS * SLOTS as u64);

/// What identifies an edge as one proxy reported it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct EdgeId {
    reporter: String,
    source: String,
    destination: String,
    service: String,
    protocol: String,
}

/// An edge's statistics summed over reports.
#[derive(Debug, Default, Clone)]
struct Agg {
    requests: u64,
    errors: u64,
    connections: u64,
    latency: Vec<u64>,
    proxy: Vec<u64>,
    latency_sum_us: u64,
    proxy_sum_us: u64,
    request_bytes: u64,
    response_bytes: u64,
    /// How many requests (or connections) went by each security (`mutual_tls`, `none:Permissive`).
    security: BTreeMap<String, u64>,
    source_principal: String,
    destination_principal: String,
}

impl Agg {
    fn merge(&mut self, e: &EdgeStats) {
        let sec = if e.plaintext_reason.is_empty() {
            e.security.clone()
        } else {
            format!("{}:{}", e.security, e.plaintext_reason)
        };
        self.add_agg(&Agg {
            requests: e.requests,
            errors: e.errors,
            connections: e.connections,
            latency: e.latency.clone(),
            proxy: e.proxy.clone(),
            latency_sum_us: e.latency_sum_us,
            proxy_sum_us: e.proxy_sum_us,
            request_bytes: e.request_bytes,
            response_bytes: e.response_bytes,
            security: BTreeMap::from([(sec, e.requests + e.connections)]),
            source_principal: e.source_principal.clone(),
            destination_principal: e.destination_principal.clone(),
        });
    }

    fn add_agg(&mut self, o: &Agg) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.connections += o.connections;
        add(&mut self.latency, &o.latency);
        add(&mut self.proxy, &o.proxy);
        self.latency_sum_us += o.latency_sum_us;
        self.proxy_sum_us += o.proxy_sum_us;
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
        for (k, v) in &o.security {
            *self.security.entry(k.clone()).or_insert(0) += v;
        }
        if !o.source_principal.is_empty() {
            self.source_principal.clone_from(&o.source_principal);
        }
        if !o.destination_principal.is_empty() {
            self.destination_principal.clone_from(&o.destination_principal);
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    epoch: u64,
    edges: HashMap<EdgeId, Agg>,
}

/// What a node is.
#[derive(Debug, Clone, Default)]
struct NodeInfo {
    kind: &'static str,
    workload: String,
    namespace: String,
    app: String,
    version: String,
}

/// The service graph of one control-plane replica.
#[derive(Debug, Default)]
pub struct Graph {
    slots: Mutex<VecDeque<Slot>>,
    nodes: Mutex<HashMap<String, NodeInfo>>,
    dropped: std::sync::atomic::AtomicU64,
    /// Reports the proxies said they dropped (their stream to us was behind).
    reports_dropped: std::sync::atomic::AtomicU64,
    /// The slot of the first report (0: none yet): the graph covers the time since. Not the
    /// oldest slot in the window: proxies with nothing to say send no report, so a quiet
    /// minute leaves no slot, and the rates would be divided by too few seconds.
    first_epoch: std::sync::atomic::AtomicU64,
}

fn node_id(p: Option<&PeerInfo>) -> String {
    match p {
        Some(p) if p.workload != "unknown" || p.namespace != "unknown" => format!("{}/{}", p.namespace, p.workload),
        _ => "unknown".to_string(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `60s`, `5m`, `1h` (bounded by [`MAX_WINDOW`]).
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("window {s:?}: a number and s, m or h (e.g. 60s)"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("window {s:?}: a number and s, m or h (e.g. 60s)")),
    };
    if secs == 0 || Duration::from_secs(secs) > MAX_WINDOW {
        return Err(format!("window {s:?}: between 1s and {}m", MAX_WINDOW.as_secs() / 60));
    }
    Ok(Duration::from_secs(secs))
}

impl Graph {
    /// Edges refused (the per-slot cap) and reports the proxies dropped, for metrics.
    pub fn dropped(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.dropped.load(Relaxed), self.reports_dropped.load(Relaxed))
    }

    /// Adds a proxy's report (received now).
    pub fn record(&self, report: &EdgeReport) {
        self.record_at(report, now_secs());
    }

    fn record_at(&self, report: &EdgeReport, now: u64) {
        let epoch = now / SLOT_SECS;
        let _ = self.first_epoch.compare_exchange(
            0,
            epoch,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.reports_dropped.fetch_add(report.dropped, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut nodes) = self.nodes.lock() {
            for e in &report.edges {
                for (p, gateway) in [
                    (e.source.as_ref(), report.role == "gateway" && e.reporter == "source"),
                    (e.destination.as_ref(), false),
                ] {
                    let id = node_id(p);
                    let info = nodes.entry(id).or_insert_with(|| match p {
                        Some(p) if node_id(Some(p)) != "unknown" => NodeInfo {
                            kind: "workload",
                            workload: p.workload.clone(),
                            namespace: p.namespace.clone(),
                            app: p.app.clone(),
                            version: p.version.clone(),
                        },
                        _ => NodeInfo { kind: "external", ..NodeInfo::default() },
                    });
                    if gateway {
                        info.kind = "gateway";
                    }
                }
            }
        }
        let Ok(mut slots) = self.slots.lock() else { return };
        if slots.back().is_none_or(|s| s.epoch != epoch) {
            slots.push_back(Slot { epoch, edges: HashMap::new() });
            while slots.len() > SLOTS {
                slots.pop_front();
            }
        }
        let Some(slot) = slots.back_mut() else { return };
        for e in &report.edges {
            let id = EdgeId {
                reporter: e.reporter.clone(),
                source: node_id(e.source.as_ref()),
                destination: match node_id(e.destination.as_ref()) {
                    unknown if unknown == "unknown" && !e.service.is_empty() => format!("service:{}", e.service),
                    other => other,
                },
                service: e.service.clone(),
                protocol: e.protocol.clone(),
            };
            if !slot.edges.contains_key(&id) && slot.edges.len() >= MAX_EDGES {
                self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            slot.edges.entry(id).or_default().merge(e);
        }
    }

    /// The graph over the last `window`.
    pub fn json(&self, window: Duration) -> Value {
        self.json_at(window, now_secs())
    }

    /// Every edge's statistics summed over the slots of the last `window`, and the seconds
    /// they cover: the window, or less while the graph is younger (a report covers the
    /// interval before it arrived).
    fn window(&self, window: Duration, now: u64) -> (BTreeMap<EdgeId, Agg>, u64) {
        let since = now.saturating_sub(window.as_secs()) / SLOT_SECS;
        let mut sums: BTreeMap<EdgeId, Agg> = BTreeMap::new();
        if let Ok(slots) = self.slots.lock() {
            for s in slots.iter().filter(|s| s.epoch >= since) {
                for (id, a) in &s.edges {
                    sums.entry(id.clone()).or_default().add_agg(a);
                }
            }
        }
        let covered = match self.first_epoch.load(std::sync::atomic::Ordering::Relaxed) {
            0 => window.as_secs(),
            first => (now + SLOT_SECS).saturating_sub(first.max(since) * SLOT_SECS),
        }
        .clamp(1, window.as_secs().max(1));
        (sums, covered)
    }

    fn json_at(&self, window: Duration, now: u64) -> Value {
        let (sums, covered) = self.window(window, now);
        // One edge per (source, destination, service, protocol): the source's report for what
        // the caller saw, the destination's for how the hop arrived; each proxy's own time.
        // One edge per (source, destination, protocol): the source's report for what the caller
        // saw (and the Service it called), the destination's for how the hop arrived; each
        // proxy's own time. The destination can only guess the Service from the port called, so
        // the two sides join without it.
        #[derive(Default)]
        struct Sides {
            service: String,
            src: Option<Agg>,
            dst: Option<Agg>,
        }
        let mut joined: BTreeMap<(String, String, String), Sides> = BTreeMap::new();
        for (id, a) in sums {
            let sides = joined.entry((id.source, id.destination, id.protocol)).or_default();
            let from_source = id.reporter != "destination";
            if from_source || sides.service.is_empty() {
                sides.service = id.service;
            }
            let side = if from_source { &mut sides.src } else { &mut sides.dst };
            side.get_or_insert_with(Agg::default).add_agg(&a);
        }
        let mut node_ids = BTreeSet::new();
        let edges: Vec<Value> = joined
            .into_iter()
            .map(|((source, destination, protocol), s)| {
                node_ids.insert(source.clone());
                node_ids.insert(destination.clone());
                edge_json(&source, &destination, &s.service, &protocol, s.src.as_ref(), s.dst.as_ref(), covered)
            })
            .collect();
        let nodes = self.nodes.lock().map(|n| n.clone()).unwrap_or_default();
        let nodes: Vec<Value> = node_ids
            .iter()
            .map(|id| match nodes.get(id) {
                Some(n) if n.kind != "external" => json!({
                    "id": id, "kind": n.kind, "workload": n.workload, "namespace": n.namespace,
                    "app": n.app, "version": n.version,
                }),
                _ => json!({ "id": id, "kind": "external", "service": id.strip_prefix("service:") }),
            })
            .collect();
        json!({
            "window": format!("{}s", window.as_secs()),
            "coveredSeconds": covered,
            "generatedAt": now,
            "nodes": nodes,
            "edges": edges,
            "droppedEdges": self.dropped.load(std::sync::atomic::Ordering::Relaxed),
            "droppedReports": self.reports_dropped.load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

impl Graph {
    /// Per workload (`kind` `workload`) or per Service (`service`), what it served over the
    /// last `window`, as its own proxy saw it (the destination's reports; the caller's where
    /// the destination has no proxy): requests, rate, success, latency percentiles, TCP
    /// connections, and the share of traffic that arrived over mTLS.
    pub fn stat(&self, kind: &str, window: Duration) -> Result<Value, String> {
        let by_service = match kind {
            "workload" | "workloads" | "wl" | "deploy" | "deployment" => false,
            "service" | "services" | "svc" => true,
            other => return Err(format!("stat {other:?}: workload or service")),
        };
        let (sums, covered) = self.window(window, now_secs());
        let mut rows: BTreeMap<String, (Agg, Agg)> = BTreeMap::new();
        for (id, a) in &sums {
            let name = if by_service { id.service.clone() } else { id.destination.clone() };
            if name.is_empty() {
                continue;
            }
            let row = rows.entry(name).or_default();
            if id.reporter == "destination" { row.1.add_agg(a) } else { row.0.add_agg(a) }
        }
        let rows: Vec<Value> = rows
            .into_iter()
            .map(|(name, (src, dst))| {
                let a = if dst.requests + dst.connections > 0 { &dst } else { &src };
                let meshed: u64 = a.security.get("mutual_tls").copied().unwrap_or(0);
                let all: u64 = a.security.values().sum();
                let count = a.requests + a.connections;
                json!({
                    "name": name,
                    "requests": a.requests,
                    "rps": ((a.requests as f64 / covered as f64) * 1000.0).round() / 1000.0,
                    "successRate": (count > 0).then(|| 1.0 - a.errors as f64 / count as f64),
                    "latencyMs": quantiles(&ISTIO_BUCKETS, &a.latency),
                    "proxyMs": quantiles(&PROXY_BUCKETS, &a.proxy),
                    "tcpConnections": a.connections,
                    "meshedShare": (all > 0).then(|| meshed as f64 / all as f64),
                    "reportedBy": if a.requests + a.connections == dst.requests + dst.connections && count > 0 { "destination" } else { "source" },
                })
            })
            .collect();
        Ok(
            json!({ "kind": if by_service { "service" } else { "workload" }, "window": format!("{}s", window.as_secs()), "rows": rows }),
        )
    }
}

fn quantiles(bounds: &[f64], counts: &[u64]) -> Value {
    let total: u64 = counts.iter().sum();
    let mut cum = Vec::with_capacity(bounds.len());
    let mut acc = 0;
    for c in counts.iter().take(bounds.len()) {
        acc += c;
        cum.push(acc);
    }
    let q = |q: f64| quantile_of(bounds, &cum, total, q).map(|v| (v * 1000.0).round() / 1000.0);
    json!({ "p50": q(0.5), "p95": q(0.95), "p99": q(0.99) })
}

fn edge_json(
    source: &str,
    destination: &str,
    service: &str,
    protocol: &str,
    src: Option<&Agg>,
    dst: Option<&Agg>,
    covered: u64,
) -> Value {
    let Some(main) = src.or(dst) else { return Value::Null };
    let count = if protocol == "tcp" { main.connections } else { main.requests };
    let success = if count == 0 { None } else { Some(1.0 - main.errors as f64 / count as f64) };
    // How the hop arrived: the destination knows (it terminated it); else what the source dialled.
    let security = dst.or(src).map(|a| a.security.clone()).unwrap_or_default();
    let dominant = security.iter().max_by_key(|(_, n)| **n).map(|(k, _)| k.clone()).unwrap_or_default();
    let (policy, reason) = dominant.split_once(':').map_or((dominant.as_str(), None), |(p, r)| (p, Some(r)));
    let proxy_side = |a: Option<&Agg>| a.map(|a| quantiles(&PROXY_BUCKETS, &a.proxy));
    let p = |side: &Option<Value>, q: &str| side.as_ref().and_then(|v| v[q].as_f64()).unwrap_or(0.0);
    let (ps, pd) = (proxy_side(src), proxy_side(dst));
    let latency = quantiles(&ISTIO_BUCKETS, &main.latency);
    let proxy_p50 = p(&ps, "p50") + p(&pd, "p50");
    let proxy_p99 = p(&ps, "p99") + p(&pd, "p99");
    let share =
        latency["p50"].as_f64().filter(|l| *l > 0.0).map(|l| ((proxy_p50 / l).min(1.0) * 1000.0).round() / 1000.0);
    let reported_by: Vec<&str> = [src.map(|_| "source"), dst.map(|_| "destination")].into_iter().flatten().collect();
    let principals = json!({
        "source": (!main.source_principal.is_empty()).then_some(&main.source_principal),
        "destination": dst.or(src).map(|a| &a.destination_principal).filter(|p| !p.is_empty()),
    });
    json!({
        "source": source,
        "destination": destination,
        "service": (!service.is_empty()).then_some(service),
        "protocol": protocol,
        "requests": main.requests,
        "connections": main.connections,
        "errors": main.errors,
        "rps": ((count as f64 / covered as f64) * 1000.0).round() / 1000.0,
        "successRate": success,
        "latencyMs": latency,
        // Per bucket (not cumulative), Istio's bounds, the last `+Inf`: the panel's histogram.
        "latencyBuckets": {
            "le": ISTIO_BUCKETS.iter().map(|b| json!(b)).chain(std::iter::once(json!("+Inf"))).collect::<Vec<_>>(),
            "counts": (0..=ISTIO_BUCKETS.len()).map(|i| main.latency.get(i).copied().unwrap_or(0)).collect::<Vec<_>>(),
        },
        "bytes": { "request": main.request_bytes, "response": main.response_bytes },
        "mtls": policy == "mutual_tls",
        "security": policy,
        "plaintextReason": reason,
        "securityBreakdown": security,
        "proxyMs": {
            "p50": (proxy_p50 * 1000.0).round() / 1000.0,
            "p99": (proxy_p99 * 1000.0).round() / 1000.0,
            "source": ps,
            "destination": pd,
        },
        "proxyShareOfP50": share,
        "reportedBy": reported_by,
        "principals": principals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ns: &str, w: &str) -> Option<PeerInfo> {
        Some(PeerInfo { workload: w.into(), namespace: ns.into(), app: w.into(), version: "v1".into() })
    }

    fn stats(reporter: &str, requests: u64, errors: u64, fast: u64, proxy_us: u64) -> EdgeStats {
        let mut latency = vec![0; ISTIO_BUCKETS.len() + 1];
        latency[2] = fast; // (1, 5] ms
        latency[5] = requests - fast; // (25, 50] ms
        let mut proxy = vec![0; PROXY_BUCKETS.len() + 1];
        proxy[if proxy_us <= 100 { 3 } else { 5 }] = requests;
        EdgeStats {
            reporter: reporter.into(),
            source: peer("shop", "order-1"),
            destination: peer("shop", "inventory-1"),
            service: "shop/inventory:8080".into(),
            protocol: "http".into(),
            security: "mutual_tls".into(),
            requests,
            errors,
            latency,
            proxy,
            ..EdgeStats::default()
        }
    }

    #[test]
    fn source_and_destination_reports_join_into_one_edge() {
        let g = Graph::default();
        let now = 1_000_000;
        for t in 0..12 {
            let report = EdgeReport {
                role: "sidecar".into(),
                interval_ms: 5000,
                edges: vec![stats("source", 100, 2, 90, 80), stats("destination", 100, 2, 90, 400)],
                dropped: 0,
                tapped: Vec::new(),
            };
            g.record_at(&report, now - 55 + t * 5);
        }
        let v = g.json_at(Duration::from_secs(60), now);
        let edges = v["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 1, "{v}");
        let e = &edges[0];
        assert_eq!(e["requests"], 1200);
        assert_eq!(e["rps"], 20.0, "{e}");
        assert_eq!(e["successRate"], 1.0 - 24.0 / 1200.0);
        assert_eq!(e["mtls"], true);
        assert_eq!(e["reportedBy"], json!(["source", "destination"]));
        // p50 inside (1, 5], p99 inside (25, 50].
        let p50 = e["latencyMs"]["p50"].as_f64().unwrap();
        let p99 = e["latencyMs"]["p99"].as_f64().unwrap();
        assert!(p50 > 1.0 && p50 <= 5.0 && p99 > 25.0 && p99 <= 50.0, "{e}");
        // The histogram the panel draws: every request in a bucket, Istio's bounds and +Inf.
        let counts: Vec<u64> =
            e["latencyBuckets"]["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
        assert_eq!((counts.len(), counts.iter().sum::<u64>()), (20, 1200), "{e}");
        assert_eq!(e["latencyBuckets"]["le"][2], 5.0);
        assert_eq!(e["latencyBuckets"]["le"][19], "+Inf");
        // Both proxies' own time: (0.05, 0.1] + (0.25, 0.5].
        let proxy = e["proxyMs"]["p50"].as_f64().unwrap();
        assert!(proxy > 0.3 && proxy <= 0.6, "{e}");
        assert_eq!(v["nodes"].as_array().unwrap().len(), 2);
        // A shorter window sees less.
        let v = g.json_at(Duration::from_secs(10), now);
        assert!(v["edges"][0]["requests"].as_u64().unwrap() <= 300, "{v}");
    }

    #[test]
    fn a_quiet_stretch_without_reports_still_counts_in_the_rates() {
        // 60 requests in one report, then a minute in which the idle proxies send nothing:
        // over the last 60 s that is 1 request per second, not 60 over the one slot seen.
        let g = Graph::default();
        let now = 1_000_000;
        g.record_at(&EdgeReport { role: "sidecar".into(), ..EdgeReport::default() }, now - 300);
        let report = EdgeReport {
            role: "sidecar".into(),
            interval_ms: 5000,
            edges: vec![stats("source", 60, 0, 60, 80)],
            ..EdgeReport::default()
        };
        g.record_at(&report, now - 55);
        let v = g.json_at(Duration::from_secs(60), now);
        assert_eq!(v["edges"][0]["rps"], 1.0, "{v}");
        // A graph younger than the window covers its own age.
        let young = Graph::default();
        young.record_at(&report, now - 10);
        let v = young.json_at(Duration::from_secs(60), now);
        assert_eq!(v["edges"][0]["rps"], 4.0, "60 requests over the 15 s since the first report: {v}");
    }

    #[test]
    fn plaintext_edges_say_why_and_unknown_callers_are_external() {
        let g = Graph::default();
        let mut e = stats("destination", 10, 0, 10, 50);
        e.source = None;
        e.security = "none".into();
        e.plaintext_reason = "Permissive".into();
        g.record_at(&EdgeReport { role: "sidecar".into(), edges: vec![e], ..EdgeReport::default() }, 100);
        let v = g.json_at(Duration::from_secs(60), 100);
        let edge = &v["edges"][0];
        assert_eq!(edge["mtls"], false);
        assert_eq!(edge["plaintextReason"], "Permissive");
        assert_eq!(edge["source"], "unknown");
        assert!(v["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "unknown" && n["kind"] == "external"), "{v}");
    }

    #[test]
    fn the_destinations_guess_of_the_service_does_not_split_an_edge() {
        let g = Graph::default();
        let mut src = stats("source", 10, 0, 10, 50);
        src.service = "shop/inventory-v1:8080".into();
        let dst = stats("destination", 10, 0, 10, 50); // shop/inventory:8080, by the port
        g.record_at(&EdgeReport { role: "sidecar".into(), edges: vec![src, dst], ..EdgeReport::default() }, 100);
        let v = g.json_at(Duration::from_secs(60), 100);
        let edges = v["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 1, "{v}");
        assert_eq!(edges[0]["service"], "shop/inventory-v1:8080");
        assert_eq!(edges[0]["reportedBy"], json!(["source", "destination"]));
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_window("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_window("0s").is_err() && parse_window("2h").is_err() && parse_window("x").is_err());
    }
}
