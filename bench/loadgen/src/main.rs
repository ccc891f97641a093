//! meshgate's benchmark tool: a fast upstream, an open-loop load generator (fixed request
//! rate, latency measured from the scheduled send time so queueing is never hidden), and the
//! suite that runs the same load against several targets side by side and prints the table.
//!
//! Why our own generator: we need fixed rates with percentiles for both HTTP/1.1 and h2c, the
//! proxy's CPU read from /proc over exactly the measured window, and no seven-minute build of
//! an external tool on a two-core machine. It is ~300 lines on hyper, which is what we test.
#![allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

mod ab;
mod cp_push;
mod edge_tls;
mod mtls;

#[derive(Parser)]
#[command(about = "meshgate benchmark tool")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A fast upstream answering every request with a fixed 100-byte body (HTTP/1.1 and h2c).
    Upstream {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Run one load and print a JSON result line.
    Load(LoadArgs),
    /// Control-plane push latency to many simulated proxies.
    CpPush {
        /// The meshgate binary.
        #[arg(long)]
        meshgate: std::path::PathBuf,
        #[arg(long, default_value_t = 200)]
        proxies: usize,
        #[arg(long, default_value_t = 1000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        #[arg(long, default_value_t = 10)]
        changes: usize,
    },
    /// mTLS vs plaintext: new connections per second and keep-alive throughput.
    Mtls {
        #[arg(long, default_value_t = 5)]
        secs: u64,
        #[arg(long, default_value_t = 16)]
        conns: usize,
    },
    /// Writes `ca.pem`, `tls.crt`, `tls.key` (ECDSA P-256) for the HTTPS benchmark.
    Cert {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value = "bench.local")]
        name: String,
    },
    /// HTTPS at the edge: new TLS connections/s, keep-alive HTTPS req/s, idle connection memory.
    EdgeTls {
        /// `name,h1=ADDR,pid=PID` (the HTTPS address).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// The CA that signed the servers' certificate.
        #[arg(long)]
        ca: std::path::PathBuf,
        #[arg(long, default_value = "bench.local")]
        host: String,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Two targets that differ in one thing, under the same load at the same time in many
    /// short windows, compared window by window: what that one thing costs.
    Ab {
        /// `name,h1=ADDR,h2=ADDR,pid=PID[+PID][,netns=NAME]`: the target with the thing.
        #[arg(long)]
        a: String,
        /// The target without it.
        #[arg(long)]
        b: String,
        #[arg(long, value_delimiter = ',', default_value = "h1,h2")]
        protos: Vec<String>,
        /// Loads: 0 is closed-loop at maximum throughput, others are requests per second.
        #[arg(long, value_delimiter = ',', default_value = "0,2000")]
        rates: Vec<u64>,
        /// Seconds per window.
        #[arg(long, default_value_t = 2)]
        secs: u64,
        /// Windows per load.
        #[arg(long, default_value_t = 20)]
        windows: usize,
        #[arg(long, default_value = "bench.local")]
        host: String,
    },
    /// Run the whole comparison and print a markdown table.
    Suite {
        /// `name,h1=ADDR,h2=ADDR,pid=PID[+PID]` (pid: processes whose CPU and memory count).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Fixed rates (requests per second) to measure latency at.
        #[arg(long, value_delimiter = ',', default_value = "1000,2000,4000")]
        rates: Vec<u64>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Rounds per step; medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Host header to send.
        #[arg(long, default_value = "bench.local")]
        host: String,
    },
}

#[derive(clap::Args, Clone)]
struct LoadArgs {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value = "h1")]
    proto: String,
    /// Requests per second; 0 runs closed-loop at maximum throughput.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 32)]
    conns: usize,
    #[arg(long, default_value = "bench.local")]
    host: String,
}

#[derive(Debug, Clone, serde::Serialize)]
struct LoadResult {
    requests: u64,
    errors: u64,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.cmd {
        Cmd::Upstream { addr } => rt.block_on(upstream(addr)),
        Cmd::Load(args) => {
            let r = rt.block_on(load(&args))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Cmd::Suite { targets, rates, secs, rounds, host } => rt.block_on(suite(targets, rates, secs, rounds, host)),
        Cmd::Ab { a, b, protos, rates, secs, windows, host } => {
            rt.block_on(ab::run(&a, &b, &protos, &rates, secs, windows, &host))
        }
        Cmd::Mtls { secs, conns } => rt.block_on(mtls::run(secs, conns)),
        Cmd::Cert { dir, name } => edge_tls::write_cert(&dir, &name),
        Cmd::EdgeTls { targets, ca, host, secs, rounds } => rt.block_on(edge_tls::run(targets, ca, host, secs, rounds)),
        Cmd::CpPush { meshgate, proxies, services, endpoints, changes } => {
            rt.block_on(cp_push::run(&meshgate, proxies, services, endpoints, changes))
        }
    }
}

async fn upstream(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))?;
    let body = Bytes::from(vec![b'x'; 99].into_iter().chain([b'\n']).collect::<Vec<u8>>());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(http::Response::new(Full::new(body)))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

enum Conn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

async fn connect(target: SocketAddr, proto: &str) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(target).await.with_context(|| format!("connect {target}"))?;
    stream.set_nodelay(true)?;
    let io = TokioIo::new(stream);
    Ok(match proto {
        "h2" => {
            let (s, c) = http2::Builder::new(TokioExecutor::new()).handshake(io).await?;
            tokio::spawn(c);
            Conn::H2(s)
        }
        _ => {
            let (s, c) = http1::handshake(io).await?;
            tokio::spawn(c);
            Conn::H1(s)
        }
    })
}

/// `BENCH_REQUEST=curl`: each request carries the headers curl sends (`User-Agent`,
/// `Accept`) besides `Host`; otherwise `Host` alone (as wrk sends).
fn curl_headers() -> bool {
    static CURL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CURL.get_or_init(|| std::env::var("BENCH_REQUEST").is_ok_and(|v| v == "curl"))
}

async fn one(conn: &mut Conn, target: SocketAddr, host: &str) -> anyhow::Result<()> {
    let curl = |b: http::request::Builder| {
        if curl_headers() { b.header("user-agent", "curl/7.88.1").header("accept", "*/*") } else { b }
    };
    let resp = match conn {
        Conn::H1(s) => {
            s.ready().await?;
            let req = curl(http::Request::get("/").header("host", host)).body(Empty::new())?;
            s.send_request(req).await?
        }
        Conn::H2(s) => {
            let req = curl(http::Request::get(format!("http://{host}/"))).body(Empty::new())?;
            s.send_request(req).await?
        }
    };
    let status = resp.status();
    resp.into_body().collect().await?;
    if !status.is_success() {
        bail!("{target}: status {status}");
    }
    Ok(())
}

async fn load(args: &LoadArgs) -> anyhow::Result<LoadResult> {
    let conns = open(args).await?;
    drive(args, conns).await
}

/// The connections of a load, each with one request made (in the network namespace this
/// thread is in).
async fn open(args: &LoadArgs) -> anyhow::Result<Vec<Conn>> {
    let h2 = args.proto == "h2";
    // HTTP/1.1: one connection per worker. HTTP/2: workers share two multiplexed connections.
    let mut conns = Vec::new();
    if h2 {
        let mut shared = Vec::new();
        for _ in 0..2 {
            match connect(args.target, "h2").await? {
                Conn::H2(s) => shared.push(s),
                Conn::H1(_) => bail!("expected an HTTP/2 connection"),
            }
        }
        for i in 0..args.conns {
            conns.push(Conn::H2(shared[i % shared.len()].clone()));
        }
    } else {
        for _ in 0..args.conns {
            conns.push(connect(args.target, "h1").await?);
        }
    }
    for c in &mut conns {
        one(c, args.target, &args.host).await?;
    }
    Ok(conns)
}

/// Runs the load over `conns`.
async fn drive(args: &LoadArgs, conns: Vec<Conn>) -> anyhow::Result<LoadResult> {
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::mpsc::channel::<Instant>(1 << 20);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (rx, errors, stop) = (rx.clone(), errors.clone(), stop.clone());
        let target = args.target;
        let host = args.host.clone();
        let closed_loop = args.rate == 0;
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            loop {
                let started = if closed_loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    Instant::now()
                } else {
                    match rx.lock().await.recv().await {
                        Some(t) => t,
                        None => break,
                    }
                };
                match one(&mut conn, target, &host).await {
                    Ok(()) => lat.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(c) = connect(target, if matches!(conn, Conn::H2(_)) { "h2" } else { "h1" }).await {
                            conn = c;
                        }
                    }
                }
            }
            lat
        }));
    }
    let duration = Duration::from_secs(args.secs);
    let t0 = Instant::now();
    if let Some(nanos) = 1_000_000_000u64.checked_div(args.rate) {
        // Release each request at its scheduled time; timer granularity is absorbed by stamping
        // the release time, queueing for a connection is not.
        let period = Duration::from_nanos(nanos);
        let mut next = t0;
        while next < t0 + duration {
            let now = Instant::now();
            while next <= now {
                let _ = tx.send(now).await;
                next += period;
            }
            tokio::time::sleep_until(next.into()).await;
        }
    } else {
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
    }
    drop(tx);
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        u64::from(all[i.min(all.len() - 1)])
    };
    Ok(LoadResult {
        requests: all.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
    })
}

struct Target {
    name: String,
    h1: Option<SocketAddr>,
    h2: Option<SocketAddr>,
    pids: Vec<u32>,
    /// A network namespace (`/run/netns/NAME`) the load comes from: a workload's, so that its
    /// sidecar intercepts the load as it would the workload's own calls.
    netns: Option<std::fs::File>,
}

fn parse_target(spec: &str) -> anyhow::Result<Target> {
    let mut parts = spec.split(',');
    let name = parts.next().unwrap_or_default().to_string();
    let mut t = Target { name, h1: None, h2: None, pids: Vec::new(), netns: None };
    for p in parts {
        match p.split_once('=') {
            Some(("h1", a)) => t.h1 = Some(a.parse()?),
            Some(("h2", a)) => t.h2 = Some(a.parse()?),
            Some(("pid", ps)) => {
                for pid in ps.split('+') {
                    t.pids.push(pid.parse()?);
                }
            }
            Some(("netns", ns)) => {
                let path = format!("/run/netns/{ns}");
                t.netns = Some(std::fs::File::open(&path).with_context(|| format!("network namespace {path}"))?);
            }
            _ => bail!("bad target part {p:?} in {spec:?}"),
        }
    }
    Ok(t)
}

/// The CPU time of processes: per thread, to the nanosecond (`/proc/PID/task/TID/schedstat`),
/// and the processes' tick counts (`/proc/PID/stat`, 10 ms) for a window in which a thread
/// exits and takes its nanoseconds with it. Ticks alone are too coarse for short windows: a
/// 3 s window at 2,000 req/s is ~40 of them.
struct CpuClock {
    ticks: f64,
    threads: std::collections::BTreeMap<(u32, u32), u64>,
}

impl CpuClock {
    fn read(pids: &[u32]) -> Self {
        let mut threads = std::collections::BTreeMap::new();
        for pid in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
                let ns = std::fs::read_to_string(task.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
                if let Some(ns) = ns {
                    threads.insert((*pid, tid), ns);
                }
            }
        }
        CpuClock { ticks: cpu_seconds(pids), threads }
    }

    /// CPU seconds used since `before`.
    fn since(&self, before: &CpuClock) -> f64 {
        if before.threads.keys().all(|k| self.threads.contains_key(k)) {
            let ns: u64 =
                self.threads.iter().map(|(k, ns)| ns.saturating_sub(before.threads.get(k).copied().unwrap_or(0))).sum();
            ns as f64 / 1e9
        } else {
            self.ticks - before.ticks
        }
    }
}

/// The connections of a load against `t`, opened from its network namespace when it has one
/// (the runtime is single-threaded: entering the namespace here puts every connection in it,
/// and a socket stays in the namespace it was made in).
async fn open_in(t: &Target, home: &std::fs::File, args: &LoadArgs) -> anyhow::Result<Vec<Conn>> {
    if let Some(ns) = &t.netns {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("entering the netns")?;
    }
    let conns = open(args).await.with_context(|| format!("connecting to {}", t.name));
    if t.netns.is_some() {
        nix::sched::setns(home, nix::sched::CloneFlags::CLONE_NEWNET).context("leaving the netns")?;
    }
    conns
}

/// CPU seconds per 10k of the requests of `r`.
fn per_10k(cpu: f64, r: &LoadResult) -> f64 {
    cpu * 10_000.0 / r.requests.max(1) as f64
}

/// Each pair's `f(a) / f(b)`.
fn ratios(a: &[(LoadResult, f64)], b: &[(LoadResult, f64)], f: &dyn Fn(&(LoadResult, f64)) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| f(x) / f(y).max(f64::MIN_POSITIVE)).collect()
}

/// One load against `t`, and the CPU its processes used per 10k requests meanwhile (opening
/// the connections included).
async fn measure(t: &Target, home: &std::fs::File, args: &LoadArgs) -> anyhow::Result<(LoadResult, f64)> {
    let cpu0 = CpuClock::read(&t.pids);
    let conns = open_in(t, home, args).await?;
    let r = drive(args, conns).await?;
    let cpu = CpuClock::read(&t.pids).since(&cpu0);
    let per10k = per_10k(cpu, &r);
    Ok((r, per10k))
}

/// CPU seconds (user + system) used so far by the processes.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// Resident memory in MiB (`VmRSS`, or the peak `VmHWM`).
fn memory_mib(pids: &[u32], field: &str) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

async fn suite(specs: Vec<String>, rates: Vec<u64>, secs: u64, rounds: usize, host: String) -> anyhow::Result<()> {
    let targets: Vec<Target> = specs.iter().map(|s| parse_target(s)).collect::<Result<_, _>>()?;
    let home = std::fs::File::open("/proc/self/ns/net").context("this process's network namespace")?;
    let idle: Vec<Vec<f64>> =
        targets.iter().map(|t| t.pids.iter().map(|p| memory_mib(&[*p], "VmRSS:")).collect()).collect();
    println!(
        "Medians of {rounds} rounds of {secs} s; within a round the targets run one after another, each round \
         starting one target later."
    );
    println!();
    println!(
        "| target | proto | load | req/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU s / 10k req | proxy RSS MiB \
         | req/s, CPU / 10k against the first proxy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    // Paired: each round's figure divided by the first proxy's in the same round, then the
    // median of those ratios; what the machine did during a round cancels out of them, which
    // it does not from a ratio of two medians.
    let reference = targets.iter().position(|t| !t.pids.is_empty());
    for proto in ["h1", "h2"] {
        for load_rate in std::iter::once(0).chain(rates.iter().copied()) {
            let mut rows: Vec<Vec<(LoadResult, f64)>> = targets.iter().map(|_| Vec::new()).collect();
            for round in 0..rounds {
                // Each round starts one target later: no target always runs first (just after a
                // direct run, or a rate change) or last, which showed as a bias of its own.
                for i in (0..targets.len()).map(|k| (k + round) % targets.len()) {
                    let t = &targets[i];
                    let Some(addr) = (if proto == "h1" { t.h1 } else { t.h2 }) else { continue };
                    let args = LoadArgs {
                        target: addr,
                        proto: proto.into(),
                        rate: load_rate,
                        secs,
                        conns: if load_rate == 0 { 64 } else { 16 },
                        host: host.clone(),
                    };
                    let m =
                        measure(t, &home, &args).await.with_context(|| format!("{} {proto} {load_rate}", t.name))?;
                    rows[i].push(m);
                }
            }
            for (t, runs) in targets.iter().zip(&rows) {
                if runs.is_empty() {
                    continue;
                }
                let base = reference.map(|r| &rows[r]).filter(|b| b.len() == runs.len() && !t.pids.is_empty());
                let paired = match base {
                    Some(base) => {
                        let ratio = |f: &dyn Fn(&(LoadResult, f64)) -> f64| median(ratios(runs, base, f));
                        format!("{:.3}, {:.3}", ratio(&|r| r.0.rps), ratio(&|r| r.1))
                    }
                    None => "-".to_string(),
                };
                let m = |f: &dyn Fn(&(LoadResult, f64)) -> f64| median(runs.iter().map(f).collect());
                let label = if load_rate == 0 { "max".to_string() } else { format!("{load_rate}/s") };
                let per10k = if t.pids.is_empty() { "-".to_string() } else { format!("{:.3}", m(&|r| r.1)) };
                let rss =
                    if t.pids.is_empty() { "-".to_string() } else { format!("{:.1}", memory_mib(&t.pids, "VmRSS:")) };
                println!(
                    "| {} | {proto} | {label} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {per10k} | {rss} | {paired} |",
                    t.name,
                    m(&|r| r.0.rps),
                    m(&|r| r.0.p50_us as f64) / 1000.0,
                    m(&|r| r.0.p99_us as f64) / 1000.0,
                    m(&|r| r.0.p999_us as f64) / 1000.0,
                    runs.iter().map(|r| r.0.errors).sum::<u64>(),
                );
            }
        }
    }
    println!();
    let each = |pids: &[u32], f: &dyn Fn(u32) -> f64| -> String {
        let v: Vec<f64> = pids.iter().map(|p| f(*p)).collect();
        let sum: f64 = v.iter().sum();
        if v.len() > 1 {
            let parts: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
            format!("{sum:.1} MiB ({})", parts.join(" + "))
        } else {
            format!("{sum:.1} MiB")
        }
    };
    for (t, idle) in targets.iter().zip(idle) {
        if !t.pids.is_empty() {
            let idle_text = each(&t.pids, &|p| idle[t.pids.iter().position(|x| *x == p).unwrap_or(0)]);
            println!(
                "{}: RSS idle {idle_text}, peak {}, after {}",
                t.name,
                each(&t.pids, &|p| memory_mib(&[p], "VmHWM:")),
                each(&t.pids, &|p| memory_mib(&[p], "VmRSS:"))
            );
        }
    }
    Ok(())
}
