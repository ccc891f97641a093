//! ListenerPolicy: the PROXY protocol from a load balancer in front (v1 and v2: the client's
//! address reaches X-Forwarded-For; no header, or a malformed one, closes), per-listener idle
//! timeout and connection limit, and policies that disagree about a port.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Mesh, gateway, route_to};

fn policy(name: &str, section: Option<&str>, spec: &str) -> String {
    let section = section.map(|s| format!(", sectionName: {s}")).unwrap_or_default();
    format!(
        "\n---\napiVersion: meshgate.io/v1alpha1\nkind: ListenerPolicy\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: gw{section}}}]\n{spec}\n"
    )
}

/// Writes `bytes` then reads the answer until the gateway closes (or 3 s).
async fn exchange(m: &Mesh, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(m.addr()).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn forwarded_for(response: &str) -> String {
    let body = &response[response.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let body = body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '\r' || c == '\n');
    let end = body.rfind('}').map_or(body.len(), |i| i + 1);
    let e: meshgate_testkit::Echoed = serde_json::from_str(&body[..end]).unwrap_or_else(|e| panic!("{e}: {response}"));
    e.headers.get("x-forwarded-for").cloned().unwrap_or_default()
}

/// A PROXY v2 header for TCP over IPv4 from `src` to `dst`.
fn proxy_v2(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0x00, 12]);
    h.extend(src.0);
    h.extend(dst.0);
    h.extend(src.1.to_be_bytes());
    h.extend(dst.1.to_be_bytes());
    h
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn the_proxy_protocol_carries_the_client_address_and_is_required_where_enabled() {
    let yaml = gateway("gw") + &route_to("b", "") + &policy("lb", Some("http"), "  proxyProtocol: {enabled: true}");
    let m = Mesh::start(&yaml, &["infra/b"]).await;
    let v1 = [b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".as_slice(), GET].concat();
    let r = exchange(&m, &v1).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(forwarded_for(&r), "203.0.113.7");
    let v2 = [proxy_v2(([198, 51, 100, 9], 4444), ([127, 0, 0, 1], 80)), GET.to_vec()].concat();
    let r = exchange(&m, &v2).await;
    assert_eq!(forwarded_for(&r), "198.51.100.9", "{r}");
    // No header, and a malformed one: closed without an answer.
    assert_eq!(exchange(&m, GET).await, "", "a request without the PROXY header was answered");
    let bad = [b"PROXY TCP4 not-an-address 127.0.0.1 5555 80\r\n".as_slice(), GET].concat();
    assert_eq!(exchange(&m, &bad).await, "");
}

#[tokio::test]
async fn a_proxy_header_where_it_is_not_enabled_is_not_taken_for_the_client() {
    let m = Mesh::start(&(gateway("gw") + &route_to("b", "")), &["infra/b"]).await;
    let v1 = [b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".as_slice(), GET].concat();
    let r = exchange(&m, &v1).await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
}

#[tokio::test]
async fn a_listener_policy_limits_connections_and_sets_the_idle_timeout() {
    let spec = "  maxConnections: 2\n  idleTimeout: 400ms";
    let m = Mesh::start(&(gateway("gw") + &route_to("b", "") + &policy("limits", None, spec)), &["infra/b"]).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(m.addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        open.push(s);
    }
    // A third, while two are open: closed at once.
    let r = exchange(&m, GET).await;
    assert_eq!(r, "", "a third connection was served");
    // The open ones go quiet: closed by the policy's idle timeout, not the default hour.
    let quiet = Instant::now();
    let mut s = open.pop().unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(quiet.elapsed() < Duration::from_secs(2), "idle for {:?}", quiet.elapsed());
    drop(open);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(exchange(&m, GET).await.starts_with("HTTP/1.1 200"), "served again below the limit");
}

#[tokio::test]
async fn policies_that_disagree_about_a_port_are_reported() {
    let dir = meshgate_testkit::TempDir::new("meshgate-lp");
    let yaml = gateway("gw").replace("{port}", "18080")
        + &policy("first", None, "  idleTimeout: 1m")
        + &policy("second", Some("http"), "  idleTimeout: 2m")
        + &policy("lost", None, "  idleTimeout: 1m").replace("name: gw", "name: nope");
    dir.write("all.yaml", &yaml);
    let (_, compiled) = meshgate_proxy::source::load(&[dir.path().to_path_buf()]).unwrap();
    let all: Vec<String> = compiled.problems().map(ToString::to_string).collect();
    assert!(all.iter().any(|p| p.contains("ListenerPolicy infra/second") && p.contains("Conflicted")), "{all:?}");
    assert!(all.iter().any(|p| p.contains("ListenerPolicy infra/lost") && p.contains("TargetNotFound")), "{all:?}");
    assert_eq!(compiled.config.ports[&18080].settings.idle_timeout, Some(Duration::from_secs(60)));
    dir.write("all.yaml", &(gateway("gw").replace("{port}", "18080") + &policy("bad", None, "  idleTimeout: soon")));
    let errors = meshgate_proxy::source::load(&[dir.path().to_path_buf()]).unwrap_err().to_string();
    assert!(errors.contains("ListenerPolicy infra/bad: spec.idleTimeout"), "{errors}");
}
