//! The `meshgate` binary: subcommands only; the work is in the library crates.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

mod gateway;
mod up;
mod validate;

/// meshgate: a service mesh and ingress gateway in one binary.
#[derive(Debug, Parser)]
#[command(name = "meshgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
    /// Run an ingress gateway serving the Gateways and HTTPRoutes in the given files.
    Gateway {
        /// Files or directories of YAML resources (watched; changes apply live).
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        paths: Vec<PathBuf>,
        /// Address the listeners bind to; ports come from the Gateway listeners.
        #[arg(long, default_value = "0.0.0.0")]
        bind: IpAddr,
        /// Admin endpoint (/ready, /config_dump); "off" disables it.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: String,
        /// How long in-flight requests may take to finish on shutdown.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        drain_timeout: Duration,
        /// Log one line per request.
        #[arg(long)]
        access_log: bool,
    },
    /// Start the demo: the gateway on examples/gateway with its demo backends.
    Up {
        /// Directory of the demo.
        #[arg(long, default_value = "examples/gateway")]
        dir: PathBuf,
    },
}

/// Parses `10s`, `500ms`, `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    meshgate_api::validate::syntax::gateway_duration(s)
}

fn init_logging() {
    // `RUST_LOG` as `level` or `target=level,...` (no regular expressions: the regex-based
    // EnvFilter costs more resident memory than the whole request path).
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| "info,hyper=warn,h2=warn".parse().unwrap_or_default());
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

fn parse_admin(s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    Ok(Some(s.parse().map_err(|e| anyhow::anyhow!("--admin {s:?}: {e}"))?))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { paths, strict } => validate::run(&paths, strict),
        Command::Gateway { paths, bind, admin, drain_timeout, access_log } => {
            init_logging();
            let admin = match parse_admin(&admin) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = gateway::Options { paths, bind, admin, drain_timeout, access_log };
            match runtime().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(gateway::run(opts))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Up { dir } => {
            init_logging();
            match runtime().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(up::run(dir))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
