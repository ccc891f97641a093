//! `meshgate top`, `stat` and `tap`: the service graph, per-workload statistics and a live
//! request stream, in the terminal.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::client::{Api, error_text};

fn ms(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |v| if v < 10.0 { format!("{v:.2}ms") } else { format!("{v:.0}ms") })
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

/// The edges table of a graph.
fn edges_table(graph: &Value) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<28} {:<28} {:<5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}  SECURITY\n",
        "SOURCE", "DESTINATION", "PROTO", "RPS", "SUCCESS", "P50", "P99", "PROXY P50", "SHARE"
    );
    out.push_str(&header);
    let mut edges: Vec<&Value> = graph["edges"].as_array().into_iter().flatten().collect();
    edges.sort_by(|a, b| b["rps"].as_f64().partial_cmp(&a["rps"].as_f64()).unwrap_or(std::cmp::Ordering::Equal));
    for e in edges {
        let security = match (e["mtls"].as_bool(), e["plaintextReason"].as_str()) {
            (Some(true), _) => "mTLS".to_string(),
            (_, Some(reason)) => format!("INSECURE cleartext ({reason})"),
            _ => e["security"].as_str().unwrap_or("?").to_string(),
        };
        out.push_str(&format!(
            "{:<28} {:<28} {:<5} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}  {}\n",
            e["source"].as_str().unwrap_or("?"),
            e["destination"].as_str().unwrap_or("?"),
            e["protocol"].as_str().unwrap_or("?"),
            e["rps"].as_f64().map_or("-".into(), |r| format!("{r:.1}")),
            pct(&e["successRate"]),
            ms(&e["latencyMs"]["p50"]),
            ms(&e["latencyMs"]["p99"]),
            ms(&e["proxyMs"]["p50"]),
            pct(&e["proxyShareOfP50"]),
            security,
        ));
    }
    out
}

/// `meshgate top`: the edges of the service graph, refreshed every `interval` (once with
/// `once`).
pub(crate) async fn top(api: &Api, window: &str, interval: Duration, once: bool) -> anyhow::Result<bool> {
    loop {
        let (status, v) = api.call(Method::GET, &format!("/api/graph?window={window}"), None).await?;
        if !status.is_success() {
            bail!("{}", error_text(&v));
        }
        let table = edges_table(&v);
        if once {
            put!("{table}");
            return Ok(true);
        }
        // Clear the screen and redraw, as top does.
        put!("\x1b[2J\x1b[H");
        out!("meshgate top — window {window}, every {}s (Ctrl-C to stop)\n", interval.as_secs());
        put!("{table}");
        tokio::time::sleep(interval).await;
    }
}

/// `meshgate stat KIND [NAME]`.
pub(crate) async fn stat(
    api: &Api,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    window: &str,
    json: bool,
) -> anyhow::Result<bool> {
    let (status, v) = api.call(Method::GET, &format!("/api/v1/stat/{kind}?window={window}"), None).await?;
    if !status.is_success() {
        bail!("{}", error_text(&v));
    }
    let wanted = |row: &&Value| {
        let n = row["name"].as_str().unwrap_or("");
        // Workloads are `ns/name`, Services `ns/name:port`.
        let (ns, rest) = n.split_once('/').unwrap_or(("", n));
        let short = rest.split(':').next().unwrap_or(rest);
        namespace.is_none_or(|want| want == ns) && name.is_none_or(|want| want == short || want == rest || want == n)
    };
    let rows: Vec<&Value> = v["rows"].as_array().into_iter().flatten().filter(wanted).collect();
    if json {
        out!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(true);
    }
    if rows.is_empty() {
        out!(
            "no traffic to any {kind}{} in the last {window}",
            name.map(|n| format!(" named {n}")).unwrap_or_default()
        );
        return Ok(true);
    }
    out!(
        "{:<36} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7}",
        "NAME",
        "RPS",
        "SUCCESS",
        "P50",
        "P95",
        "P99",
        "PROXY P50",
        "TCP",
        "MESHED"
    );
    for r in rows {
        out!(
            "{:<36} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7}",
            r["name"].as_str().unwrap_or("?"),
            r["rps"].as_f64().map_or("-".into(), |v| format!("{v:.1}")),
            pct(&r["successRate"]),
            ms(&r["latencyMs"]["p50"]),
            ms(&r["latencyMs"]["p95"]),
            ms(&r["latencyMs"]["p99"]),
            ms(&r["proxyMs"]["p50"]),
            r["tcpConnections"],
            pct(&r["meshedShare"]),
        );
    }
    Ok(true)
}

/// What `meshgate tap` watches and prints.
pub(crate) struct TapArgs {
    pub(crate) path: Option<String>,
    pub(crate) method: Option<String>,
    pub(crate) authority: Option<String>,
    pub(crate) json: bool,
    pub(crate) max: Option<u64>,
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// One tap record as a line, like `linkerd viz tap`'s.
fn tap_line(v: &Value) -> String {
    if let Some(n) = v["dropped"].as_u64() {
        return format!("... {n} requests not shown: this terminal fell behind");
    }
    format!(
        "{} {} {} {}{} -> {} {} {} upstream={} src={} dst={} flags={} proxy={}",
        v["start_time"].as_str().unwrap_or("?"),
        v["reporter"].as_str().unwrap_or("?"),
        v["method"].as_str().unwrap_or("?"),
        v["authority"].as_str().unwrap_or(""),
        v["path"].as_str().unwrap_or(""),
        v["response_code"],
        ms(&v["duration_ms"]),
        v["connection_security_policy"].as_str().unwrap_or("?"),
        v["upstream_host"].as_str().unwrap_or("-"),
        v["source_workload"].as_str().or(v["source_principal"].as_str()).unwrap_or("-"),
        v["destination_workload"].as_str().or(v["destination_principal"].as_str()).unwrap_or("-"),
        v["response_flags"].as_str().unwrap_or("-"),
        ms(&v["proxy_ms"]),
    )
}

/// `meshgate tap --admin ADDR`: streams the requests of the proxy whose admin endpoint is at
/// `admin` until interrupted (or `max` records).
pub(crate) async fn tap_admin(admin: SocketAddr, args: &TapArgs) -> anyhow::Result<bool> {
    let mut query = Vec::new();
    for (k, v) in [("path", &args.path), ("method", &args.method), ("authority", &args.authority)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode(v)));
        }
    }
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot reach the proxy's admin endpoint at {admin}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(format!("/tap?{}", query.join("&"))).header("host", "admin").body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("the proxy refused tap: HTTP {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut shown = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&line) else { continue };
            if v.get("tap").is_some() {
                eprintln!("tapping the proxy at {admin} (Ctrl-C to stop)");
                continue;
            }
            if args.json {
                out!("{}", String::from_utf8_lossy(&line).trim_end());
            } else {
                out!("{}", tap_line(&v));
            }
            shown += 1;
            if args.max.is_some_and(|m| shown >= m) {
                return Ok(true);
            }
        }
    }
    Ok(true)
}

/// `meshgate tap WORKLOAD`: finds the workload (its address, hence its network namespace)
/// through the control plane and taps its sidecar from inside that namespace, where its admin
/// endpoint listens on loopback.
pub(crate) async fn tap_workload(api: &Api, ns: &str, name: &str, args: &TapArgs) -> anyhow::Result<bool> {
    let (status, v) = api.call(Method::GET, &format!("/api/v1/resources/workload/{ns}/{name}"), None).await?;
    if !status.is_success() {
        bail!("Workload {ns}/{name}: {}", error_text(&v));
    }
    let ip: std::net::Ipv4Addr = v["spec"]["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("Workload {ns}/{name} has no IPv4 address"))?;
    let netns = meshgate_intercept::pod_name(ip);
    if !meshgate_intercept::pod_namespaces().contains(&netns) {
        bail!(
            "Workload {ns}/{name} ({ip}) has no network namespace {netns} on this machine: tap its proxy with --admin ADDR"
        );
    }
    let exe = std::env::current_exe().context("finding the meshgate binary")?;
    let mut cmd = meshgate_intercept::exec(&netns, &exe.to_string_lossy());
    cmd.args(["tap", "--admin", "127.0.0.1:15000"]);
    for (flag, v) in [("--path", &args.path), ("--method", &args.method), ("--authority", &args.authority)] {
        if let Some(v) = v {
            cmd.args([flag, v]);
        }
    }
    if args.json {
        cmd.args(["-o", "json"]);
    }
    if let Some(m) = args.max {
        cmd.args(["--max", &m.to_string()]);
    }
    let status =
        tokio::process::Command::from(cmd).status().await.context("running tap in the workload's namespace")?;
    Ok(status.success())
}
