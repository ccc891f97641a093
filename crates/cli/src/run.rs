//! `meshgate run`: a command in its own network namespace with a sidecar, as a pod is in
//! Kubernetes. Registers the Workload (and any Service it provides that does not exist yet),
//! creates the namespace and its redirection rules, starts the sidecar and waits for its
//! certificate and configuration, then runs the command. When the command exits, its Workload
//! is removed (peers stop sending to it), the sidecar drains and exits, and the namespace is
//! deleted; the command's exit status is returned.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use meshgate_intercept::{Backend, PROXY_UID, Pod, RuleSpec};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::client::Api;
use crate::signals::Signals;

/// `meshgate run` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The workload's namespace.
    #[arg(long, short = 'n', default_value = "default")]
    pub(crate) namespace: String,
    /// The service account whose identity it gets.
    #[arg(long, default_value = "default")]
    pub(crate) service_account: String,
    /// Workload name (default: the first Service's name and a random suffix).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// A Service it provides, NAME:PORT[/http|http2|grpc|tcp]; created (selecting the
    /// workload's `app` label) when it does not exist. Repeatable.
    #[arg(long = "service")]
    pub(crate) services: Vec<String>,
    /// A workload label KEY=VALUE (default app=<first Service>). Repeatable.
    #[arg(long = "label")]
    pub(crate) labels: Vec<String>,
    /// The workload's address (default: the next free one in 10.77.0.0/16).
    #[arg(long)]
    pub(crate) ip: Option<std::net::Ipv4Addr>,
    /// Redirection back end: auto, iptables or nftables.
    #[arg(long, default_value = "auto")]
    pub(crate) intercept: String,
    /// Outbound destination ports never redirected (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) exclude_outbound_ports: Vec<u16>,
    /// Inbound ports never redirected: reached directly, without the sidecar (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) exclude_inbound_ports: Vec<u16>,
    /// Outbound destination CIDRs never redirected (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) exclude_cidrs: Vec<String>,
    /// The control plane's gRPC address.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub(crate) control_plane: String,
    /// The CA bundle to trust the control plane with (default: STATE_DIR/ca-bundle.pem).
    #[arg(long)]
    pub(crate) ca_bundle: Option<PathBuf>,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub(crate) trust_domain: String,
    /// The sidecar writes a JSON access log line per request (to this command's stderr).
    #[arg(long)]
    pub(crate) access_log: bool,
    /// "off": the sidecar records nothing (no metrics, access logs, traces, tap or graph).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub(crate) telemetry: String,
    #[command(flatten)]
    pub(crate) api: crate::ApiFlags,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub(crate) command: Vec<String>,
}

/// `NAME:PORT[/PROTOCOL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceArg {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) protocol: Option<String>,
}

pub(crate) fn parse_service(s: &str) -> Result<ServiceArg, String> {
    let (name, rest) = s.split_once(':').ok_or_else(|| format!("--service {s:?}: expected NAME:PORT[/PROTOCOL]"))?;
    let (port, protocol) = match rest.split_once('/') {
        Some((p, proto)) => (p, Some(proto.to_ascii_lowercase())),
        None => (rest, None),
    };
    let port: u16 = port.parse().map_err(|_| format!("--service {s:?}: {port:?} is not a port"))?;
    if port == 0 {
        return Err(format!("--service {s:?}: port 0"));
    }
    if let Some(p) = &protocol
        && !matches!(p.as_str(), "http" | "http2" | "grpc" | "tcp")
    {
        return Err(format!("--service {s:?}: protocol {p:?} is not one of http, http2, grpc, tcp"));
    }
    meshgate_api::validate::syntax::dns_label(name).map_err(|e| format!("--service {s:?}: {e}"))?;
    Ok(ServiceArg { name: name.to_string(), port, protocol })
}

fn short_id() -> String {
    meshgate_tls::hex(&meshgate_tls::random_bytes(3))
}

/// Removes the Workload (its endpoints leave every Service); already gone is fine. Bounded:
/// a control plane that does not answer does not hold up a stop.
async fn remove_workload(api: &Api, ns: &str, name: &str) {
    let path = format!("/api/v1/resources/Workload/{ns}/{name}");
    match tokio::time::timeout(Duration::from_secs(5), api.call(Method::DELETE, &path, None)).await {
        Ok(Ok((status, _))) if status.is_success() || status == StatusCode::NOT_FOUND => {}
        Ok(Ok((status, v))) => eprintln!("meshgate run: cannot remove Workload {ns}/{name}: {status}: {v}"),
        Ok(Err(e)) => eprintln!("meshgate run: cannot remove Workload {ns}/{name}: {e:#}"),
        Err(_) => {
            eprintln!("meshgate run: cannot remove Workload {ns}/{name}: the control plane did not answer within 5 s")
        }
    }
}

async fn api_ok(api: &Api, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let body = body.map(|b| (Bytes::from(b.to_string()), "meshgate run"));
    let (status, v) = api.call(method.clone(), path, body).await?;
    if !status.is_success() {
        bail!("{method} {path}: {status}: {}", crate::client::error_text(&v));
    }
    Ok(v)
}

/// Creates the Services that do not exist yet (selecting the workload's `app` label).
async fn ensure_services(api: &Api, ns: &str, services: &[ServiceArg], app: &str) -> anyhow::Result<()> {
    for s in services {
        let path = format!("/api/v1/resources/Service/{ns}/{}", s.name);
        let (status, existing) = api.call(Method::GET, &path, None).await?;
        if status.is_success() {
            let has_port = existing["spec"]["ports"]
                .as_array()
                .is_some_and(|ports| ports.iter().any(|p| p["port"].as_u64() == Some(u64::from(s.port))));
            if !has_port {
                eprintln!(
                    "meshgate run: Service {ns}/{} exists without port {}: left as it is (edit it to add the port)",
                    s.name, s.port
                );
            }
            continue;
        }
        if status != StatusCode::NOT_FOUND {
            bail!("GET {path}: {status}: {existing}");
        }
        let mut port = json!({ "name": s.protocol.clone().unwrap_or_else(|| format!("port-{}", s.port)), "port": s.port, "targetPort": s.port });
        if let Some(p) = &s.protocol {
            port["appProtocol"] = json!(p);
        }
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": s.name, "namespace": ns, "annotations": { "meshgate.io/created-by": "meshgate run" } },
            "spec": { "selector": { "app": app }, "ports": [port] },
        });
        api_ok(api, Method::POST, "/api/v1/apply", Some(service)).await?;
        eprintln!("meshgate run: created Service {ns}/{} port {} (selector app={app})", s.name, s.port);
    }
    Ok(())
}

/// Relays the workload namespace's connections to the control plane (which may listen on
/// the host's loopback only): the sidecar verifies the control plane's identity end to end.
async fn relay(listener: TcpListener, target: String) {
    loop {
        let Ok((mut down, _)) = listener.accept().await else { continue };
        let target = target.clone();
        tokio::spawn(async move {
            for addr in target.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                if let Ok(Ok(mut up)) = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    return;
                }
            }
        });
    }
}

async fn wait_ready(sidecar: &mut Child) -> anyhow::Result<()> {
    let Some(stdout) = sidecar.stdout.take() else { bail!("sidecar stdout not captured") };
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = async {
        while let Some(line) = lines.next_line().await? {
            if line.trim() == "READY" {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    };
    match tokio::time::timeout(Duration::from_secs(40), ready).await {
        Ok(Ok(true)) => {
            // What the sidecar writes from now on (its access log) goes on to our standard
            // error: standard output stays the application's.
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut out = tokio::io::stderr();
                while let Ok(Some(line)) = lines.next_line().await {
                    if out.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
            Ok(())
        }
        Ok(Ok(false)) => {
            let status = sidecar.wait().await.ok();
            bail!("the sidecar exited before it was ready ({})", status.map_or("?".into(), |s| s.to_string()))
        }
        Ok(Err(e)) => bail!("reading from the sidecar: {e}"),
        Err(_) => bail!("the sidecar was not ready within 40 s (no certificate or configuration)"),
    }
}

/// Waits for the application; on SIGINT or SIGTERM asks it to stop (SIGTERM), and kills it
/// 10 s later, or at once on a second signal. Returns its exit code.
async fn supervise(app: &mut Child, signals: &mut Signals) -> anyhow::Result<i32> {
    let status = tokio::select! {
        s = app.wait() => s?,
        _ = signals.recv() => {
            tokio::select! {
                s = terminate(app, "the application", Duration::from_secs(10)) => s?,
                _ = signals.recv() => {
                    eprintln!("meshgate run: second signal: killing the application");
                    app.kill().await?;
                    app.wait().await?
                }
            }
        }
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// SIGTERM, then SIGKILL if `what` has not exited within `grace`.
pub(crate) async fn terminate(
    child: &mut Child,
    what: &str,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = meshgate_intercept::terminate(pid);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            eprintln!("{what} did not stop within {} s of SIGTERM: killing it", grace.as_secs());
            child.kill().await?;
            child.wait().await
        }
    }
}

pub(crate) async fn main(args: Args, api: Api) -> anyhow::Result<i32> {
    // First of all: a signal at any moment from here on stops the run and undoes what it did.
    let mut signals = Signals::install()?;
    // Everything that can be checked before anything is created, is.
    if args.command.is_empty() {
        bail!("no command: meshgate run [flags] -- COMMAND [ARGS...]");
    }
    if !meshgate_intercept::root() {
        bail!(
            "meshgate run needs root: it creates a network namespace and redirection rules for the workload \
             (`meshgate up` falls back to loopback ports without root)"
        );
    }
    let services: Vec<ServiceArg> =
        args.services.iter().map(|s| parse_service(s)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').with_context(|| format!("--label {l:?}: expected KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let ns = args.namespace.clone();
    meshgate_api::validate::syntax::dns_label(&ns).map_err(|e| anyhow::anyhow!("--namespace: {e}"))?;
    let base = services.first().map_or_else(|| args.service_account.clone(), |s| s.name.clone());
    let name = args.name.clone().unwrap_or_else(|| format!("{base}-{}", short_id()));
    meshgate_api::validate::syntax::dns_label(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let app_label = labels.entry("app".into()).or_insert_with(|| base.clone()).clone();
    labels.insert("meshgate.io/run".into(), "true".into());
    let backend = match args.intercept.as_str() {
        "auto" => Backend::detect()?,
        other => Backend::parse(other).with_context(|| format!("--intercept {other:?}: auto, iptables or nftables"))?,
    };
    let bundle = args.ca_bundle.clone().unwrap_or_else(|| meshgate_control::run::bundle_path(&args.api.state_dir));
    if !bundle.exists() {
        bail!("no CA bundle at {} (is a control plane running here? --ca-bundle)", bundle.display());
    }
    find_program(&args.command[0])?;

    let plan = Plan {
        args: &args,
        api: &api,
        services: &services,
        app_label: &app_label,
        name: &name,
        bundle: &bundle,
        backend,
    };
    let mut registered = false;
    let started = tokio::select! {
        started = plan.start(labels, &mut registered) => started.map_err(Stop::Failed),
        signal = signals.recv() => Err(Stop::Signal(signal)),
    };
    // A failed or interrupted start has already removed its namespace, rules, lease, bridge
    // and sidecar (dropping them undoes them); what is left is the Workload.
    let started = match started {
        Ok(started) => started,
        Err(stop) => {
            if registered {
                remove_workload(&api, &ns, &name).await;
            }
            return match stop {
                Stop::Failed(e) => {
                    Err(e.context(format!("{ns}/{name} did not start; everything it created is removed")))
                }
                Stop::Signal(signal) => {
                    eprintln!(
                        "meshgate run: {signal} while {ns}/{name} was starting: stopped, everything it created is removed"
                    );
                    Ok(crate::signals::exit_code(signal))
                }
            };
        }
    };
    let code = plan.run_app(&started, &mut signals).await;
    // The application is gone: peers stop sending to it, then the sidecar drains and exits,
    // then the namespace goes.
    remove_workload(&api, &ns, &name).await;
    started.stop().await;
    code
}

/// Why a start did not complete.
enum Stop {
    Failed(anyhow::Error),
    Signal(&'static str),
}

/// The command must exist before a namespace is made for it: a path to an executable file,
/// or a name found on `PATH` (the namespace shares the host's file system).
fn find_program(program: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &std::path::Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let found = if program.contains('/') {
        executable(std::path::Path::new(program))
    } else {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
    };
    if !found {
        bail!("{program}: command not found (nothing was created)");
    }
    Ok(())
}

/// What one `meshgate run` starts, checked.
struct Plan<'a> {
    args: &'a Args,
    api: &'a Api,
    services: &'a [ServiceArg],
    app_label: &'a str,
    name: &'a str,
    bundle: &'a std::path::Path,
    backend: Backend,
}

/// A started pod: dropping it kills the sidecar, deletes the namespace with its rules and
/// veth, releases the address and removes the bridge when it was the last pod.
struct Started {
    // Fields drop in order: the sidecar before the namespace it runs in.
    sidecar: Child,
    _relay: AbortOnDrop,
    pod: Pod,
}

impl Started {
    /// Asks the sidecar to drain and exit, then deletes the namespace.
    async fn stop(mut self) {
        let _ = terminate(&mut self.sidecar, "the sidecar", Duration::from_secs(10)).await;
    }
}

impl Plan<'_> {
    /// The pod: an address, a namespace, the rules; the Services, the Workload; the sidecar,
    /// ready. Cancelled (a signal), or failing, it leaves nothing but the Workload, which
    /// `registered` says was created.
    async fn start(&self, labels: BTreeMap<String, String>, registered: &mut bool) -> anyhow::Result<Started> {
        let (args, api, ns) = (self.args, self.api, &self.args.namespace);
        let pod = Pod::create(args.ip)?;
        let ip = pod.ip;
        let mut spec = RuleSpec::new(PROXY_UID);
        spec.exclude_outbound_ports = args.exclude_outbound_ports.clone();
        spec.exclude_cidrs = args.exclude_cidrs.clone();
        spec.exclude_inbound_ports.extend(&args.exclude_inbound_ports);
        meshgate_intercept::install(&pod.name, self.backend, &spec)?;

        // The mesh: Services, the Workload, a join token.
        ensure_services(api, ns, self.services, self.app_label).await?;
        let workload = json!({
            "apiVersion": "meshgate.io/v1alpha1",
            "kind": "Workload",
            "metadata": { "name": self.name, "namespace": ns, "labels": labels },
            "spec": { "address": ip.to_string(), "serviceAccount": args.service_account, "tlsMode": "Mutual" },
        });
        *registered = true;
        api_ok(api, Method::POST, "/api/v1/apply", Some(workload)).await?;
        let token = api.create_token(ns, &args.service_account, 120, "meshgate run").await?;
        let token = token["token"].as_str().unwrap_or_default().to_string();
        let relay_listener = TcpListener::bind(SocketAddr::new(meshgate_intercept::BRIDGE_IP.into(), 0))
            .await
            .context("binding the control plane relay on the lab bridge")?;
        let relay_addr = relay_listener.local_addr()?;
        let relay = AbortOnDrop(tokio::spawn(relay(relay_listener, args.control_plane.clone())));

        let exe = std::env::current_exe().context("locating the meshgate binary")?;
        let mut sidecar = Command::from(pod.exec(&exe.to_string_lossy()));
        sidecar
            .arg("sidecar")
            .args(["--control-plane", &relay_addr.to_string()])
            .arg("--ca-bundle")
            .arg(self.bundle)
            .args(["--trust-domain", &args.trust_domain])
            .args(["--namespace", ns, "--name", self.name, "--service-account", &args.service_account])
            .arg("--hosts-file")
            .arg(format!("/etc/netns/{}/hosts", pod.name))
            .args(["--uid", &PROXY_UID.to_string()])
            .env("MESHGATE_JOIN_TOKEN", &token)
            // The application's terminal stays the application's: the sidecar says only what
            // matters (warnings, access and authorization logs) unless RUST_LOG asks for more.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,meshgate::access=info,meshgate::authz=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if args.access_log {
            sidecar.arg("--access-log");
        }
        sidecar.args(["--telemetry", &args.telemetry]);
        let mut sidecar = sidecar.spawn().context("starting the sidecar")?;
        wait_ready(&mut sidecar).await?;
        Ok(Started { sidecar, _relay: relay, pod })
    }

    /// Runs the command in the pod until it exits, or until a signal stops it.
    async fn run_app(&self, started: &Started, signals: &mut Signals) -> anyhow::Result<i32> {
        let (args, ns, name, pod) = (self.args, &self.args.namespace, self.name, &started.pod);
        eprintln!(
            "meshgate run: {ns}/{name} at {} (network namespace {}, {} rules), identity spiffe://{}/ns/{ns}/sa/{}: starting {}",
            pod.ip,
            pod.name,
            match self.backend {
                Backend::Iptables => "iptables",
                Backend::Nftables => "nftables",
            },
            args.trust_domain,
            args.service_account,
            args.command.join(" ")
        );
        let mut app = Command::from(pod.exec(&args.command[0]));
        app.args(&args.command[1..]).kill_on_drop(true);
        match app.spawn() {
            Ok(mut child) => supervise(&mut child, signals).await,
            Err(e) => Err(anyhow::anyhow!("starting {}: {e}", args.command[0])),
        }
    }
}

/// A task aborted when dropped (with the start-up that spawned it, or the pod it served).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `meshgate cleanup`.
pub(crate) async fn cleanup(api: Option<Api>) -> anyhow::Result<bool> {
    let removed = meshgate_intercept::cleanup_all()?;
    for r in &removed {
        println!("removed {r}");
    }
    let mut workloads = 0;
    if let Some(api) = api
        && let Ok((status, v)) = api.call(Method::GET, "/api/v1/resources?kind=Workload", None).await
        && status.is_success()
    {
        for item in v["items"].as_array().into_iter().flatten() {
            if item["metadata"]["labels"]["meshgate.io/run"] == "true" {
                let (ns, name) =
                    (item["metadata"]["namespace"].as_str().unwrap_or("default"), item["metadata"]["name"].as_str());
                if let Some(name) = name {
                    remove_workload(&api, ns, name).await;
                    println!("removed Workload {ns}/{name}");
                    workloads += 1;
                }
            }
        }
    }
    if removed.is_empty() && workloads == 0 {
        println!("nothing to clean up");
    }
    Ok(true)
}
