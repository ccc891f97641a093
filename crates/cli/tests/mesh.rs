//! The mesh end to end, in real network namespaces: a control plane, workloads started with
//! `meshgate run` (each in its own namespace with a sidecar and redirection rules), and plain
//! namespaces without a sidecar. Needs root (CAP_NET_ADMIN), as `meshgate run` does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use meshgate_testkit::{TempDir, free_port};

const ECHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/apps/echo.py");

/// A line echo server: opaque TCP.
const LINE_ECHO: &str = r#"
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
const LINE_CLIENT: &str = r#"
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
const HTTP_CLIENT: &str = r#"
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

fn meshgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshgate"))
}

fn require_root() {
    assert!(nix_is_root(), "the mesh tests create network namespaces and need root (CAP_NET_ADMIN): run them as root");
}

fn nix_is_root() -> bool {
    meshgate_intercept::root()
}

/// A control plane of its own (a directory store) for one test.
struct Lab {
    dir: TempDir,
    cp: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    children: Vec<Child>,
}

impl Lab {
    fn start() -> Lab {
        require_root();
        let dir = TempDir::new("meshgate-mesh");
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        let (grpc, http) =
            (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
        let cp = meshgate()
            .arg("control-plane")
            .arg("--store")
            .arg(format!("dir:{}", dir.path().join("store").display()))
            .args(["--grpc", &grpc.to_string(), "--http", &http.to_string()])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let lab = Lab { dir, cp, grpc, http, children: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(lab.dir.path().join("state").join("ca-bundle.pem").exists() && TcpStream::connect(http).is_ok()) {
            assert!(Instant::now() < deadline, "control plane did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        lab
    }

    fn api_flags(&self, c: &mut Command) {
        c.args(["--server", &self.http.to_string()]).arg("--state-dir").arg(self.dir.path().join("state"));
    }

    /// `meshgate run` with this lab's control plane.
    fn run(&self, flags: &[&str], command: &[&str]) -> Command {
        let mut c = meshgate();
        c.arg("run").args(["--control-plane", &self.grpc.to_string()]);
        self.api_flags(&mut c);
        c.args(flags).arg("--").args(command);
        c
    }

    /// Starts a workload in the background.
    fn spawn(&mut self, flags: &[&str], command: &[&str]) {
        let child = self.run(flags, command).stdout(Stdio::null()).spawn().unwrap();
        self.children.push(child);
    }

    /// `inventory` (the echo app) in namespace `shop`, answering; returns its address.
    fn inventory(&mut self) -> Ipv4Addr {
        self.spawn(
            &["-n", "shop", "--service-account", "inventory", "--name", "inventory-1", "--service", "inventory:8080"],
            &["python3", ECHO, "--name", "inventory", "--port", "8080"],
        );
        let ip = self.workload_ip("shop", "inventory-1");
        wait_plain_ok(SocketAddr::from((ip, 8080)));
        ip
    }

    fn apply(&self, yaml: &str) {
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
    fn workload_ip(&mut self, ns: &str, name: &str) -> Ipv4Addr {
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

fn fastrand_name() -> String {
    meshgate_tls::hex(&meshgate_tls::random_bytes(4))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A GET from the host's namespace (plaintext, as a client without a sidecar).
fn plain_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn wait_plain_ok(addr: SocketAddr) {
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
fn bare_pod() -> meshgate_intercept::Pod {
    meshgate_intercept::Pod::create(None).unwrap()
}

/// The network namespace `meshgate run` reported for its workload.
fn reported_netns(output: &str) -> String {
    let at = output.find("(network namespace ").expect("meshgate run did not report its namespace");
    output[at + "(network namespace ".len()..].split([',', ')']).next().unwrap().to_string()
}

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn http_between_sidecars_is_mutual_tls_and_the_namespace_goes_away() {
    let mut lab = Lab::start();
    lab.inventory();
    let out = lab
        .run(
            &["-n", "shop", "--service-account", "order", "--name", "order-1"],
            &["python3", "-c", HTTP_CLIENT, "http://inventory:8080/items"],
        )
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let body: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(body["backend"], "inventory");
    assert_eq!(body["path"], "/items");
    // The server side saw the caller's identity: the hop between the namespaces was mTLS,
    // verified against the mesh CA, with the SPIFFE ID of the client's service account.
    let xfcc = body["headers"]["x-forwarded-client-cert"].as_str().expect("no XFCC: the hop was not mTLS");
    assert!(xfcc.starts_with("By=spiffe://cluster.local/ns/shop/sa/inventory;"), "{xfcc}");
    assert!(xfcc.ends_with(";URI=spiffe://cluster.local/ns/shop/sa/order"), "{xfcc}");
    // Every name resolves, as in Kubernetes.
    for host in ["inventory.shop", "inventory.shop.svc.cluster.local"] {
        let out = lab
            .run(&["-n", "shop", "--name", "order-2"], &["python3", "-c", HTTP_CLIENT, &format!("http://{host}:8080/")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{host}: {}", text(&out));
    }
    // The batch command's exit took its sidecar, namespace and Workload with it.
    let netns = reported_netns(&all);
    assert!(!netns_exists(&netns), "{netns} left behind");
    let mut c = meshgate();
    c.args(["get", "workload", "order-1", "-n", "shop"]);
    lab.api_flags(&mut c);
    assert!(!c.output().unwrap().status.success(), "Workload order-1 still registered");
}

#[test]
fn exit_status_is_the_commands_and_the_app_starts_after_the_sidecar() {
    let lab = Lab::start();
    // The sidecar is ready (certificate and configuration) before the command runs: the very
    // first connection the command makes is already intercepted and answered by it.
    let out = lab
        .run(
            &["--name", "batch"],
            &["sh", "-c", "test -s /etc/hosts && grep -q 'written by meshgate' /etc/hosts && exit 7"],
        )
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(7), "{all}");
    let netns = reported_netns(&all);
    assert!(!netns_exists(&netns), "{netns} left behind");
}

#[test]
fn strict_mtls_refuses_a_plaintext_client_without_a_sidecar() {
    let mut lab = Lab::start();
    let ip = lab.inventory();
    let outside = bare_pod();
    let url = format!("http://{ip}:8080/");
    // PERMISSIVE (the default): a client without a sidecar gets through, in plaintext.
    let out = outside.exec("python3").args(["-c", HTTP_CLIENT, &url]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("x-forwarded-client-cert"));
    lab.apply(
        "apiVersion: meshgate.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
    );
    // STRICT: the same client is refused (once the sidecar has the new policy).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = plain_get_from(&outside, &url);
        if !r.0 {
            break;
        }
        assert!(Instant::now() < deadline, "plaintext still accepted under STRICT: {}", r.1);
        std::thread::sleep(Duration::from_millis(100));
    }
    // A meshed client still gets through.
    let out = lab
        .run(&["-n", "shop", "--service-account", "order", "--name", "order-1"], &["python3", "-c", HTTP_CLIENT, &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://cluster.local/ns/shop/sa/order"));
}

/// One GET from a bare namespace: (answered 200, what happened).
fn plain_get_from(pod: &meshgate_intercept::Pod, url: &str) -> (bool, String) {
    let once = r#"
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status)
except Exception as e:
    print("error:", e)
"#;
    let out = pod.exec("python3").args(["-c", once, url]).output().unwrap();
    let s = text(&out);
    (s.trim() == "200", s)
}

#[test]
fn opaque_tcp_goes_over_mtls_and_is_authorized_by_identity() {
    let mut lab = Lab::start();
    lab.spawn(
        &["-n", "db", "--service-account", "lines", "--name", "lines-1", "--service", "lines:7000/tcp"],
        &["python3", "-c", LINE_ECHO, "7000"],
    );
    lab.workload_ip("db", "lines-1");
    let out = lab
        .run(
            &["-n", "db", "--service-account", "client", "--name", "c1"],
            &["python3", "-c", LINE_CLIENT, "lines", "7000"],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "echo: hello");
    // The server's sidecar knows who is calling even for opaque TCP: allow only another
    // identity and the same client is cut off.
    lab.apply(
        r#"apiVersion: meshgate.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: only-reporting, namespace: db}
spec:
  selector: {matchLabels: {app: lines}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/db/sa/reporting"]}}]}]
"#,
    );
    std::thread::sleep(Duration::from_secs(1));
    let out = lab
        .run(
            &["-n", "db", "--service-account", "client", "--name", "c2"],
            &["python3", "-c", LINE_CLIENT, "lines", "7000"],
        )
        .output()
        .unwrap();
    assert!(!out.status.success(), "denied identity still got through: {}", text(&out));
    let out = lab
        .run(
            &["-n", "db", "--service-account", "reporting", "--name", "c3"],
            &["python3", "-c", LINE_CLIENT, "lines.db.svc.cluster.local", "7000"],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "echo: hello");
}

#[test]
fn unknown_destinations_pass_through_unless_registry_only() {
    let lab = Lab::start();
    // A server outside the mesh, in a namespace of its own.
    let outside = bare_pod();
    let mut server = outside
        .exec("python3")
        .args([ECHO, "--name", "outside", "--port", "9000", "--host", "0.0.0.0"])
        .spawn()
        .unwrap();
    let url = format!("http://{}:9000/", outside.ip);
    let deadline = Instant::now() + Duration::from_secs(20);
    while plain_get(SocketAddr::from((outside.ip, 9000)), "/").is_err() {
        assert!(Instant::now() < deadline, "outside server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = lab.run(&["--name", "c1"], &["python3", "-c", HTTP_CLIENT, &url]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let body: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(body["backend"], "outside");
    // Passed through untouched: no mesh headers added.
    assert!(body["headers"].get("x-request-id").is_none(), "{body}");
    lab.apply(
        "apiVersion: meshgate.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: default, namespace: meshgate-system}\nspec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}\n",
    );
    let once = r#"
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status)
except Exception as e:
    print("refused:", type(e).__name__)
"#;
    let out = lab.run(&["--name", "c2", "--access-log"], &["python3", "-c", once, &url]).output().unwrap();
    let all = text(&out);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("refused:"), "{all}");
    assert!(all.contains("REGISTRY_ONLY"), "the sidecar did not say why: {all}");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn both_rule_back_ends_intercept() {
    let mut lab = Lab::start();
    lab.spawn(
        &["--name", "web-1", "--service", "web:8080", "--intercept", "iptables"],
        &["python3", ECHO, "--name", "web", "--port", "8080"],
    );
    lab.workload_ip("default", "web-1");
    for (backend, name) in [("iptables", "c-ipt"), ("nftables", "c-nft")] {
        let out = lab
            .run(&["--name", name, "--intercept", backend], &["python3", "-c", HTTP_CLIENT, "http://web:8080/"])
            .output()
            .unwrap();
        let all = text(&out);
        assert!(out.status.success(), "{backend}: {all}");
        assert!(all.contains(&format!("{backend} rules")), "{all}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("x-forwarded-client-cert"), "{backend}: {all}");
    }
}

#[test]
fn the_lab_answers_through_order_and_inventory_and_ctrl_c_leaves_nothing() {
    require_root();
    let state = TempDir::new("meshgate-lab");
    let mut up = meshgate()
        .arg("up")
        .arg("--dir")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/lab"))
        .arg("--state-dir")
        .arg(state.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both streams in the background; stdout says when the lab is up.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut readers = Vec::new();
    for stream in [Box::new(up.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(up.stderr.take().unwrap())] {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    drop(tx);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !seen.iter().any(|l: &String| l.starts_with("meshgate lab is up")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the lab did not come up:\n{}", seen.join("\n")),
        }
    }
    let r = plain_get(SocketAddr::from(([127, 0, 0, 1], 8080)), "/").unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let body = &r[r.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["service"], "order");
    assert_eq!(v["inventory"]["service"], "inventory");
    assert!(["v1", "v2"].contains(&v["inventory"]["version"].as_str().unwrap()), "{v}");
    let namespaces: Vec<String> =
        seen.iter().filter(|l| l.contains("(network namespace ")).map(|l| reported_netns(l)).collect();
    assert_eq!(namespaces.len(), 3, "{}", seen.join("\n"));
    assert!(namespaces.iter().all(|n| netns_exists(n)));
    // Ctrl-C: everything stops, in order, and nothing is left behind.
    nix_sigint(up.id());
    let status = up.wait().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    seen.extend(rx.try_iter());
    assert!(status.success(), "{status}: {}", seen.join("\n"));
    assert!(seen.iter().any(|l| l.starts_with("lab stopped")), "{}", seen.join("\n"));
    for n in &namespaces {
        assert!(!netns_exists(n), "{n} left behind");
    }
    assert!(TcpStream::connect(("127.0.0.1", 8080)).is_err(), "the gateway is still listening");
    assert!(TcpStream::connect(("127.0.0.1", 15014)).is_err(), "the control plane is still listening");
}

fn nix_sigint(pid: u32) {
    let out = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(out.success());
}
