//! The request path with paused time, against in-memory upstreams: per-try and request
//! timeouts, retries and backoff, at the virtual instants the policy says.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;

use super::{ConnInfo, Target, handle};
use crate::core::ProxyCore;
use crate::upstream::memory::Upstream;

const ENDPOINT: ([u8; 4], u16) = ([10, 9, 0, 1], 8080);

/// A gateway on port 80 routing to Service `infra/app`, whose one endpoint is in memory;
/// `rule` and `policy` are YAML added to the rule and as a TrafficPolicy spec.
fn config(rule: &str, policy: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra}}
spec:
  gatewayClassName: meshgate
  listeners: [{{name: http, port: 80, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: infra}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: app, port: 80}}]
{rule}
---
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: infra}}
spec: {{selector: {{app: app}}, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: meshgate.io/v1alpha1
kind: Workload
metadata: {{name: app-0, namespace: infra, labels: {{app: app}}}}
spec: {{address: 10.9.0.1}}
---
apiVersion: meshgate.io/v1alpha1
kind: TrafficPolicy
metadata: {{name: p, namespace: infra}}
spec:
  targetRefs: [{{kind: Service, name: app}}]
{policy}
"#
    )
}

fn core(yaml: &str, upstream: Upstream) -> Arc<ProxyCore> {
    let core = ProxyCore::new(None);
    core.serve_in_memory(SocketAddr::from(ENDPOINT), upstream);
    let loaded = meshgate_api::load_str(&"test.yaml".into(), yaml);
    assert!(loaded.errors.is_empty(), "{}", loaded.errors);
    let set = meshgate_api::ResourceSet::from_objects(loaded.objects).0;
    let compiled = meshgate_model::compile_gateway(&set);
    assert_eq!(compiled.problems().count(), 0, "{:?}", compiled.problems().collect::<Vec<_>>());
    core.publish(compiled, Vec::new());
    core
}

/// One GET through the request path, in memory: its status, flags, and the virtual time taken.
async fn get(core: &Arc<ProxyCore>) -> (u16, String, Duration) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let cell = core.cell();
    let info = ConnInfo {
        port: 80,
        peer: SocketAddr::from(([10, 9, 9, 9], 40000)),
        scheme: "http",
        target: Target::Listeners,
        tls: None,
        sni: None,
    };
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let (snapshot, info) = (cell.load_full(), info.clone());
            async move { Ok::<_, std::convert::Infallible>(handle(snapshot, info, req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service).await;
    });
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client)).await.unwrap();
    tokio::spawn(conn);
    let started = tokio::time::Instant::now();
    let req = Request::get("/").header("host", "h").body(Empty::<Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let flags = resp.headers().get("x-meshgate-flags").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let _ = resp.into_body().collect().await;
    (status, flags, started.elapsed())
}

/// An upstream that sleeps `slow` before answering the requests `slow_for` says (by count,
/// from 0), and answers the others at once.
fn upstream(slow: Duration, slow_for: fn(usize) -> bool) -> (Upstream, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let upstream = Upstream::new(move |_req| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if slow_for(n) {
                tokio::time::sleep(slow).await;
            }
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    });
    (upstream, count)
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_is_cut_at_the_per_try_timeout_and_retried() {
    let (up, count) = upstream(Duration::from_secs(10), |n| n == 0);
    let core = core(&config("", "  timeouts: {perTry: 1s, request: 5s}\n  retry: {attempts: 2, backoff: 10ms}"), up);
    let (status, flags, took) = get(&core).await;
    assert_eq!(status, 200, "{flags}");
    assert_eq!(count.load(Ordering::SeqCst), 2, "one retry after the per-try timeout");
    // The per-try timeout (1 s), then a backoff of at most 10 ms.
    assert!(took >= Duration::from_secs(1) && took <= Duration::from_millis(1011), "{took:?}");
    assert!(flags.contains("UT"), "the cut attempt is flagged: {flags}");
}

#[tokio::test(start_paused = true)]
async fn the_request_timeout_bounds_every_attempt_together() {
    let (up, count) = upstream(Duration::from_secs(10), |_| true);
    let core = core(&config("", "  timeouts: {perTry: 2s, request: 3s}\n  retry: {attempts: 5, backoff: 1ms}"), up);
    let (status, flags, took) = get(&core).await;
    assert_eq!((status, flags.as_str()), (504, "UT"));
    // Attempt 1 cut at 2 s, attempt 2 at the request's 3 s: not 5 attempts × 2 s.
    assert!(took >= Duration::from_secs(3) && took < Duration::from_millis(3010), "{took:?}");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn without_a_per_try_timeout_an_attempt_runs_to_the_request_timeout() {
    let (up, count) = upstream(Duration::from_secs(10), |_| true);
    let core = core(&config("    timeouts: {request: 4s}", "  retry: {attempts: 3}"), up);
    let (status, _, took) = get(&core).await;
    assert_eq!(status, 504);
    assert!(took >= Duration::from_secs(4) && took < Duration::from_millis(4010), "{took:?}");
    assert_eq!(count.load(Ordering::SeqCst), 1, "the overall timeout is not retried");
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_with_each_retry_within_its_cap() {
    // Every answer is a 503 at once: three retries with backoff base 100 ms (full jitter,
    // doubling, capped at 10× the base) take at most 100 + 200 + 400 ms.
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let up = Upstream::new(move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = Response::new(Full::new(Bytes::from_static(b"no")));
            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    });
    let core = core(&config("", "  retry: {attempts: 3, backoff: 100ms, budget: {minRetryConcurrency: 10}}"), up);
    let (status, flags, took) = get(&core).await;
    assert_eq!((status, flags.as_str()), (503, "URX"));
    assert_eq!(count.load(Ordering::SeqCst), 4);
    assert!(took <= Duration::from_millis(700), "{took:?}");
}
