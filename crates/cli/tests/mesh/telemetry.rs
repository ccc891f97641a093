//! Telemetry as an operator reads it: a real Prometheus scrapes two sidecars and the control
//! plane, and its query API answers Istio's dashboard queries with the traffic the test made.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A server whose `/slow` answers after 60 ms and everything else at once.
const TIMED_SERVER: &str = r#"
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(0.06)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

/// 200 requests at about 20 a second, one in ten to `/slow`, then idles (its sidecar stays
/// up for the last scrapes).
const PACED_CLIENT: &str = r#"
import sys, time, urllib.request
for i in range(200):
    path = "/slow" if i % 10 == 0 else "/fast"
    with urllib.request.urlopen("http://inventory:8080" + path, timeout=5) as r:
        assert r.status == 200
    time.sleep(0.05)
print("done", flush=True)
time.sleep(600)
"#;

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: meshgate_testkit::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, SocketAddr)]) -> Self {
        let dir = meshgate_testkit::TempDir::new("meshgate-prometheus");
        let mut config = String::from("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!("  - job_name: {job}\n    static_configs: [{{targets: ['{addr}']}}]\n"));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], meshgate_testkit::free_port()));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package; scripts/deps test installs it)");
        let p = Prometheus { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.get("/-/ready").is_none_or(|b| !b.contains("Ready")) {
            assert!(Instant::now() < deadline, "prometheus did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn get(&self, path: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://{}{path}", self.addr))
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The instant vector of `query`: (labels, value) per series.
    fn query(&self, query: &str) -> Vec<(serde_json::Value, f64)> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "-G", "--data-urlencode"])
            .arg(format!("query={query}"))
            .arg(format!("http://{}/api/v1/query", self.addr))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(v["status"], "success", "{query}: {v}");
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| (r["metric"].clone(), r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)))
            .collect()
    }

    /// The one value of `query`, once it satisfies `ok` (within `within`).
    fn wait_for(&self, query: &str, within: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let r = self.query(query);
            if let [(_, v)] = r.as_slice()
                && ok(*v)
            {
                return *v;
            }
            assert!(Instant::now() < deadline, "{query}: {r:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The targets' health as Prometheus sees it.
    fn targets_up(&self) -> Vec<(String, f64)> {
        self.query("up").into_iter().map(|(m, v)| (m["job"].as_str().unwrap_or("").to_string(), v)).collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_sees_istio_metrics_of_two_sidecars_and_the_control_plane() {
    let mut lab = Lab::start();
    lab.spawn(
        &["-n", "shop", "--service-account", "inventory", "--name", "inventory-1", "--service", "inventory:8080"],
        &["python3", "-c", TIMED_SERVER],
    );
    let inventory = lab.workload_ip("shop", "inventory-1");
    wait_plain_ok(SocketAddr::from((inventory, 8080)));
    lab.spawn(
        &[
            "-n",
            "shop",
            "--service-account",
            "order",
            "--name",
            "order-1",
            "--label",
            "app=order",
            "--label",
            "version=v1",
        ],
        &["python3", "-c", PACED_CLIENT],
    );
    let order = lab.workload_ip("shop", "order-1");
    let prom = Prometheus::start(&[
        ("order", SocketAddr::from((order, 15020))),
        ("inventory", SocketAddr::from((inventory, 15020))),
        ("control-plane", lab.http),
    ]);
    // Every target scraped.
    let deadline = Instant::now() + Duration::from_secs(20);
    while prom.targets_up().iter().filter(|(_, v)| *v == 1.0).count() < 3 {
        assert!(Instant::now() < deadline, "targets not up: {:?}", prom.targets_up());
        std::thread::sleep(Duration::from_millis(500));
    }
    // `meshgate tap`: the client's sidecar, from inside its namespace, live.
    let mut tap = meshgate();
    tap.args(["tap", "order-1", "-n", "shop", "--path", "/slow", "--max", "2", "-o", "json"]);
    lab.api_flags(&mut tap);
    let out = tap.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let taps: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(taps.len(), 2, "{}", text(&out));
    for t in &taps {
        assert_eq!(
            (&t["method"], &t["path"], &t["response_code"]),
            (&"GET".into(), &"/slow".into(), &200.into()),
            "{t}"
        );
        assert_eq!(t["destination_workload"], "shop/inventory-1", "{t}");
        assert_eq!(t["connection_security_policy"], "mutual_tls", "{t}");
        assert!(t["duration_ms"].as_f64().unwrap() >= 60.0, "{t}");
    }
    // While the client runs: its rate, as Istio's dashboards and Kiali compute it, from both
    // sides of the hop.
    for reporter in ["source", "destination"] {
        let q = format!(
            "sum by (source_workload, destination_workload) (rate(istio_requests_total{{reporter=\"{reporter}\",source_workload=\"order-1\",destination_workload=\"inventory-1\",destination_service=\"inventory.shop.svc.cluster.local\",response_code=\"200\"}}[5s]))"
        );
        let rate = prom.wait_for(&q, Duration::from_secs(20), |v| v > 10.0);
        assert!(rate < 25.0, "{reporter}: {rate} req/s, the client sends about 18");
    }
    // Once it is done: exactly its 200 requests, on each side, mTLS, with its labels.
    let total = |reporter: &str| {
        format!(
            "sum(istio_requests_total{{reporter=\"{reporter}\",source_workload=\"order-1\",source_workload_namespace=\"shop\",source_app=\"order\",source_version=\"v1\",source_principal=\"spiffe://cluster.local/ns/shop/sa/order\",destination_workload=\"inventory-1\",destination_principal=\"spiffe://cluster.local/ns/shop/sa/inventory\",connection_security_policy=\"mutual_tls\",request_protocol=\"http\"}})"
        )
    };
    for reporter in ["source", "destination"] {
        prom.wait_for(&total(reporter), Duration::from_secs(40), |v| v == 200.0);
    }
    // The service graph and `stat`, from the proxies' reports to the control plane.
    let deadline = Instant::now() + Duration::from_secs(20);
    let edge = loop {
        let mut c = meshgate();
        c.args(["stat", "workload", "inventory-1", "-n", "shop", "-o", "json", "--window", "5m"]);
        lab.api_flags(&mut c);
        let rows: serde_json::Value = serde_json::from_slice(&c.output().unwrap().stdout).unwrap_or_default();
        let graph = lab_graph(&lab);
        let edge = graph["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["source"] == "shop/order-1" && e["destination"] == "shop/inventory-1")
            .cloned();
        // What inventory-1 served: the client's 200 over mTLS, and the test's own plaintext
        // readiness probes from the host (an "insecure channel" edge from outside the mesh).
        let to_inventory: Vec<&serde_json::Value> = graph["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["destination"] == "shop/inventory-1")
            .collect();
        let served: u64 = to_inventory.iter().map(|e| e["requests"].as_u64().unwrap_or(0)).sum();
        if edge.as_ref().is_some_and(|e| e["requests"] == 200) && rows[0]["requests"] == served {
            let probes = to_inventory.iter().find(|e| e["source"] == "unknown").expect("the host's probes");
            assert_eq!(
                (&probes["mtls"], &probes["plaintextReason"]),
                (&false.into(), &"Permissive".into()),
                "{probes}"
            );
            let meshed = rows[0]["meshedShare"].as_f64().unwrap();
            assert!((meshed - 200.0 / served as f64).abs() < 1e-9, "{rows}");
            break edge.unwrap();
        }
        assert!(Instant::now() < deadline, "stat {rows}\ngraph {graph}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(edge["mtls"], true, "{edge}");
    assert_eq!(edge["reportedBy"], serde_json::json!(["source", "destination"]), "{edge}");
    assert_eq!(edge["service"], "shop/inventory:8080", "{edge}");
    let (p99, proxy) = (edge["latencyMs"]["p99"].as_f64().unwrap(), edge["proxyMs"]["p50"].as_f64().unwrap());
    assert!(p99 > 50.0 && p99 <= 100.0, "{edge}");
    assert!(proxy > 0.0 && proxy < 5.0, "the proxies' own time: {edge}");
    // Latency as the dashboards compute it: one request in ten takes 60 ms.
    let quantile = |q: f64| {
        format!(
            "histogram_quantile({q}, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{reporter=\"destination\",destination_workload=\"inventory-1\"}}[1m])))"
        )
    };
    let p99 = prom.wait_for(&quantile(0.99), Duration::from_secs(5), |v| v.is_finite());
    assert!(p99 > 50.0 && p99 <= 100.0, "p99 {p99} ms: a tenth of the requests take 60 ms");
    let p50 = prom.wait_for(&quantile(0.5), Duration::from_secs(5), |v| v.is_finite());
    assert!(p50 < 25.0, "p50 {p50} ms: nine requests in ten are answered at once");
    // The proxies' own time, well below the application's.
    let proxy_p50 = prom.wait_for(
        "histogram_quantile(0.5, sum by (le) (rate(meshgate_proxy_duration_milliseconds_bucket{reporter=\"source\",source_workload=\"order-1\"}[1m])))",
        Duration::from_secs(5),
        |v| v.is_finite(),
    );
    assert!(proxy_p50 < 5.0, "proxy time p50 {proxy_p50} ms");
    // The control plane's own: both sidecars connected, their configuration acknowledged.
    prom.wait_for("sum(meshgate_cp_proxies_connected)", Duration::from_secs(5), |v| v == 2.0);
    prom.wait_for("sum(meshgate_cp_pushes_total)", Duration::from_secs(5), |v| v >= 2.0);
    prom.wait_for("sum(meshgate_cp_certificates_issued_total)", Duration::from_secs(5), |v| v >= 2.0);
}

/// The control plane's service graph over the last five minutes.
fn lab_graph(lab: &Lab) -> serde_json::Value {
    let token = std::fs::read_to_string(lab.dir.path().join("state").join("admin-token")).unwrap();
    let out = Command::new("curl")
        .args(["-sf", "-H"])
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg(format!("http://{}/api/graph?window=5m", lab.http))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}
