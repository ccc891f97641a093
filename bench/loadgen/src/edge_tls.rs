//! HTTPS at the edge, meshgate vs nginx terminating TLS with the same ECDSA P-256 certificate:
//! new TLS connections per second (connect, a full TLS 1.3 handshake, no resumption, one
//! request, close), keep-alive HTTPS requests per second, each with the proxy's CPU per 10k,
//! and the resident memory 1,000 idle TLS connections add. `cert` writes the certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::{cpu_seconds, median, memory_mib, parse_target};

/// Writes `ca.pem`, `tls.crt` and `tls.key` (ECDSA P-256, for `name`) into `dir`.
pub(crate) fn write_cert(dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    let ca = meshgate_tls::testing::EdgeCa::new()?;
    let (crt, key) = ca.issue(&[name], meshgate_tls::testing::KeyAlg::EcdsaP256, -3600, 30 * 24 * 3600)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca.root_pem())?;
    std::fs::write(dir.join("tls.crt"), crt)?;
    std::fs::write(dir.join("tls.key"), key)?;
    Ok(())
}

fn client(ca_pem: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c?)?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&tokio_rustls::rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake.
    config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(addr: SocketAddr, host: &str, tls: &TlsConnector) -> anyhow::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from(host.to_string())?;
    Ok(tls.connect(name, tcp).await?)
}

/// One GET on `s`; reads the response (Content-Length bodies only, as both proxies send).
async fn get(s: &mut Tls, host: &str, close: bool) -> anyhow::Result<()> {
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n{}\r\n", if close { "Connection: close\r\n" } else { "" });
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before the response");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        anyhow::ensure!(head.starts_with("http/1.1 200"), "status: {}", head.lines().next().unwrap_or(""));
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no content-length")?;
        if buf.len() >= end + 4 + len {
            return Ok(());
        }
    }
}

/// Closed loop with `workers` concurrent clients for `secs`: the completed count.
async fn closed_loop<F, Fut>(workers: usize, secs: u64, work: F) -> (u64, u64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (stop, ok, failed, work) = (stop.clone(), ok.clone(), failed.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match work().await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// Runs the comparison and prints a markdown table.
pub(crate) async fn run(
    specs: Vec<String>,
    ca: std::path::PathBuf,
    host: String,
    secs: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    let targets: Vec<_> = specs.iter().map(|s| parse_target(s)).collect::<Result<_, _>>()?;
    let config = client(&std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?)?;
    let tls = TlsConnector::from(config);
    println!("Medians of {rounds} rounds of {secs} s; TLS 1.3, ECDSA P-256, no resumption; HTTP/1.1.");
    println!();
    println!(
        "| target | new TLS conns/s | CPU s / 10k conns | errors | keep-alive HTTPS req/s | CPU s / 10k req | errors | 1,000 idle TLS conns add |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for t in &targets {
        let Some(addr) = t.h1 else { continue };
        let (mut conns, mut conn_cpu, mut reqs, mut req_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut conn_errors, mut req_errors) = (0, 0);
        for _ in 0..rounds {
            let (tls1, host1) = (tls.clone(), host.clone());
            let cpu0 = cpu_seconds(&t.pids);
            let (ok, failed) = closed_loop(16, secs, move || {
                let (tls, host) = (tls1.clone(), host1.clone());
                async move {
                    let mut s = handshake(addr, &host, &tls).await?;
                    get(&mut s, &host, true).await
                }
            })
            .await;
            conn_cpu.push((cpu_seconds(&t.pids) - cpu0) * 10_000.0 / ok.max(1) as f64);
            conns.push(ok as f64 / secs as f64);
            conn_errors += failed;

            // Keep-alive: 64 connections, each opened once.
            let mut streams = Vec::new();
            for _ in 0..64 {
                streams.push(Arc::new(tokio::sync::Mutex::new(handshake(addr, &host, &tls).await?)));
            }
            let next = Arc::new(AtomicU64::new(0));
            let cpu0 = cpu_seconds(&t.pids);
            let (host2, streams2) = (host.clone(), Arc::new(streams));
            let (ok, failed) = closed_loop(64, secs, move || {
                let (host, streams, next) = (host2.clone(), streams2.clone(), next.clone());
                async move {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize % streams.len();
                    let mut s = streams[i].lock().await;
                    get(&mut s, &host, false).await
                }
            })
            .await;
            req_cpu.push((cpu_seconds(&t.pids) - cpu0) * 10_000.0 / ok.max(1) as f64);
            reqs.push(ok as f64 / secs as f64);
            req_errors += failed;
        }
        // 1,000 idle TLS connections, each with one request served.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = memory_mib(&t.pids, "VmRSS:");
        let mut idle = Vec::new();
        let started = Instant::now();
        for _ in 0..1000 {
            let mut s = handshake(addr, &host, &tls).await?;
            get(&mut s, &host, false).await?;
            idle.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let added = memory_mib(&t.pids, "VmRSS:") - before;
        drop(idle);
        eprintln!("{}: 1,000 connections opened in {:?}", t.name, started.elapsed());
        println!(
            "| {} | {:.0} | {:.3} | {conn_errors} | {:.0} | {:.3} | {req_errors} | {added:.1} MiB |",
            t.name,
            median(conns),
            median(conn_cpu),
            median(reqs),
            median(req_cpu),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
