//! The dashboard: its page, script and style embedded in the binary and served at `/`; signing
//! in with a one-time code (`meshgate up` and `meshgate dashboard` print a URL with one) that
//! becomes a session cookie (HttpOnly, SameSite=Strict: the admin token never reaches the
//! browser, and the code in the URL is spent once used); a CSRF token every state-changing call
//! made with the cookie must carry; the live graph over server-sent events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};

use crate::plane::ControlPlane;
use crate::store::Store;

const INDEX: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// The session cookie's name.
pub const COOKIE: &str = "meshgate_session";
/// How long a sign-in code can be used.
const CODE_TTL: Duration = Duration::from_secs(600);
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sign-in codes and sessions kept at most (the oldest go first).
const MAX_ENTRIES: usize = 256;
/// How often the graph is sent to an open map.
const EVENT_EVERY: Duration = Duration::from_secs(1);

/// A streamed or whole response body.
pub type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug)]
struct Session {
    csrf: String,
    expires: Instant,
}

/// The dashboard's sign-in codes and sessions (in memory: a restarted control plane asks for a
/// new sign-in, as a restarted Kiali does).
#[derive(Debug, Default)]
pub struct Sessions {
    codes: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, Session>>,
}

fn secret() -> String {
    meshgate_tls::hex(&meshgate_tls::random_bytes(24))
}

fn prune<V>(map: &mut HashMap<String, V>, expiry: impl Fn(&V) -> Instant) {
    let now = Instant::now();
    map.retain(|_, v| expiry(v) > now);
    while map.len() >= MAX_ENTRIES {
        let Some(oldest) = map.iter().min_by_key(|(_, v)| expiry(v)).map(|(k, _)| k.clone()) else { break };
        map.remove(&oldest);
    }
}

/// Whether two secrets are equal, in time independent of where they differ.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// A new one-time sign-in code.
    pub fn code(&self) -> String {
        let code = secret();
        if let Ok(mut codes) = self.codes.lock() {
            prune(&mut codes, |e| *e);
            codes.insert(code.clone(), Instant::now() + CODE_TTL);
        }
        code
    }

    /// Spends `code`: a new session (its id and CSRF token) when it was valid.
    fn sign_in(&self, code: &str) -> Option<String> {
        let valid = {
            let mut codes = self.codes.lock().ok()?;
            let found = codes.keys().find(|k| same(k, code)).cloned();
            found.and_then(|k| codes.remove(&k)).is_some_and(|expires| expires > Instant::now())
        };
        if !valid {
            return None;
        }
        let id = secret();
        let mut sessions = self.sessions.lock().ok()?;
        prune(&mut sessions, |s| s.expires);
        sessions.insert(id.clone(), Session { csrf: secret(), expires: Instant::now() + SESSION_TTL });
        Some(id)
    }

    /// The CSRF token of the session `req`'s cookie names, when it is valid.
    pub fn csrf_of(&self, req: &Request<Incoming>) -> Option<String> {
        let id = cookie(req)?;
        let sessions = self.sessions.lock().ok()?;
        sessions.iter().find(|(k, s)| same(k, &id) && s.expires > Instant::now()).map(|(_, s)| s.csrf.clone())
    }
}

/// The session id in `req`'s cookies.
fn cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers().get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';').find_map(|c| c.trim().strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')).map(str::to_string))
    })
}

/// Why a state-changing call made with the session cookie is refused: no or a wrong CSRF
/// token, or an `Origin` other than the dashboard's own.
pub fn cross_site(req: &Request<Incoming>, csrf: &str) -> Option<String> {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    if let Some(origin) = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        if origin != format!("http://{host}") {
            return Some(format!(
                "cross-site request refused: Origin {origin} is not this dashboard's (http://{host})"
            ));
        }
    }
    match req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()) {
        Some(t) if same(t, csrf) => None,
        Some(_) => Some("cross-site request refused: wrong X-CSRF-Token for this session".into()),
        None => Some("cross-site request refused: a call made with the session cookie needs its X-CSRF-Token".into()),
    }
}

/// An asset: the one built in, or with `MESHGATE_UI_DIR` set (working on the dashboard) the
/// file of that name there, read at each request.
fn asset(name: &str, built_in: &'static str) -> Bytes {
    if let Some(dir) = std::env::var_os("MESHGATE_UI_DIR")
        && let Ok(b) = std::fs::read(std::path::Path::new(&dir).join(name))
    {
        return Bytes::from(b);
    }
    Bytes::from_static(built_in.as_bytes())
}

fn page(status: StatusCode, content_type: &'static str, body: &'static str) -> Response<Body> {
    served(status, content_type, Bytes::from_static(body.as_bytes()))
}

fn served(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page runs only its own script and style, and no one frames it.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

const SIGN_IN: &str = "<!doctype html><meta charset=utf-8><title>meshgate — sign in</title>\
<body style=\"font:16px system-ui;margin:3em\"><h1>meshgate dashboard</h1>\
<p>Not signed in, or the sign-in link was used or has expired.</p>\
<p>Open the link <code>meshgate up</code> printed, or print a new one with \
<code>meshgate dashboard</code>.</p>";

/// The dashboard's own routes: `Some` when `req` is one of them.
pub fn route<S: Store + 'static>(
    cp: &std::sync::Arc<ControlPlane<S>>,
    req: &Request<Incoming>,
) -> Option<Response<Body>> {
    if req.method() != Method::GET {
        return None;
    }
    let signed_in = || cp.sessions.csrf_of(req).is_some();
    match req.uri().path() {
        "/" | "/index.html" if signed_in() => {
            Some(served(StatusCode::OK, "text/html; charset=utf-8", asset("index.html", INDEX)))
        }
        "/" | "/index.html" => Some(page(StatusCode::UNAUTHORIZED, "text/html; charset=utf-8", SIGN_IN)),
        "/ui/app.js" => Some(served(StatusCode::OK, "text/javascript; charset=utf-8", asset("app.js", APP_JS))),
        // Browsers ask for it; nothing to show.
        "/favicon.ico" => Some(served(StatusCode::NO_CONTENT, "image/x-icon", Bytes::new())),
        "/ui/app.css" => Some(served(StatusCode::OK, "text/css; charset=utf-8", asset("app.css", APP_CSS))),
        "/login" => {
            let code = req.uri().query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("code="));
            match code.and_then(|c| cp.sessions.sign_in(c)) {
                Some(id) => {
                    // To the map, and the spent code out of the address bar.
                    let mut r = page(StatusCode::SEE_OTHER, "text/plain", "");
                    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static("/"));
                    let cookie =
                        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", SESSION_TTL.as_secs());
                    if let Ok(v) = HeaderValue::from_str(&cookie) {
                        r.headers_mut().insert(header::SET_COOKIE, v);
                    }
                    Some(r)
                }
                None => Some(page(StatusCode::UNAUTHORIZED, "text/html; charset=utf-8", SIGN_IN)),
            }
        }
        "/api/v1/ui/events" if signed_in() => {
            let window = req.uri().query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("window="));
            let window = match crate::graph::parse_window(window.unwrap_or("60s")) {
                Ok(w) => w,
                Err(e) => {
                    let mut r = Response::new(Full::new(Bytes::from(e)).boxed());
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    return Some(r);
                }
            };
            Some(events(cp.clone(), window))
        }
        _ => None,
    }
}

/// The graph, now and every second, as server-sent events (`event: graph`), until the page
/// goes away.
fn events<S: Store + 'static>(cp: std::sync::Arc<ControlPlane<S>>, window: Duration) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVENT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut stopping = cp.stopping.subscribe();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.changed() => return,
            }
            let graph = cp.graph.json(window);
            let event = format!("event: graph\ndata: {graph}\n\n");
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(BodyExt::boxed(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
