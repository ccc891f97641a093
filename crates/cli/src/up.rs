//! `meshgate up`: the Service Mesh Lab. A fresh control plane, the lab's resources
//! (`examples/lab/mesh.yaml`), a gateway on 127.0.0.1:8080, and the workloads — `order`
//! calling `inventory` v1 and v2 — each started with `meshgate run` in its own network
//! namespace with a sidecar; then a gentle traffic generator with a summary every 10 s.
//! Without root there are no namespaces: the apps run on loopback addresses behind the
//! gateway, and the lab says so. Ctrl-C stops everything in order (workloads, which remove
//! their namespaces, then the gateway, then the control plane).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Method;
use tokio::process::{Child, Command};

use crate::client::Api;
use crate::signals::Signals;

const GRPC: &str = "127.0.0.1:15012";
const API: &str = "127.0.0.1:15014";
const GATEWAY: &str = "127.0.0.1:8080";
const ADMIN: &str = "127.0.0.1:15000";
const METRICS: &str = "127.0.0.1:15020";

/// A process of the lab, stopped with SIGTERM in reverse order of start.
struct Proc {
    name: String,
    child: Child,
}

struct Lab {
    procs: Vec<Proc>,
    exe: PathBuf,
    state_dir: PathBuf,
}

impl Lab {
    /// Starts `meshgate ARGS` in its own process group (Ctrl-C reaches `up` alone, which
    /// stops everything in order); quiet unless RUST_LOG says otherwise.
    fn spawn(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().with_context(|| format!("starting {name}"))?;
        self.procs.push(Proc { name: name.to_string(), child });
        Ok(())
    }

    /// `meshgate run` of one lab workload.
    fn run(&mut self, name: &str, sa: &str, labels: &[&str], service: &str, app: &[String]) -> anyhow::Result<()> {
        let state = self.state_dir.display().to_string();
        let mut args = vec![
            "run",
            "-n",
            "shop",
            "--name",
            name,
            "--service-account",
            sa,
            "--service",
            service,
            "--state-dir",
            &state,
        ];
        for l in labels {
            args.extend(["--label", l]);
        }
        args.push("--");
        args.extend(app.iter().map(String::as_str));
        self.spawn(name, &args, &[])
    }

    /// Stops the workloads (all at once: each removes its Workload, drains its sidecar and
    /// deletes its namespace), then the gateway, then the control plane. A signal while
    /// stopping is passed on once more (a `meshgate run` then kills its application at once).
    async fn stop(&mut self, signals: &mut Signals) {
        let (workloads, infra): (Vec<_>, Vec<_>) =
            self.procs.drain(..).partition(|p| p.name != "gateway" && p.name != "control plane");
        stop_group(workloads, signals).await;
        for p in infra.into_iter().rev() {
            stop_group(vec![p], signals).await;
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("{} exited ({status}) during start-up; see its messages above", p.name);
            }
        }
        Ok(())
    }
}

/// SIGTERM to every process of `procs`, then waits for them (each killed 20 s after its
/// SIGTERM); a signal meanwhile is sent on to those still running.
async fn stop_group(procs: Vec<Proc>, signals: &mut Signals) {
    let mut pids: Vec<u32> = procs.iter().filter_map(|p| p.child.id()).collect();
    let mut waiting = tokio::task::JoinSet::new();
    for mut p in procs {
        waiting.spawn(async move {
            let pid = p.child.id();
            let _ = crate::run::terminate(&mut p.child, &p.name, Duration::from_secs(20)).await;
            pid
        });
    }
    loop {
        tokio::select! {
            done = waiting.join_next() => match done {
                // Reaped: its pid may be reused, never signal it again.
                Some(Ok(Some(pid))) => pids.retain(|p| *p != pid),
                Some(_) => {}
                None => return,
            },
            signal = signals.recv() => {
                eprintln!("{signal} again: asking the lab's processes once more");
                for pid in &pids {
                    let _ = meshgate_intercept::terminate(*pid);
                }
            }
        }
    }
}

/// One GET through the gateway: (status, the inventory version that answered, if any).
async fn get(path: &str, host: Option<&str>) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(GATEWAY).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", host.unwrap_or(GATEWAY))
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await??;
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn version_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["inventory"]["version"].as_str().map(str::to_string))
        .unwrap_or_else(|| "none".into())
}

/// Two requests a second; a line every 10 s with what answered.
async fn traffic(stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut statuses: BTreeMap<String, u32> = BTreeMap::new();
    let mut versions: BTreeMap<String, u32> = BTreeMap::new();
    let mut n = 0u32;
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        let (status, version) = match get("/", None).await {
            Ok((s, body)) => (s.to_string(), version_of(&body)),
            Err(e) => (format!("error ({e})"), "none".into()),
        };
        *statuses.entry(status).or_default() += 1;
        *versions.entry(version).or_default() += 1;
        n += 1;
        if n == 20 {
            let s: Vec<String> = statuses.iter().map(|(k, v)| format!("{v}× {k}")).collect();
            let v: Vec<String> = versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("traffic, last 10 s: {} · inventory {}", s.join(", "), v.join(", "));
            statuses.clear();
            versions.clear();
            n = 0;
        }
    }
}

async fn wait_for(
    what: &str,
    lab: &mut Lab,
    timeout: Duration,
    mut ok: impl AsyncFnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ok().await {
            return Ok(());
        }
        lab.check_alive()?;
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not ready within {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn apply_file(api: &Api, path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let source = path.display().to_string();
    let (status, v) = api.call(Method::POST, "/api/v1/apply", Some((Bytes::from(text), &source))).await?;
    if !status.is_success() {
        bail!("applying {}: {v}", path.display());
    }
    Ok(())
}

pub(crate) async fn run(dir: PathBuf, state_dir: PathBuf) -> anyhow::Result<()> {
    // From the first moment: Ctrl-C (or SIGTERM) at any point stops what has started, in
    // order, instead of killing `up` and orphaning the processes it started.
    let mut signals = Signals::install()?;
    let mesh = dir.join("mesh.yaml");
    if !mesh.is_file() {
        bail!("{} not found: run `meshgate up` from the meshgate checkout, or pass --dir", mesh.display());
    }
    let apps = dir.join("../apps");
    std::fs::create_dir_all(&state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
    // One lab per state directory, and nothing of a running one is touched by a second `up`.
    let _lock = LabLock::acquire(&state_dir)?;
    for (addr, what) in [
        (GRPC, "control plane gRPC"),
        (API, "control plane API"),
        (GATEWAY, "gateway"),
        (ADMIN, "gateway admin"),
        (METRICS, "gateway metrics"),
    ] {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            bail!("{addr} ({what}) is not free: {e}; is another meshgate lab, control plane or gateway running?");
        }
    }
    let root = meshgate_intercept::root();
    if root {
        ensure_tools(&dir)?;
        // What runs that are gone left (a lab killed with SIGKILL, a machine session ended) is
        // removed; workloads still running elsewhere on the host are only counted.
        match meshgate_intercept::reclaim_abandoned(std::time::Duration::from_secs(30)) {
            Ok(removed) if !removed.is_empty() => {
                eprintln!("removed what an earlier run left behind: {}", removed.join(", "))
            }
            Ok(_) => {}
            Err(e) => eprintln!("note: could not remove what earlier runs left: {e}"),
        }
        let live = meshgate_intercept::pod_namespaces().len();
        if live > 0 {
            eprintln!(
                "note: {live} workload network namespace(s) of another run are here (they have processes in them, \
                 or were made in the last 30 s); `meshgate cleanup` removes them"
            );
        }
    }
    // A fresh lab every time: its own store, the CLI's default state directory (so `meshgate
    // apply`, `get`, `proxy-status` work without flags).
    let store = state_dir.join("lab-store");
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store).with_context(|| format!("cannot create {}", store.display()))?;
    let token_file = meshgate_control::run::token_path(&state_dir);
    let _ = std::fs::remove_file(&token_file);
    let mut lab = Lab { procs: Vec::new(), exe: std::env::current_exe()?, state_dir: state_dir.clone() };
    let started = tokio::select! {
        r = start(&mut lab, &dir, &apps, &store, root) => r.map_err(Some),
        signal = signals.recv() => {
            println!("\n{signal} while the lab was starting: stopping what has started...");
            Err(None)
        }
    };
    let outcome = match started {
        Ok(()) => {
            let stop = Arc::new(AtomicBool::new(false));
            let generator = tokio::spawn(traffic(stop.clone()));
            signals.recv().await;
            stop.store(true, Ordering::Release);
            generator.abort();
            println!("\nstopping the lab...");
            Ok(true)
        }
        Err(None) => Ok(false),
        Err(Some(e)) => Err(e),
    };
    lab.stop(&mut signals).await;
    if root {
        meshgate_intercept::remove_bridge_if_unused();
    }
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_file(&token_file);
    match outcome {
        Ok(true) => {
            println!(
                "lab stopped: workloads, sidecars, network namespaces, the bridge, the gateway and the control plane are gone"
            );
            Ok(())
        }
        Ok(false) => {
            println!("lab stopped before it was up: everything it had started is gone");
            Ok(())
        }
        Err(e) => Err(e.context("the lab did not start; everything it had started is stopped and removed")),
    }
}

/// The lock that makes a state directory's lab one at a time: held by a running `up` (the
/// kernel drops it when that process exits, however it exits), with its pid inside.
struct LabLock {
    _file: std::fs::File,
}

impl LabLock {
    fn acquire(state_dir: &Path) -> anyhow::Result<LabLock> {
        use std::io::{Read, Seek, Write};
        let path = state_dir.join("lab.lock");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                bail!(
                    "a meshgate lab is already running (pid {pid}, state directory {}): stop it with Ctrl-C in its \
                     terminal or `kill -INT {pid}`; it was left untouched",
                    state_dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow::Error::from(e).context(format!("cannot lock {}", path.display())));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(LabLock { _file: file })
    }
}

/// The lab needs `ip` and `nft` or `iptables`: on a fresh machine, the project's script
/// installs them (Debian packages), as it does for the tests.
fn ensure_tools(dir: &Path) -> anyhow::Result<()> {
    let has_ip = std::process::Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    if has_ip && meshgate_intercept::Backend::detect().is_ok() {
        return Ok(());
    }
    let script = dir.join("../../scripts/deps");
    if !script.is_file() {
        bail!("the lab needs ip (iproute2) and nftables or iptables: install them, or run from the checkout");
    }
    eprintln!("installing what the lab needs: {} lab", script.display());
    let status = std::process::Command::new(&script).arg("lab").status().context("running scripts/deps")?;
    if !status.success() {
        bail!("{} lab failed ({status})", script.display());
    }
    Ok(())
}

async fn start(lab: &mut Lab, dir: &Path, apps: &Path, store: &Path, root: bool) -> anyhow::Result<()> {
    let state = lab.state_dir.display().to_string();
    let store_arg = format!("dir:{}", store.display());
    lab.spawn(
        "control plane",
        &["control-plane", "--store", &store_arg, "--grpc", GRPC, "--http", API, "--state-dir", &state],
        &[],
    )?;
    let token_file = meshgate_control::run::token_path(&lab.state_dir);
    wait_for("control plane", lab, Duration::from_secs(30), async || {
        token_file.exists() && tokio::net::TcpStream::connect(API).await.is_ok()
    })
    .await
    .context("is another control plane using 127.0.0.1:15012 or :15014?")?;
    let api = Api::new(API, None, &lab.state_dir)?;
    apply_file(&api, &dir.join("mesh.yaml")).await?;
    if !root {
        apply_file(&api, &dir.join("loopback.yaml")).await?;
    }

    // The gateway: a managed proxy with its own identity.
    let v = api.create_token("shop", "gateway", 300, "up").await.context("creating the gateway's join token")?;
    let token = v["token"].as_str().unwrap_or_default().to_string();
    lab.spawn(
        "gateway",
        &[
            "proxy",
            "--role",
            "gateway",
            "--namespace",
            "shop",
            "--service-account",
            "gateway",
            "--bind",
            "127.0.0.1",
            "--admin",
            ADMIN,
            "--metrics",
            METRICS,
            "--control-plane",
            GRPC,
            "--state-dir",
            &state,
        ],
        &[("MESHGATE_JOIN_TOKEN", &token)],
    )?;

    let py = |file: &str, extra: &[&str]| -> Vec<String> {
        let mut v = vec!["python3".to_string(), apps.join(file).display().to_string()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    if root {
        lab.run(
            "inventory-v1",
            "inventory",
            &["app=inventory", "version=v1"],
            "inventory-v1:8080",
            &py("inventory.py", &["--version", "v1"]),
        )?;
        lab.run(
            "inventory-v2",
            "inventory",
            &["app=inventory", "version=v2"],
            "inventory-v2:8080",
            &py("inventory.py", &["--version", "v2"]),
        )?;
        lab.run("order-1", "order", &["app=order"], "order:8080", &py("order.py", &[]))?;
    } else {
        eprintln!(
            "\nnot root: no network namespaces, interception or sidecars. The apps run on loopback addresses \
             (127.0.0.2-4) behind the gateway, without mTLS between them; run `meshgate up` as root for the mesh.\n"
        );
        let mut start_app = |name: &str, args: Vec<String>| -> anyhow::Result<()> {
            let mut c = Command::new(&args[0]);
            c.args(&args[1..]).stdin(Stdio::null()).process_group(0).kill_on_drop(true);
            let child = c.spawn().with_context(|| format!("starting {name}"))?;
            lab.procs.push(Proc { name: name.into(), child });
            Ok(())
        };
        start_app("inventory-v1", py("inventory.py", &["--version", "v1", "--host", "127.0.0.3"]))?;
        start_app("inventory-v2", py("inventory.py", &["--version", "v2", "--host", "127.0.0.4"]))?;
        start_app(
            "order-1",
            py(
                "order.py",
                &["--host", "127.0.0.2", "--inventory", &format!("http://{GATEWAY}"), "--inventory-host", "inventory"],
            ),
        )?;
    }
    wait_for(
        "the lab",
        lab,
        Duration::from_secs(60),
        async || matches!(get("/", None).await, Ok((200, body)) if version_of(&body) != "none"),
    )
    .await?;
    // The map, signed in by a code spent on first use (the token stays in the state dir).
    let dashboard = match crate::client::dashboard_url(&Api::new(API, None, &lab.state_dir)?).await {
        Ok(url) => url,
        Err(e) => format!("(no sign-in URL: {e}; `meshgate dashboard` prints one)"),
    };
    print_tips(root, &lab.state_dir, &dashboard);
    Ok(())
}

fn print_tips(root: bool, state_dir: &Path, dashboard: &str) {
    println!();
    println!(
        "meshgate lab is up: gateway → order → inventory (99% v1, 1% v2){}",
        if root { ", every hop mutual TLS" } else { "" }
    );
    println!();
    println!("  the map, in a browser: {dashboard}");
    println!("  (a one-time sign-in link; `meshgate dashboard` prints a new one)");
    println!();
    println!("  curl http://127.0.0.1:8080/                  # through the gateway, order and inventory");
    println!("  meshgate proxy-status                        # the proxies and the config each runs");
    println!("  meshgate get workloads -n shop               # each with its own address");
    println!("  curl http://127.0.0.1:15000/config_dump      # the gateway's effective config");
    println!();
    println!("Watch:");
    println!(
        "  meshgate top                                 # live edges: rate, success, latency, the proxies' share, mTLS"
    );
    println!("  meshgate stat workload -n shop               # what each workload served");
    println!("  meshgate tap --admin 127.0.0.1:15000         # live requests through the gateway");
    if root {
        println!("  meshgate tap order-1 -n shop                 # live requests through order's sidecar");
    }
    println!("  curl http://127.0.0.1:15020/metrics          # the gateway's Prometheus metrics (Istio's names)");
    println!("  curl http://127.0.0.1:15014/metrics          # the control plane's");
    println!(
        "  service graph (JSON): http://127.0.0.1:15014/api/graph?window=60s (Bearer token in {})",
        meshgate_control::run::token_path(state_dir).display()
    );
    if state_dir != crate::default_state_dir() {
        println!("  (meshgate commands: add --state-dir {})", state_dir.display());
    }
    println!();
    println!("Try:");
    println!(
        "  meshgate apply -f examples/lab/try/canary-50.yaml    # move the canary to 50%, watch the traffic lines"
    );
    if root {
        println!("  meshgate apply -f examples/lab/try/strict.yaml       # STRICT mTLS: plaintext to a pod is refused");
        println!(
            "  meshgate apply -f examples/lab/try/deny-order.yaml   # deny order → inventory: 403 RBAC, shown by order"
        );
        println!("  meshgate delete authorizationpolicy deny-order -n shop   # and undo it");
        println!("  meshgate apply -f examples/lab/mesh.yaml             # back to the start");
    } else {
        println!("  meshgate apply -f examples/lab/try/canary-50-loopback.yaml   # move the canary to 50%");
        println!("  meshgate apply -f examples/lab/loopback.yaml                 # back to the start");
    }
    println!();
    println!("Traffic: 2 requests/s through the gateway, a summary every 10 s. Ctrl-C stops everything.");
    println!();
}

/// `meshgate up --gateway-demo`: the standalone gateway on `examples/gateway/` in front of
/// three demo backends.
pub(crate) async fn gateway_demo(dir: PathBuf) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} not found: run `meshgate up` from the meshgate checkout, or pass --dir", dir.display());
    }
    let app = dir.join("../apps/echo.py");
    let mut children = Vec::new();
    for (name, port) in [("web-v1", 18081), ("web-v2", 18082), ("api", 18083)] {
        let child = tokio::process::Command::new("python3")
            .arg(&app)
            .args(["--name", name, "--port", &port.to_string()])
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting demo backend {name} ({})", app.display()))?;
        children.push(child);
    }
    println!();
    println!("meshgate demo: gateway on http://127.0.0.1:8080, admin on http://127.0.0.1:15000");
    println!("  curl -H 'Host: shop.example.com' http://127.0.0.1:8080/          # 90% web-v1, 10% web-v2");
    println!("  curl -H 'Host: shop.example.com' http://127.0.0.1:8080/api/items # api, path rewritten");
    println!("  curl -i http://127.0.0.1:8080/old                                # 301 redirect");
    println!("  curl http://127.0.0.1:15000/config_dump");
    println!("  edit {}/*.yaml: changes apply live; Ctrl-C stops everything", dir.display());
    println!();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opts = crate::gateway::Options {
        paths: vec![dir],
        bind: "127.0.0.1".parse()?,
        admin: Some("127.0.0.1:15000".parse()?),
        drain_timeout: Duration::from_secs(5),
        access_log: true,
        metrics: Some("127.0.0.1:15020".parse()?),
        telemetry: true,
        idle_timeout: meshgate_proxy::conn::ServerSettings::default().idle_timeout,
        header_timeout: None,
        ingress: meshgate_model::ingress::IngressPorts { addresses: vec![[127, 0, 0, 1].into()], ..Default::default() },
    };
    let result = crate::gateway::run(opts).await;
    for mut c in children {
        let _ = c.kill().await;
    }
    result
}
