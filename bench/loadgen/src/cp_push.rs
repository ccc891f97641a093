//! Control-plane push latency: a control plane (the real binary, its own process) holding
//! SERVICES Services with ENDPOINTS endpoints each, PROXIES simulated proxies subscribed over
//! mTLS gRPC; one Service is changed at a time and the time until every proxy has received
//! the change is measured. Also the control plane's resident memory at that size.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshgate_identity::TrustDomain;
use meshgate_proto::meshgate::discovery_client::DiscoveryClient;
use meshgate_proto::meshgate::discovery_request::Kind;
use meshgate_proto::meshgate::{Ack, DiscoveryRequest, Hello};
use meshgate_proxy::cp::{ControlPlaneAddr, CpCertifier};
use tokio::sync::mpsc;

fn service_yaml(i: usize, endpoints: usize, marker: u64) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench, labels: {{marker: \"m{marker}\"}}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-a, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
    );
    for e in 0..endpoints {
        out.push_str(&format!("- addresses: [\"10.{}.{}.{}\"]\n", (i / 250) % 250, i % 250, e % 250 + 1));
    }
    out
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn api(http: &str, token: &str, method: &str, path: &str, body: String) -> anyhow::Result<serde_json::Value> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(http).await?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", http)
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let resp = s.send_request(req).await?;
    let b = resp.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&b).unwrap_or_default())
}

pub(crate) async fn run(
    meshgate: &Path,
    proxies: usize,
    services: usize,
    endpoints: usize,
    changes: usize,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("meshgate-cp-bench-{}", std::process::id()));
    let store = dir.join("store");
    let state = dir.join("state");
    std::fs::create_dir_all(&store)?;
    for i in 0..services {
        // One resource per file, as `meshgate apply` keeps them.
        let text = service_yaml(i, endpoints, 0);
        let (svc, eps) = text.split_once("---\n").unwrap_or((&text, ""));
        std::fs::write(store.join(format!("svc-{i}.yaml")), svc)?;
        std::fs::write(store.join(format!("eps-{i}.yaml")), eps)?;
    }
    let grpc = "127.0.0.1:19112";
    let http = "127.0.0.1:19114";
    let mut child = tokio::process::Command::new(meshgate)
        .args(["control-plane", "--store"])
        .arg(format!("dir:{}", store.display()))
        .args(["--grpc", grpc, "--http", http, "--state-dir"])
        .arg(&state)
        // CP_LOG=meshgate_control::state=debug shows where each reload's time goes.
        .env("RUST_LOG", std::env::var("CP_LOG").unwrap_or_else(|_| "warn".into()))
        .kill_on_drop(true)
        .spawn()
        .context("starting the control plane")?;
    let pid = child.id().unwrap_or(0);
    let token_path = state.join("admin-token");
    let t0 = Instant::now();
    while !token_path.exists() || tokio::net::TcpStream::connect(http).await.is_err() {
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("control plane did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(&token_path)?.trim().to_string();
    let bundle = std::fs::read_to_string(state.join("ca-bundle.pem"))?;
    let td = TrustDomain::new("cluster.local").map_err(|e| anyhow::anyhow!("{e}"))?;
    let target = ControlPlaneAddr::new(grpc, td.clone(), &bundle).map_err(|e| anyhow::anyhow!(e))?;
    println!(
        "control plane: {services} Services × {endpoints} endpoints loaded in {:?}, RSS {:.1} MiB",
        t0.elapsed(),
        rss_mib(pid)
    );

    // Identities for the simulated proxies.
    let mut meshes = Vec::new();
    for p in 0..proxies {
        let body = format!(r#"{{"namespace":"bench","serviceAccount":"proxy-{p}","ttlSeconds":600}}"#);
        let v = api(http, &token, "POST", "/api/v1/tokens", body).await?;
        let t = v["token"].as_str().context("token")?.to_string();
        let id = td.workload_id("bench", &format!("proxy-{p}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let c = CpCertifier::new(target.clone(), Some(t));
        meshes.push(meshgate_proxy::identity::bootstrap(c.as_ref(), &id).await?);
    }
    // Subscribe them all; each reports when it sees a given marker on svc-0.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let subscribed = Arc::new(tokio::sync::Semaphore::new(0));
    for (p, mesh) in meshes.iter().enumerate() {
        let m = mesh.material();
        let ch =
            meshgate_proxy::cp::channel(&target, m.bundle.clone(), Some(&m.svid)).map_err(|e| anyhow::anyhow!(e))?;
        let (tx, rx) = mpsc::channel(8);
        tx.send(DiscoveryRequest {
            kind: Some(Kind::Hello(Hello {
                node: format!("n{p}"),
                role: "sidecar".into(),
                workload: String::new(),
                version: String::new(),
                addresses: Vec::new(),
                credentials: None,
            })),
        })
        .await?;
        let mut stream =
            DiscoveryClient::new(ch).stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let (seen_tx, subscribed) = (seen_tx.clone(), subscribed.clone());
        tokio::spawn(async move {
            let mut first = true;
            while let Ok(Some(resp)) = stream.message().await {
                let now = Instant::now();
                for u in &resp.upserts {
                    if u.key == "Service/bench/svc-0" {
                        let text = String::from_utf8_lossy(&u.json);
                        if let Some(i) = text.find("\"marker\":\"m") {
                            let rest = &text[i + 11..];
                            let n: u64 = rest.split('"').next().and_then(|x| x.parse().ok()).unwrap_or(0);
                            let _ = seen_tx.send((p, n, now));
                        }
                    }
                }
                let _ = tx.send(DiscoveryRequest { kind: Some(Kind::Ack(Ack { version: resp.version })) }).await;
                if first {
                    first = false;
                    subscribed.add_permits(1);
                }
            }
        });
    }
    let _ = subscribed.acquire_many(u32::try_from(proxies).unwrap_or(u32::MAX)).await?;
    while seen_rx.try_recv().is_ok() {}
    println!("{proxies} proxies subscribed; control plane RSS {:.1} MiB", rss_mib(pid));

    let mut latencies: Vec<Duration> = Vec::new();
    for c in 1..=changes {
        let marker = c as u64;
        let started = Instant::now();
        let v = api(http, &token, "POST", "/api/v1/apply", service_yaml(0, endpoints, marker)).await?;
        if v.get("results").is_none() || v.get("errors").is_some() {
            bail!("apply failed: {v}");
        }
        let mut got = 0;
        let deadline = started + Duration::from_secs(30);
        while got < proxies {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, seen_rx.recv()).await {
                Ok(Some((_, n, at))) if n == marker => {
                    latencies.push(at - started);
                    got += 1;
                }
                Ok(Some(_)) => {}
                _ => bail!("change {c}: only {got}/{proxies} proxies received it within 30 s"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "change to one Service reaching {proxies} proxies ({} samples): p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!("control plane RSS at the end: {:.1} MiB", rss_mib(pid));
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
