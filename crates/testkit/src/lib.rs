//! Test helpers shared by meshgate's integration tests: real upstream servers that echo what
//! they received, real HTTP/1.1 and HTTP/2 clients, free ports and temporary directories.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic loudly

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpListener;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{:x}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file (replacing it atomically by rename, as editors do).
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What an echo server saw.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Echoed {
    /// Name of the server that answered.
    pub backend: String,
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// Host header (or :authority).
    pub host: String,
    /// HTTP version, e.g. `HTTP/1.1`.
    pub proto: String,
    /// Headers, lower-case names; repeated headers joined with ",".
    pub headers: BTreeMap<String, String>,
    /// Bytes of request body received.
    pub body_bytes: usize,
}

/// How an echo server behaves.
#[derive(Debug, Clone, Default)]
pub struct EchoOptions {
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Answer with this status instead of 200.
    pub status: Option<u16>,
    /// Extra response headers (also: every `x-echo-response-*` request header is echoed back
    /// without the prefix, so tests can make the upstream send headers).
    pub response_headers: Vec<(String, String)>,
    /// Statuses to answer with, in turn, request after request (overrides `status`).
    pub status_cycle: Vec<u16>,
}

/// An upstream server that answers every request with a JSON [`Echoed`] and records it.
#[derive(Debug, Clone)]
pub struct EchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name (in every answer).
    pub name: String,
    seen: Arc<Mutex<Vec<Echoed>>>,
    task: Arc<tokio::task::AbortHandle>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl EchoServer {
    /// Starts an echo server (HTTP/1.1 and HTTP/2 prior knowledge) on a free port.
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, EchoOptions::default()).await
    }

    /// Starts an echo server with options.
    pub async fn start_with(name: &str, options: EchoOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let name_owned = name.to_string();
        let seen2 = seen.clone();
        let options = Arc::new(options);
        let conns = Arc::new(Mutex::new(Vec::new()));
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let name = name_owned.clone();
                let seen = seen2.clone();
                let options = options.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| echo(name.clone(), seen.clone(), options.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        EchoServer { addr, name: name.to_string(), seen, task: Arc::new(task.abort_handle()), conns }
    }

    /// Number of requests seen so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Dies: stops accepting and drops every open connection (its port then refuses).
    pub fn kill(&self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Echoed> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting (existing connections keep going until they close).
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// The `delay` query parameter: a number of seconds (`1s`) or milliseconds (`500ms`).
fn query_delay(query: &str) -> Option<Duration> {
    let v = query.split('&').find_map(|kv| kv.strip_prefix("delay="))?;
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    v.strip_suffix('s')?.parse::<f64>().ok().map(Duration::from_secs_f64)
}

async fn echo(
    name: String,
    seen: Arc<Mutex<Vec<Echoed>>>,
    options: Arc<EchoOptions>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_bytes = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers.entry(k.as_str().to_string()).and_modify(|e| *e = format!("{e},{v}")).or_insert(v);
    }
    let host =
        parts.uri.authority().map(|a| a.to_string()).or_else(|| headers.get("host").cloned()).unwrap_or_default();
    let echoed = Echoed {
        backend: name,
        method: parts.method.to_string(),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        host,
        proto: format!("{:?}", parts.version),
        headers,
        body_bytes,
    };
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.push(echoed.clone());
        seen.len()
    };
    if let Some(d) = options.delay {
        tokio::time::sleep(d).await;
    }
    // `?delay=1s` / `500ms`, as the Gateway API conformance echo server takes it.
    if let Some(d) = parts.uri.query().and_then(query_delay) {
        tokio::time::sleep(d).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(serde_json::to_vec(&echoed).unwrap())));
    let status = if options.status_cycle.is_empty() {
        options.status.unwrap_or(200)
    } else {
        options.status_cycle[(n - 1) % options.status_cycle.len()]
    };
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    for (k, v) in &options.response_headers {
        resp.headers_mut().append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    for (k, v) in &parts.headers {
        if let Some(name) = k.as_str().strip_prefix("x-echo-response-") {
            resp.headers_mut().append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), v.clone());
        }
    }
    // The conformance echo server's way: `X-Echo-Set-Header: Name:Value,Name:Value`.
    for v in parts.headers.get_all("x-echo-set-header") {
        for pair in v.to_str().unwrap_or("").split(',').filter(|p| !p.trim().is_empty()) {
            if let Some((name, value)) = pair.split_once(':')
                && let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name.trim().as_bytes()), value.trim().parse())
            {
                resp.headers_mut().append(n, v);
            }
        }
    }
    Ok(resp)
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The echo of the upstream that answered.
    pub fn echoed(&self) -> Echoed {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {} {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// An HTTP client speaking HTTP/1.1 (keep-alive) or HTTP/2 prior knowledge.
#[derive(Debug, Clone)]
pub struct Client {
    inner: LegacyClient<HttpConnector, Full<Bytes>>,
    h2: bool,
}

impl Client {
    /// HTTP/1.1 with keep-alive.
    pub fn h1() -> Self {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        Client { inner: LegacyClient::builder(TokioExecutor::new()).build(c), h2: false }
    }

    /// HTTP/2 over cleartext with prior knowledge.
    pub fn h2() -> Self {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        Client { inner: LegacyClient::builder(TokioExecutor::new()).http2_only(true).build(c), h2: true }
    }

    /// Sends a request to `addr` with `Host: host` and reads the whole response.
    pub async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let uri = if self.h2 { format!("http://{host}{path}") } else { format!("http://{addr}{path}") };
        let mut req = Request::builder().method(method).uri(uri);
        if !self.h2 {
            req = req.header("host", host);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = if self.h2 {
            // The URI names the virtual host; connect to `addr` regardless.
            let io = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            sender.send_request(req).await.map_err(|e| e.to_string())?
        } else {
            self.inner.request(req).await.map_err(|e| format!("{e:?}"))?
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// GET that reports failure instead of panicking.
    pub async fn try_get(&self, addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
        self.send(addr, Method::GET, host, path, &[], Bytes::new()).await
    }

    /// GET with headers.
    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(addr, Method::GET, host, path, headers, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("GET http://{host}{path} via {addr}: {e}"))
    }
}

/// A real etcd server (Debian's etcd-server) on free loopback ports, killed when dropped.
#[derive(Debug)]
pub struct Etcd {
    /// `127.0.0.1:PORT` of its client API.
    pub endpoint: String,
    child: std::process::Child,
    _dir: TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it answers; panics (loudly, with the fix) when it is not
    /// installed.
    pub fn start() -> Etcd {
        let dir = TempDir::new("meshgate-etcd");
        let (client, peer) = (free_port(), free_port());
        let child = std::process::Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("t=http://127.0.0.1:{peer}"),
                "--log-level",
                "error",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}): install it with `scripts/deps test` (Debian package etcd-server)")
            });
        let endpoint = format!("127.0.0.1:{client}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&endpoint).is_err() {
            assert!(std::time::Instant::now() < deadline, "etcd did not start listening on {endpoint}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Etcd { endpoint, child, _dir: dir }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
