//! The mesh tests' harness: a control plane of its own per test, `meshgate run` workloads, plain
//! namespaces, and the host-wide guard that keeps tests needing a bare host apart from the rest.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use meshgate_testkit::{TempDir, free_port};

pub(crate) const ECHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/apps/echo.py");

/// A line echo server: opaque TCP.
pub(crate) const LINE_ECHO: &str = r#"
import socketserver, sys
class H(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b"echo: " + line)
            self.wfile.flush()
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// Connects to HOST:PORT (retrying while the server starts), sends a line, prints the answer.
pub(crate) const LINE_CLIENT: &str = r#"
import socket, sys, time
for i in range(100):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        s.sendall(b"hello\n")
        line = s.makefile().readline().strip()
        if line:
            print(line)
            sys.exit(0)
    except OSError as e:
        err = e
    time.sleep(0.1)
print("failed", err if 'err' in dir() else "")
sys.exit(1)
"#;

/// GETs a URL until it answers 200 (the server may still be starting); prints the body.
pub(crate) const HTTP_CLIENT: &str = r#"
import sys, time, urllib.request
last = None
for i in range(100):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
            print(r.read().decode())
            sys.exit(0)
    except Exception as e:
        last = e
    time.sleep(0.1)
print("failed:", last)
sys.exit(1)
"#;

pub(crate) fn meshgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
}

pub(crate) fn require_root() {
    assert!(nix_is_root(), "the mesh tests create network namespaces and need root (CAP_NET_ADMIN): run them as root");
}

pub(crate) fn nix_is_root() -> bool {
    meshgate_intercept::root()
}

/// A control plane of its own (a directory store) for one test.
pub(crate) struct Lab {
    pub(crate) dir: TempDir,
    cp: Child,
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) children: Vec<Child>,
    _host: HostGuard,
}

impl Lab {
    pub(crate) fn start() -> Lab {
        Lab::start_on(HostGuard::Shared(shared_host()))
    }

    /// A control plane for a test that holds `host` (shared, or the bare host).
    pub(crate) fn start_on(host: HostGuard) -> Lab {
        require_root();
        let dir = TempDir::new("meshgate-mesh");
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        // A port another test took between free_port() and the bind makes the control plane
        // exit at once: then again on other ports.
        for attempt in 1.. {
            let (grpc, http) =
                (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
            let mut cp = meshgate()
                .arg("control-plane")
                .arg("--store")
                .arg(format!("dir:{}", dir.path().join("store").display()))
                .args(["--grpc", &grpc.to_string(), "--http", &http.to_string()])
                .arg("--state-dir")
                .arg(dir.path().join("state"))
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut exited = false;
            while !(dir.path().join("state").join("ca-bundle.pem").exists() && TcpStream::connect(http).is_ok()) {
                if cp.try_wait().ok().flatten().is_some() {
                    exited = true;
                    break;
                }
                assert!(Instant::now() < deadline, "control plane did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            // Started, or another's listener answered on the port while this one exited.
            std::thread::sleep(Duration::from_millis(100));
            exited |= cp.try_wait().ok().flatten().is_some();
            if exited && attempt < 5 {
                continue;
            }
            assert!(!exited, "control plane exited at start-up five times");
            return Lab { dir, cp, grpc, http, children: Vec::new(), _host: host };
        }
        unreachable!("the loop returns")
    }

    pub(crate) fn api_flags(&self, c: &mut Command) {
        c.args(["--server", &self.http.to_string()]).arg("--state-dir").arg(self.dir.path().join("state"));
    }

    /// `meshgate run` with this lab's control plane.
    pub(crate) fn run(&self, flags: &[&str], command: &[&str]) -> Command {
        let mut c = meshgate();
        c.arg("run").args(["--control-plane", &self.grpc.to_string()]);
        self.api_flags(&mut c);
        c.args(flags).arg("--").args(command);
        c
    }

    /// Starts a workload in the background.
    pub(crate) fn spawn(&mut self, flags: &[&str], command: &[&str]) {
        let child = self.run(flags, command).stdout(Stdio::null()).spawn().unwrap();
        self.children.push(child);
    }

    /// `inventory` (the echo app) in namespace `shop`, answering; returns its address.
    pub(crate) fn inventory(&mut self) -> Ipv4Addr {
        self.spawn(
            &["-n", "shop", "--service-account", "inventory", "--name", "inventory-1", "--service", "inventory:8080"],
            &["python3", ECHO, "--name", "inventory", "--port", "8080"],
        );
        let ip = self.workload_ip("shop", "inventory-1");
        wait_plain_ok(SocketAddr::from((ip, 8080)));
        ip
    }

    pub(crate) fn apply(&self, yaml: &str) {
        let file = self.dir.path().join(format!("apply-{}.yaml", fastrand_name()));
        std::fs::write(&file, yaml).unwrap();
        let mut c = meshgate();
        c.arg("apply").arg("-f").arg(&file);
        self.api_flags(&mut c);
        let out = c.output().unwrap();
        assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stdout));
    }

    /// The address of Workload `ns/name`, once it is registered (a background `meshgate run`
    /// that exits first fails the test at once, its messages above).
    pub(crate) fn workload_ip(&mut self, ns: &str, name: &str) -> Ipv4Addr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for c in &mut self.children {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("a background meshgate run exited ({status}) before {ns}/{name} registered");
                }
            }
            let mut c = meshgate();
            c.args(["get", "workload", name, "-n", ns, "-o", "json"]);
            self.api_flags(&mut c);
            let out = c.output().unwrap();
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                return v["spec"]["address"].as_str().unwrap().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "Workload {ns}/{name} never registered");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // SIGTERM: each `meshgate run` stops its application, drains its sidecar and removes
        // its namespace.
        for c in &self.children {
            let _ = meshgate_intercept::terminate(c.id());
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        let _ = self.cp.kill();
        let _ = self.cp.wait();
    }
}

pub(crate) fn fastrand_name() -> String {
    meshgate_tls::hex(&meshgate_tls::random_bytes(4))
}

pub(crate) fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A GET from the host's namespace (plaintext, as a client without a sidecar).
pub(crate) fn plain_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

pub(crate) fn wait_plain_ok(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if plain_get(addr, "/").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A namespace with no sidecar and no rules: a client or server outside the mesh.
pub(crate) fn bare_pod() -> meshgate_intercept::Pod {
    meshgate_intercept::Pod::create(None).unwrap()
}

/// The network namespace `meshgate run` reported for its workload.
pub(crate) fn reported_netns(output: &str) -> String {
    let at = output.find("(network namespace ").expect("meshgate run did not report its namespace");
    output[at + "(network namespace ".len()..].split([',', ')']).next().unwrap().to_string()
}

pub(crate) fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(name))
}

/// The host's pods, bridge and leases, as tests see them: tests that create pods share the
/// host (the bridge comes and goes under them, safely); tests that need a host with no pod
/// and no bridge on it have it to themselves.
static HOST: RwLock<()> = RwLock::new(());

/// How a test holds the host.
pub(crate) enum HostGuard {
    /// Beside other tests' pods.
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    /// Alone, starting from a bare host.
    Bare(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

/// A share of the host (pods of other tests may come and go).
pub(crate) fn shared_host() -> RwLockReadGuard<'static, ()> {
    reclaim_once();
    HOST.read().unwrap_or_else(PoisonError::into_inner)
}

/// The host alone, and bare: no workload namespace, veth, lease or bridge of meshgate's.
pub(crate) fn bare_host() -> HostGuard {
    require_root();
    reclaim_once();
    let guard = HOST.write().unwrap_or_else(PoisonError::into_inner);
    if let Err(left) = host_is_bare() {
        panic!("the host is not bare before the test (another run's leftovers?): {left}");
    }
    HostGuard::Bare(guard)
}

/// Before the first test takes the host: removes what runs that are gone left behind (a bench
/// or a test binary killed with SIGKILL), so that one killed run does not fail every later one.
/// Live workloads of other runs are not touched, and a test needing a bare host still fails
/// beside them.
fn reclaim_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !meshgate_intercept::root() {
            return;
        }
        match meshgate_intercept::reclaim_abandoned(Duration::from_secs(5)) {
            Ok(removed) if !removed.is_empty() => eprintln!("removed what earlier runs left: {}", removed.join(", ")),
            Ok(_) => {}
            Err(e) => eprintln!("could not reclaim what earlier runs left: {e}"),
        }
    });
}

/// `Ok` when nothing of meshgate's is on the host; else what is there.
pub(crate) fn host_is_bare() -> Result<(), String> {
    let mut left = Vec::new();
    let namespaces = meshgate_intercept::pod_namespaces();
    if !namespaces.is_empty() {
        left.push(format!("network namespaces {namespaces:?}"));
    }
    let leases = meshgate_intercept::leases();
    if !leases.is_empty() {
        left.push(format!("address leases {leases:?}"));
    }
    if meshgate_intercept::bridge_exists() {
        left.push("the bridge meshgate0".into());
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    let veths: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("").to_string()))
        .filter(|n| n.starts_with("mgv"))
        .collect();
    if !veths.is_empty() {
        left.push(format!("veths {veths:?}"));
    }
    if left.is_empty() { Ok(()) } else { Err(left.join(", ")) }
}

/// Waits up to `within` for the host to be bare again.
pub(crate) fn assert_host_bare_within(within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        match host_is_bare() {
            Ok(()) => return,
            Err(left) if Instant::now() > deadline => panic!("{what}: left behind: {left}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Processes whose command line contains `marker` (other than this test process).
pub(crate) fn processes_with(marker: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-af", "--", marker]).output().unwrap();
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(me.as_str()) && !l.contains("pgrep"))
        .map(str::to_string)
        .collect()
}

/// Sends `signal` (INT, TERM) to `pid`.
pub(crate) fn send_signal(pid: u32, signal: &str) {
    let out = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(out.success());
}

/// Waits up to `within` for `child` to exit; its status, or a panic naming `what`.
pub(crate) fn wait_exit(child: &mut Child, within: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: still running {within:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
