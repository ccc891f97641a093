//! Workloads of `meshgate run`: mTLS between sidecars, interception, policies, exit status.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

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

/// Sends part of a request head to HOST:PORT and waits: prints the seconds until the close and
/// what came back.
const PARTIAL_HEAD: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
start = time.time()
s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nx-slow: ")
data = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    data += d
print("%.2f %s" % (time.time() - start, data.split(b"\r\n")[0].decode()))
"#;

#[test]
fn the_sidecar_outbound_side_answers_408_to_a_head_that_stalls() {
    let mut lab = Lab::start();
    lab.apply(
        "apiVersion: meshgate.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: default, namespace: meshgate-system}\nspec: {downstream: {headerTimeout: 1s}}\n",
    );
    lab.spawn(&["--name", "web-1", "--service", "web:8080"], &["python3", ECHO, "--name", "web", "--port", "8080"]);
    lab.workload_ip("default", "web-1");
    let out = lab.run(&["--name", "slow-client"], &["python3", "-c", PARTIAL_HEAD, "web", "8080"]).output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (secs, status) = line.split_once(' ').unwrap();
    let secs: f64 = secs.parse().unwrap();
    assert_eq!(status, "HTTP/1.1 408 Request Timeout", "{all}");
    assert!((1.0..2.5).contains(&secs), "closed after {secs} s with headerTimeout 1s: {all}");
}

/// Resolves NAME in a loop for SECONDS: prints the lookups that failed or took over 100 ms.
const RESOLVE_LOOP: &str = r#"
import socket, sys, time
end = time.time() + float(sys.argv[2])
bad, n = [], 0
while time.time() < end:
    t = time.time()
    try:
        socket.gethostbyname(sys.argv[1])
        if time.time() - t > 0.1:
            bad.append("slow %.2fs" % (time.time() - t))
    except OSError as e:
        bad.append(str(e))
    n += 1
print(n, len(bad), bad[:5])
"#;

/// Configuration pushes that change no Service leave the namespace's /etc/hosts alone, and
/// ones that do never leave it empty for a moment: a lookup meanwhile would fall back to a DNS
/// server the namespace cannot reach and wait seconds (seen as a request hanging through a
/// control-plane restart).
#[test]
fn name_lookups_never_fail_while_configuration_changes() {
    let mut lab = Lab::start();
    lab.spawn(&["--name", "web-1", "--service", "web:8080"], &["python3", ECHO, "--name", "web", "--port", "8080"]);
    lab.workload_ip("default", "web-1");
    let mut client = lab.run(&["--name", "resolver"], &["python3", "-c", RESOLVE_LOOP, "web", "6"]);
    let client = client.stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // Pushes while it resolves: policies (no Service changes), then Services coming and going.
    for i in 0..10 {
        lab.apply(&format!(
            "apiVersion: meshgate.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: default}}\nspec:\n  action: AUDIT\n  rules: [{{from: [{{source: {{principals: [\"cluster.local/ns/x/sa/y{i}\"]}}}}]}}]\n"
        ));
        lab.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: extra-{i}, namespace: default}}\nspec: {{selector: {{app: nobody}}, ports: [{{port: 80}}]}}\n"
        ));
        std::thread::sleep(Duration::from_millis(150));
    }
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let (n, bad): (usize, usize) = (fields.next().unwrap().parse().unwrap(), fields.next().unwrap().parse().unwrap());
    assert!(n > 100, "only {n} lookups: {text}");
    assert_eq!(bad, 0, "lookups failed or stalled while the configuration changed: {text}");
}

/// A WebSocket echo server with nothing but the standard library: answers each text frame
/// with `echo: ...`; a request that is not an upgrade gets 400.
const WS_SERVER: &str = r#"
import base64, hashlib, socketserver, sys
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
class H(socketserver.StreamRequestHandler):
    def handle(self):
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            c = self.rfile.read(1)
            if not c:
                return
            head += c
        lines = head.decode().split("\r\n")
        h = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
        if h.get("upgrade", "").lower() != "websocket":
            self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 15\r\nConnection: close\r\n\r\nnot a websocket")
            return
        accept = base64.b64encode(hashlib.sha1((h["sec-websocket-key"] + GUID).encode()).digest()).decode()
        self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
        self.wfile.flush()
        while True:
            b = self.rfile.read(2)
            if len(b) < 2 or b[0] & 0x0F == 8:
                return
            n = b[1] & 0x7F
            mask = self.rfile.read(4) if b[1] & 0x80 else b"\0\0\0\0"
            data = bytes(x ^ mask[i % 4] for i, x in enumerate(self.rfile.read(n)))
            out = b"echo: " + data
            self.wfile.write(bytes([0x81, len(out)]) + out)
            self.wfile.flush()
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// A WebSocket client: the handshake, then three masked text frames, printing the status line
/// and each answer.
const WS_CLIENT: &str = r#"
import base64, os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /chat HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host, key)).encode())
f = s.makefile("rb")
print(f.readline().decode().strip())
while f.readline() not in (b"\r\n", b""):
    pass
for i in range(3):
    msg = ("hello %d" % i).encode()
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(x ^ mask[j % 4] for j, x in enumerate(msg)))
    b = f.read(2)
    print(f.read(b[1] & 0x7F).decode())
"#;

#[test]
fn a_websocket_passes_through_both_sidecars() {
    let mut lab = Lab::start();
    lab.spawn(
        &["-n", "shop", "--service-account", "chat", "--name", "chat-1", "--service", "chat:8080"],
        &["python3", "-c", WS_SERVER, "8080"],
    );
    let ip = lab.workload_ip("shop", "chat-1");
    // The server is up when a plain GET (through its sidecar, PERMISSIVE) gets its 400.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !plain_get(SocketAddr::from((ip, 8080)), "/").is_ok_and(|r| r.starts_with("HTTP/1.1 400")) {
        assert!(Instant::now() < deadline, "the WebSocket server never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = lab
        .run(
            &["-n", "shop", "--service-account", "order", "--name", "ws-client"],
            &["python3", "-c", WS_CLIENT, "chat", "8080"],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["HTTP/1.1 101 Switching Protocols", "echo: hello 0", "echo: hello 1", "echo: hello 2"],
        "{}",
        text(&out)
    );
}
