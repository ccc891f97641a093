//! The `meshgate` binary: subcommands only; the work is in the library crates.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `println!` for what the CLI prints to be read or piped (`meshgate get … | head`): ends the
/// process quietly (status 0) when stdout's reader is gone. Rust ignores SIGPIPE, so `println!`
/// would panic there instead of stopping as `ls | head` does. Not for `up` and `run`, whose
/// exits must clean up first.
macro_rules! out {
    () => { $crate::write_out(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::write_out(format_args!($($arg)*), true) };
}

/// `print!` the same way as [`out!`].
macro_rules! put {
    ($($arg:tt)*) => { $crate::write_out(format_args!($($arg)*), false) };
}

/// What [`out!`] and [`put!`] do.
pub(crate) fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    // Without a newline (a screen of `top`) the output is flushed, to be seen at once.
    let written = stdout.write_fmt(args).and_then(|()| if newline { stdout.write_all(b"\n") } else { stdout.flush() });
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

mod client;
mod control;
mod gateway;
mod observe;
mod proxy;
mod run;
mod sidecar;
mod signals;
mod up;
mod validate;

/// meshgate: a service mesh and ingress gateway in one binary.
#[derive(Debug, Parser)]
#[command(name = "meshgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by the commands that talk to a control plane's API.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiFlags {
    /// The control plane's HTTP API.
    #[arg(long, default_value = "127.0.0.1:15014", global = true)]
    pub(crate) server: String,
    /// API token (default: MESHGATE_TOKEN, then the token file in --state-dir).
    #[arg(long, global = true)]
    pub(crate) token: Option<String>,
    /// Where a local control plane keeps its admin token and CA bundle.
    #[arg(long, default_value_os_t = default_state_dir(), global = true)]
    pub(crate) state_dir: PathBuf,
}

pub(crate) fn default_state_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from(".meshgate"), |h| PathBuf::from(h).join(".meshgate"))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check resource files: prints OK, or every error (exit 1).
    Validate {
        /// Files or directories of YAML resources.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        paths: Vec<PathBuf>,
        /// Treat status problems (dangling references, unattached routes) as errors too.
        #[arg(long)]
        strict: bool,
        /// Also print the Gateway API status each GatewayClass, Gateway and route would get
        /// (YAML documents, as `meshgate get -o yaml` shows them).
        #[arg(long)]
        status: bool,
    },
    /// Run an ingress gateway serving the Gateways and HTTPRoutes in the given files.
    Gateway {
        /// Files or directories of YAML resources (watched; changes apply live).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        paths: Vec<PathBuf>,
        /// Address the listeners bind to; ports come from the Gateway listeners.
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        /// Admin endpoint (/ready, /config_dump, /certs); "off" disables it.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: String,
        /// How long in-flight requests may take to finish on shutdown.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        drain_timeout: Duration,
        /// Access logs: a JSON line per request and per TCP connection on standard output,
        /// whatever MeshConfig spec.accessLog says.
        #[arg(long)]
        access_log: bool,
        /// Prometheus metrics (/metrics, /stats/prometheus) on this address too (Istio's
        /// 15020); "off": on the admin endpoint only.
        #[arg(long, default_value = "0.0.0.0:15020")]
        metrics: String,
        /// "off": record nothing (no metrics, access logs, traces or tap).
        #[arg(long, default_value = "on")]
        telemetry: String,
        /// Close client connections that move no byte for this long ("0s": never).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        idle_timeout: Duration,
        /// Time an HTTP/1.1 client has to send a complete request head, else 408 and close
        /// (default: MeshConfig spec.downstream.headerTimeout, else 10s; "0s": unbounded).
        #[arg(long, value_parser = parse_duration)]
        header_timeout: Option<Duration>,
        /// Port the Ingresses of meshgate's IngressClasses are served on, plain HTTP.
        #[arg(long, default_value_t = 80)]
        ingress_http: u16,
        /// Port the Ingresses' TLS hosts are served on.
        #[arg(long, default_value_t = 443)]
        ingress_https: u16,
    },
    /// Print Gateway API resources equivalent to other resources (`migrate ingress`).
    Migrate {
        /// What to migrate: `ingress`.
        what: String,
        /// Files or directories holding the Ingresses (and the Services they name).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        paths: Vec<PathBuf>,
    },
    /// Run the control plane: resources from a store, config pushed to proxies, the CA.
    ControlPlane(control::Args),
    /// Run a proxy configured by a control plane.
    Proxy(proxy::Args),
    /// Create or update resources in the control plane's store.
    Apply {
        /// Files or directories of YAML resources.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Show resources (with their status conditions).
    Get {
        /// Kind (services, httproutes, Gateway, ...).
        kind: String,
        /// Name; all when absent.
        name: Option<String>,
        /// Namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// yaml or json.
        #[arg(short = 'o', long)]
        output: Option<String>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Delete a resource.
    Delete {
        /// Kind.
        kind: String,
        /// Name.
        name: String,
        /// Namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Print a one-time sign-in URL for the dashboard (the live service map).
    Dashboard {
        #[command(flatten)]
        api: ApiFlags,
    },
    /// List connected proxies: SYNCED, STALE or NACKED, with version and reason.
    ProxyStatus {
        #[command(flatten)]
        api: ApiFlags,
    },
    /// The service graph's edges in a live table (rate, success, latency, the proxies' share,
    /// mTLS), refreshing.
    Top {
        /// The sliding window statistics cover.
        #[arg(long, default_value = "30s")]
        window: String,
        /// Redraw this often.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        interval: Duration,
        /// Print the table once and exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Success rate, request rate and latency per workload or Service (what each served).
    Stat {
        /// workload or service.
        kind: String,
        /// Only this one.
        name: Option<String>,
        /// Only in this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// The sliding window statistics cover.
        #[arg(long, default_value = "60s")]
        window: String,
        /// `json` for the rows as JSON.
        #[arg(short = 'o', long)]
        output: Option<String>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// A live stream of the requests a workload's proxy handles (the gateway: --admin).
    Tap {
        /// The Workload (its sidecar is tapped from inside its network namespace).
        workload: Option<String>,
        /// The Workload's namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Tap the proxy whose admin endpoint is here instead (the gateway's: 127.0.0.1:15000).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Only paths starting with this.
        #[arg(long)]
        path: Option<String>,
        /// Only this method.
        #[arg(long)]
        method: Option<String>,
        /// Only this host.
        #[arg(long)]
        authority: Option<String>,
        /// `json` for one JSON object per request.
        #[arg(short = 'o', long)]
        output: Option<String>,
        /// Stop after this many requests.
        #[arg(long)]
        max: Option<u64>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Look for configuration that is valid resource by resource but wrong together.
    Analyze {
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Join tokens for proxies.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Certificate authority operations.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Show a proxy's certificates: chain, SPIFFE ID, expiry, next rotation.
    Certs {
        /// The proxy's admin endpoint.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: String,
    },
    /// Run a command as a mesh workload: its own network namespace, a sidecar, transparent
    /// interception (as a pod in Kubernetes). Needs root.
    Run(run::Args),
    /// Remove what crashed `meshgate run`s left behind: network namespaces, veths, the lab
    /// bridge, address leases (and their Workloads, when the control plane is reachable).
    Cleanup {
        #[command(flatten)]
        api: ApiFlags,
    },
    /// The sidecar (started by `meshgate run` inside the workload's namespace).
    #[command(hide = true)]
    Sidecar(sidecar::Args),
    /// Start the Service Mesh Lab (examples/lab): control plane, gateway on 127.0.0.1:8080,
    /// order calling inventory with a 1% canary, each workload with its sidecar.
    Up {
        /// The lab's directory (the gateway demo's, with --gateway-demo).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where the lab's control plane keeps its admin token and CA bundle (the other
        /// commands' default, so they work without flags).
        #[arg(long, default_value_os_t = default_state_dir())]
        state_dir: PathBuf,
        /// Instead of the mesh lab: the standalone gateway on examples/gateway with three
        /// demo backends.
        #[arg(long)]
        gateway_demo: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Create a one-time join token bound to a namespace and service account.
    Create {
        /// Namespace.
        #[arg(long)]
        namespace: String,
        /// Service account.
        #[arg(long)]
        service_account: String,
        /// How long it stays valid.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        api: ApiFlags,
    },
}

#[derive(Debug, Subcommand)]
enum CaAction {
    /// Root rotation: add-root (distribute), use-root (sign with it), withdraw-old-roots.
    Rotate {
        /// add-root, use-root or withdraw-old-roots.
        step: String,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// The roots of the trust bundle: fingerprints, expiry, which signs, and how many connected
    /// proxies hold a leaf from each.
    Status {
        #[command(flatten)]
        api: ApiFlags,
    },
}

/// Parses `10s`, `500ms`, `2m`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    meshgate_api::validate::syntax::gateway_duration(s)
}

fn init_logging() {
    // `RUST_LOG` as `level` or `target=level,...` (no regular expressions: the regex-based
    // EnvFilter costs more resident memory than the whole request path).
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| "info,hyper=warn,h2=warn,tonic=warn,tower=warn".parse().unwrap_or_default());
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry().with(filter).with(fmt).init();
}

/// A runtime sized to the CPUs this process may use: one core gets a current-thread runtime.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(cpus).enable_all().build()
    }
}

pub(crate) fn parse_admin(s: &str) -> anyhow::Result<Option<SocketAddr>> {
    addr_or_off("--admin", s)
}

/// The address of flag `flag`, or none for `off`.
pub(crate) fn addr_or_off(flag: &str, s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    Ok(Some(s.parse().map_err(|e| anyhow::anyhow!("{flag} {s:?}: {e}"))?))
}

/// Once serving: stop counting start-up-only code and freed heap as resident (see
/// `meshgate_intercept::release_startup_pages` and `release_free_heap`), and again after each
/// configuration change has settled: reading, checking and compiling a configuration runs code
/// (YAML/JSON, schemas, compilation) that the request path never does and frees what it built,
/// and each change would otherwise leave both resident. What requests run faults back in from
/// the page cache (a few hundred microseconds, once per change).
pub(crate) fn release_cold_pages(core: std::sync::Arc<meshgate_proxy::ProxyCore>) {
    release_unused_memory();
    tokio::spawn(async move {
        let mut released = core.snapshot().version;
        let mut seen = released;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let version = core.snapshot().version;
            // Released once the version has stayed the same for a tick: not in a burst.
            if version == seen && version != released {
                released = version;
                // Reads /proc/self/smaps: off the runtime's threads.
                let _ = tokio::task::spawn_blocking(release_unused_memory).await;
            }
            seen = version;
        }
    });
}

fn release_unused_memory() {
    match meshgate_intercept::release_startup_pages() {
        Ok(bytes) => tracing::debug!(bytes, "released code pages"),
        Err(e) => tracing::debug!(error = %e, "cannot release code pages"),
    }
    // And the heap start-up or the change freed.
    let trimmed = meshgate_intercept::release_free_heap();
    tracing::debug!(trimmed, "released free heap pages");
}

/// Runs an async command; `Ok(false)` means "failed, already explained".
fn block(f: impl std::future::Future<Output = anyhow::Result<bool>>) -> ExitCode {
    match runtime().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(f)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    init_logging();
    match runtime().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(f)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn api(flags: &ApiFlags) -> anyhow::Result<client::Api> {
    client::Api::new(&flags.server, flags.token.clone(), &flags.state_dir)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { paths, strict, status } => validate::run(&paths, strict, status),
        Command::Gateway {
            paths,
            bind,
            admin,
            drain_timeout,
            access_log,
            metrics,
            telemetry,
            idle_timeout,
            header_timeout,
            ingress_http,
            ingress_https,
        } => serve(async move {
            let admin = parse_admin(&admin)?;
            let metrics = proxy::parse_metrics(&metrics)?;
            let telemetry = proxy::parse_telemetry(&telemetry)?;
            let idle_timeout = (!idle_timeout.is_zero()).then_some(idle_timeout);
            let opts = gateway::Options {
                paths,
                bind,
                admin,
                drain_timeout,
                access_log,
                metrics,
                telemetry,
                idle_timeout,
                header_timeout,
                ingress: meshgate_model::ingress::IngressPorts {
                    http: ingress_http,
                    https: ingress_https,
                    addresses: (!bind.is_unspecified()).then_some(bind).into_iter().collect(),
                },
            };
            gateway::run(opts).await
        }),
        Command::Migrate { what, paths } => validate::migrate(&what, &paths),
        Command::ControlPlane(args) => serve(control::main(args)),
        Command::Proxy(args) => serve(proxy::main(args)),
        Command::Apply { paths, api: flags } => block(async move { client::apply(&api(&flags)?, &paths).await }),
        Command::Get { kind, name, namespace, output, api: flags } => block(async move {
            client::get(&api(&flags)?, &kind, name.as_deref(), namespace.as_deref(), output.as_deref()).await
        }),
        Command::Delete { kind, name, namespace, api: flags } => {
            block(async move { client::delete(&api(&flags)?, &kind, &name, namespace.as_deref()).await })
        }
        Command::ProxyStatus { api: flags } => block(async move { client::proxy_status(&api(&flags)?).await }),
        Command::Dashboard { api: flags } => block(async move { client::dashboard(&api(&flags)?).await }),
        Command::Analyze { api: flags } => block(async move { client::analyze(&api(&flags)?).await }),
        Command::Top { window, interval, once, api: flags } => {
            block(async move { observe::top(&api(&flags)?, &window, interval, once).await })
        }
        Command::Stat { kind, name, namespace, window, output, api: flags } => block(async move {
            let json = output.as_deref() == Some("json");
            observe::stat(&api(&flags)?, &kind, name.as_deref(), namespace.as_deref(), &window, json).await
        }),
        Command::Tap { workload, namespace, admin, path, method, authority, output, max, api: flags } => {
            block(async move {
                let args = observe::TapArgs { path, method, authority, json: output.as_deref() == Some("json"), max };
                match (admin, workload) {
                    (Some(addr), _) => observe::tap_admin(addr, &args).await,
                    (None, Some(w)) => observe::tap_workload(&api(&flags)?, &namespace, &w, &args).await,
                    (None, None) => anyhow::bail!("tap what? a Workload name, or --admin ADDR of a proxy"),
                }
            })
        }
        Command::Token { action: TokenAction::Create { namespace, service_account, ttl, api: flags } } => {
            block(async move { client::token_create(&api(&flags)?, &namespace, &service_account, ttl.as_secs()).await })
        }
        Command::Ca { action: CaAction::Rotate { step, api: flags } } => {
            block(async move { client::ca_rotate(&api(&flags)?, &step).await })
        }
        Command::Ca { action: CaAction::Status { api: flags } } => {
            block(async move { client::ca_status(&api(&flags)?).await })
        }
        Command::Certs { admin } => block(async move { client::certs(&admin).await }),
        Command::Up { dir, state_dir, gateway_demo } => {
            if gateway_demo {
                serve(up::gateway_demo(dir.unwrap_or_else(|| PathBuf::from("examples/gateway"))))
            } else {
                serve(up::run(dir.unwrap_or_else(|| PathBuf::from("examples/lab")), state_dir))
            }
        }
        Command::Run(args) => {
            init_logging();
            let result = runtime().map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(async move {
                    let api = api(&args.api)?;
                    run::main(args, api).await
                })
            });
            match result {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cleanup { api: flags } => block(async move { run::cleanup(api(&flags).ok()).await }),
        Command::Sidecar(args) => {
            // Before the runtime starts its threads: read what needs root, then drop it.
            let privileged = match sidecar::prepare(&args) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            serve(sidecar::main(args, privileged))
        }
    }
}
