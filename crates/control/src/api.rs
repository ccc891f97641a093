//! The HTTP API the CLI (and the dashboard) use, token-protected and loopback by default:
//! resources (get, apply, delete), proxies, join tokens, analysis, status, CA rotation.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshgate_api::{Kind, ObjectRef};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::plane::{CaUpdateError, ControlPlane};
use crate::store::{Store, key_of};

type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, v: &serde_json::Value) -> Reply {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, msg: impl Into<String>) -> Reply {
    json_reply(status, &json!({ "error": msg.into() }))
}

/// Serves the API until the task is dropped.
pub async fn serve<S: Store>(cp: Arc<ControlPlane<S>>, listener: TcpListener, token: Arc<String>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (cp, token) = (cp.clone(), token.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (cp, token) = (cp.clone(), token.clone());
                async move {
                    if let Some(r) = crate::ui::route(&cp, &req) {
                        return Ok::<_, Infallible>(r);
                    }
                    Ok(handle(&cp, &token, req).await.map(BodyExt::boxed))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some(given) = given.strip_prefix("Bearer ") else { return false };
    crate::ui::same(given, token)
}

fn parse_ref(kind: &str, ns: &str, name: &str) -> Result<ObjectRef, String> {
    let kind = Kind::from_cli(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    Ok(ObjectRef {
        kind,
        namespace: kind.namespaced().then(|| if ns == "-" { "default" } else { ns }.into()),
        name: name.into(),
    })
}

async fn handle<S: Store>(cp: &ControlPlane<S>, token: &str, req: Request<Incoming>) -> Reply {
    // Scraped without a token, as istiod's are: counts only, nothing secret.
    if req.method() == Method::GET && (req.uri().path() == "/metrics" || req.uri().path() == "/stats/prometheus") {
        let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(cp))));
        r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
        return r;
    }
    // The admin token (the CLI), or the dashboard's session cookie with its CSRF token.
    let bearer = authorized(&req, token);
    let session = if bearer { None } else { cp.sessions.csrf_of(&req) };
    if !bearer && session.is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token (Authorization: Bearer TOKEN), and no dashboard session",
        );
    }
    if let Some(why) = session.as_deref().and_then(|csrf| crate::ui::cross_site(&req, csrf)) {
        return error(StatusCode::FORBIDDEN, why);
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["api", "v1", "resources"]) => list(cp, &query),
        (&Method::GET, ["api", "v1", "resources", kind, ns, name]) => get(cp, kind, ns, name).await,
        (&Method::DELETE, ["api", "v1", "resources", kind, ns, name]) => match parse_ref(kind, ns, name) {
            Ok(id) => match cp.store.delete(&id).await {
                Ok(true) => {
                    let _ = cp.state.reload(&cp.store).await;
                    json_reply(StatusCode::OK, &json!({ "deleted": id.to_string() }))
                }
                Ok(false) => error(StatusCode::NOT_FOUND, format!("{id} not found")),
                Err(e) => error(StatusCode::CONFLICT, e.to_string()),
            },
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (&Method::POST, ["api", "v1", "apply"]) => apply(cp, req).await,
        (&Method::GET, ["api", "v1", "proxies"]) => {
            // Every replica's (as istiod's proxy-status shows every istiod's), each with the
            // replica it is connected to; this replica's alone when the others cannot be read.
            let (records, partial) = match cp.all_proxies().await {
                Ok(all) => (all, None),
                Err(e) => (cp.local_proxies(), Some(format!("other replicas' proxies unknown: {e}"))),
            };
            let proxies: Vec<serde_json::Value> = records
                .iter()
                .map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["status"] = json!(r.status());
                    v
                })
                .collect();
            let mut body = json!({ "version": cp.state.snapshot().version, "proxies": proxies });
            if let Some(p) = partial {
                body["partial"] = json!(p);
            }
            json_reply(StatusCode::OK, &body)
        }
        (&Method::POST, ["api", "v1", "tokens"]) => create_token(cp, req).await,
        (&Method::GET, ["api", "v1", "ui", "session"]) => match session {
            Some(csrf) => json_reply(StatusCode::OK, &json!({ "csrf": csrf })),
            None => error(StatusCode::BAD_REQUEST, "no dashboard session: the admin token needs none"),
        },
        (&Method::POST, ["api", "v1", "taps"]) => start_tap(cp, req).await,
        (&Method::GET, ["api", "v1", "taps", id]) => {
            let found = match id.parse() {
                Ok(n) => crate::taps::read(cp, n).await,
                Err(_) => Ok(None),
            };
            match found {
                Ok(Some(v)) => json_reply(StatusCode::OK, &v),
                Ok(None) => error(StatusCode::NOT_FOUND, format!("no tap {id} (taps are kept ten minutes)")),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read tap {id}: {e}")),
            }
        }
        (&Method::POST, ["api", "v1", "ui", "login-codes"]) if bearer => {
            let code = cp.sessions.code();
            json_reply(StatusCode::OK, &json!({ "code": code, "path": format!("/login?code={code}") }))
        }
        (&Method::POST, ["api", "v1", "ui", "login-codes"]) => {
            error(StatusCode::FORBIDDEN, "sign-in codes are made with the admin token only")
        }
        (&Method::GET, ["api", "v1", "stat", kind]) => {
            let window = query.split('&').find_map(|kv| kv.strip_prefix("window=")).unwrap_or("60s");
            match crate::graph::parse_window(window).and_then(|w| cp.graph.stat(kind, w)) {
                Ok(v) => json_reply(StatusCode::OK, &v),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            }
        }
        (&Method::GET, ["api", "graph"] | ["api", "v1", "graph"]) => {
            let window = query.split('&').find_map(|kv| kv.strip_prefix("window=")).unwrap_or("60s");
            match crate::graph::parse_window(window) {
                Ok(w) => json_reply(StatusCode::OK, &cp.graph.json(w)),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            }
        }
        (&Method::GET, ["api", "v1", "bundle"]) => {
            let pem = cp.bundle().to_pem();
            json_reply(StatusCode::OK, &json!({ "trustDomain": cp.options.trust_domain.to_string(), "pem": pem }))
        }
        (&Method::GET, ["api", "v1", "analyze"]) => {
            let snap = cp.state.snapshot();
            let findings = crate::analyze::analyze(&snap.set, &snap.settings, &snap.conditions);
            json_reply(StatusCode::OK, &json!({ "findings": findings }))
        }
        (&Method::GET, ["api", "v1", "status"]) => {
            let snap = cp.state.snapshot();
            let errors: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
            json_reply(
                StatusCode::OK,
                &json!({ "version": snap.version, "store": cp.store.describe(), "resources": snap.entries.len(), "errors": errors, "conditions": snap.conditions }),
            )
        }
        (&Method::GET, ["api", "v1", "ca"]) => ca_status(cp).await,
        (&Method::POST, ["api", "v1", "ca", step]) => rotate(cp, step).await,
        _ => error(StatusCode::NOT_FOUND, format!("no route for {method} {path}")),
    }
}

fn item(snap: &crate::state::Snapshot, key: &str) -> Option<serde_json::Value> {
    let e = snap.entries.get(key)?;
    let conditions: Vec<&meshgate_model::Condition> =
        snap.conditions_of.get(&e.id).into_iter().flatten().map(|&i| &snap.conditions[i]).collect();
    let mut v: serde_json::Value = serde_json::from_slice(&e.json).ok()?;
    match snap.status.get(&e.id) {
        // A Gateway API resource: its status as the spec writes it.
        Some(status) => v["status"] = status.clone(),
        None if !conditions.is_empty() => v["status"] = json!({ "meshgate": { "conditions": conditions } }),
        None => {}
    }
    Some(v)
}

fn list<S: Store>(cp: &ControlPlane<S>, query: &str) -> Reply {
    let mut kind = None;
    let mut ns = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("kind", k)) => match Kind::from_cli(k) {
                Some(k) => kind = Some(k),
                None => return error(StatusCode::BAD_REQUEST, format!("unknown kind {k:?}")),
            },
            Some(("namespace", n)) => ns = Some(n.to_string()),
            _ => {}
        }
    }
    let snap = cp.state.snapshot();
    let items: Vec<serde_json::Value> = snap
        .entries
        .iter()
        .filter(|(_, e)| kind.is_none_or(|k| e.id.kind == k))
        .filter(|(_, e)| ns.as_deref().is_none_or(|n| e.id.ns() == n || !e.id.kind.namespaced()))
        .filter_map(|(k, _)| item(&snap, k))
        .collect();
    let invalid: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
    json_reply(StatusCode::OK, &json!({ "items": items, "invalid": invalid }))
}

async fn get<S: Store>(cp: &ControlPlane<S>, kind: &str, ns: &str, name: &str) -> Reply {
    let id = match parse_ref(kind, ns, name) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let snap = cp.state.snapshot();
    match item(&snap, &key_of(&id)) {
        Some(mut v) => {
            // The status in the store: another replica may have written it since this one's
            // snapshot.
            if snap.status.contains_key(&id)
                && let Ok(Some(bytes)) = cp.store.get_blob(&crate::state::status_key(&id)).await
                && let Ok(status) = serde_json::from_slice::<serde_json::Value>(&bytes)
            {
                v["status"] = status;
            }
            json_reply(StatusCode::OK, &v)
        }
        None => {
            let invalid: Vec<String> =
                snap.errors.iter().filter(|e| e.object.as_ref() == Some(&id)).map(ToString::to_string).collect();
            if invalid.is_empty() {
                error(StatusCode::NOT_FOUND, format!("{id} not found"))
            } else {
                error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{id} is in the store but invalid: {}", invalid.join("; ")),
                )
            }
        }
    }
}

async fn body_bytes(req: Request<Incoming>) -> Result<Bytes, Reply> {
    match Limited::new(req.into_body(), 8 << 20).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("body: {e}"))),
    }
}

/// A JSON request body as `T`, or the reply saying what is wrong with it (`what`: its name).
async fn json_body<T: serde::de::DeserializeOwned>(req: Request<Incoming>, what: &str) -> Result<T, Reply> {
    let body = body_bytes(req).await?;
    serde_json::from_slice(&body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("{what}: {e}")))
}

async fn apply<S: Store>(cp: &ControlPlane<S>, req: Request<Incoming>) -> Reply {
    let source = req.headers().get("x-meshgate-source").and_then(|v| v.to_str().ok()).unwrap_or("apply").to_string();
    // What the caller read: an edit of a resource that changed since is refused (the
    // dashboard's confirmations send it).
    let expected: Option<i64> = match req.headers().get("x-meshgate-if-generation").map(|v| v.to_str().map(str::parse))
    {
        None => None,
        Some(Ok(Ok(g))) => Some(g),
        Some(_) => return error(StatusCode::BAD_REQUEST, "X-Meshgate-If-Generation: a whole number"),
    };
    let body = match body_bytes(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let text = String::from_utf8_lossy(&body);
    let loaded = meshgate_api::load_str(&source.as_str().into(), &text);
    if !loaded.errors.is_empty() {
        let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        return json_reply(StatusCode::UNPROCESSABLE_ENTITY, &json!({ "errors": errors }));
    }
    let snap = cp.state.snapshot();
    if let Some(want) = expected {
        let [o] = loaded.objects.as_slice() else {
            return error(StatusCode::BAD_REQUEST, "X-Meshgate-If-Generation applies to one resource at a time");
        };
        let stored: Option<serde_json::Value> =
            snap.entries.get(key_of(&o.id).as_str()).and_then(|e| serde_json::from_slice(&e.json).ok());
        let have = stored.as_ref().map(|v| v["metadata"]["generation"].as_i64().unwrap_or(1));
        if have != Some(want) {
            let now = have.map_or("it is gone".to_string(), |g| format!("it is at generation {g}"));
            return error(
                StatusCode::CONFLICT,
                format!(
                    "{} changed since it was read (generation {want}; {now}): nothing applied, reload and try again",
                    o.id
                ),
            );
        }
    }
    let mut results = Vec::new();
    for o in &loaded.objects {
        let mut value = match serde_json::to_value(&o.resource) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let key = key_of(&o.id);
        let stored = snap.entries.get(key.as_str()).and_then(|e| serde_json::from_slice(&e.json).ok());
        let (action, generation) = versioned(&mut value, stored);
        if action != "unchanged"
            && let Err(e) = cp.store.put(o, &value).await
        {
            return json_reply(
                StatusCode::CONFLICT,
                &json!({ "errors": [format!("{}: {e}", o.id)], "results": results }),
            );
        }
        results.push(json!({ "object": o.id.to_string(), "action": action, "generation": generation }));
    }
    let _ = cp.state.reload(&cp.store).await;
    json_reply(StatusCode::OK, &json!({ "results": results }))
}

/// What applying `value` over `stored` does (`created`, `configured`, `unchanged`), with
/// `value` made ready to store: without a `status` (the control plane's to write, kept apart)
/// and with `metadata.generation` counting changes of its spec, as Kubernetes counts them (1
/// when created; a change of labels alone keeps it).
fn versioned(value: &mut serde_json::Value, stored: Option<serde_json::Value>) -> (&'static str, i64) {
    let strip = |v: &mut serde_json::Value| {
        if let Some(m) = v.as_object_mut() {
            m.remove("status");
        }
        v.get_mut("metadata").and_then(|m| m.as_object_mut()).and_then(|m| m.remove("generation"))
    };
    strip(value);
    let (action, generation) = match stored {
        None => ("created", 1),
        Some(mut old) => {
            let old_generation = strip(&mut old).and_then(|g| g.as_i64()).unwrap_or(1);
            if old == *value {
                ("unchanged", old_generation)
            } else if old.get("spec") != value.get("spec") {
                ("configured", old_generation + 1)
            } else {
                ("configured", old_generation)
            }
        }
    };
    if let Some(m) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.insert("generation".into(), json!(generation));
    }
    (action, generation)
}

#[derive(Deserialize)]
struct TapRequest {
    workload: String,
    #[serde(default)]
    seconds: Option<u32>,
    #[serde(default)]
    max: Option<u32>,
}

/// Asks the proxies of a workload for what they serve for a while (10 s, 50 records unless
/// said): the tap's id, to read with `GET /api/v1/taps/ID`.
async fn start_tap<S: Store>(cp: &ControlPlane<S>, req: Request<Incoming>) -> Reply {
    let t: TapRequest = match json_body(req, "tap request").await {
        Ok(t) => t,
        Err(r) => return r,
    };
    match crate::taps::start(cp, &t.workload, t.seconds.unwrap_or(10), t.max.unwrap_or(50)).await {
        Ok(id) => json_reply(StatusCode::OK, &json!({ "id": id, "workload": t.workload })),
        Err(e @ crate::taps::TapError::NoProxy(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    namespace: String,
    service_account: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

async fn create_token<S: Store>(cp: &ControlPlane<S>, req: Request<Incoming>) -> Reply {
    let t: TokenRequest = match json_body(req, "token request").await {
        Ok(t) => t,
        Err(r) => return r,
    };
    for (what, v) in [("namespace", &t.namespace), ("serviceAccount", &t.service_account)] {
        if meshgate_api::validate::syntax::dns_label(v).is_err() {
            return error(StatusCode::BAD_REQUEST, format!("{what} {v:?} is not a valid name"));
        }
    }
    let ttl = Duration::from_secs(t.ttl_seconds.unwrap_or(3600).clamp(1, 7 * 24 * 3600));
    match crate::tokens::create(&cp.store, &t.namespace, &t.service_account, ttl).await {
        Ok(token) => {
            let pem = cp.bundle().to_pem();
            json_reply(
                StatusCode::OK,
                &json!({
                    "token": token,
                    "identity": cp.options.trust_domain.workload_id(&t.namespace, &t.service_account).map(|i| i.to_string()).unwrap_or_default(),
                    "expiresInSeconds": ttl.as_secs(),
                    "caBundlePem": pem,
                }),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn rotate<S: Store>(cp: &ControlPlane<S>, step: &str) -> Reply {
    let root_lifetime = cp.options.root_lifetime;
    // Which proxies hold leaves from which root, across replicas: read before the step, which
    // runs on a copy of the CA and is put in force only once it is saved.
    let proxies = if step == "withdraw-old-roots" || step == "use-root" {
        match cp.all_proxies().await {
            Ok(p) => p,
            Err(e) => {
                return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the connected proxies: {e}"));
            }
        }
    } else {
        Vec::new()
    };
    let result = cp
        .update_ca(|ca| match step {
            "add-root" => ca.add_next_root(root_lifetime).map_err(|e| e.to_string()),
            "use-root" => {
                // A leaf from the new root is refused by a proxy that does not trust it yet.
                if let Some(pending) = ca.pending_root().map(|r| meshgate_tls::fingerprint(r)) {
                    let lacking: Vec<String> = proxies
                        .iter()
                        .filter(|p| !p.trusts.contains(&pending))
                        .map(|p| format!("{} ({}, replica {})", p.identity, p.role, p.replica))
                        .collect();
                    if !lacking.is_empty() {
                        return Err(format!(
                            "refused: {} connected proxy(ies) do not trust the added root {} yet, and would refuse \
                             leaves from it: {}. The bundle reaches proxies within seconds of add-root; `meshgate \
                             ca status` shows when all trust it, then run use-root again",
                            lacking.len(),
                            short(&pending),
                            lacking.join("; ")
                        ));
                    }
                }
                ca.use_next_root().map_err(|e| e.to_string())
            }
            "withdraw-old-roots" => {
                let gone = ca.withdrawable_roots();
                if gone.is_empty() {
                    return Err(
                        "nothing to withdraw: the trust bundle holds only the root that signs (and a pending one)"
                            .into(),
                    );
                }
                let gone: Vec<String> = gone.iter().map(|r| meshgate_tls::fingerprint(r)).collect();
                let holding: Vec<String> = proxies
                    .iter()
                    .filter(|p| p.leaf_root.is_empty() || gone.contains(&p.leaf_root))
                    .map(|p| {
                        let root = if p.leaf_root.is_empty() { "not reported".into() } else { short(&p.leaf_root) };
                        format!("{} ({}, replica {}, leaf from root {root})", p.identity, p.role, p.replica)
                    })
                    .collect();
                if !holding.is_empty() {
                    return Err(format!(
                        "refused: {} connected proxy(ies) still hold a leaf from a root this would withdraw, and \
                         would lose their mTLS peers: {}. Proxies renew within seconds of use-root; `meshgate ca \
                         status` shows when none is left, then run withdraw-old-roots again",
                        holding.len(),
                        holding.join("; ")
                    ));
                }
                ca.withdraw_old_roots();
                Ok(())
            }
            other => Err(format!("unknown step {other:?}: add-root, use-root, withdraw-old-roots")),
        })
        .await;
    match result {
        Ok(roots) => json_reply(StatusCode::OK, &json!({ "step": step, "roots": roots })),
        Err(CaUpdateError::Refused(e)) => error(StatusCode::CONFLICT, e),
        Err(e @ CaUpdateError::Store(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The first 16 hex digits of a fingerprint, as shown to people.
fn short(fingerprint: &str) -> String {
    fingerprint.get(..16).unwrap_or(fingerprint).to_string()
}

/// `GET /api/v1/ca`: the roots of the trust bundle (which signs, which is pending) and, for
/// each, how many connected proxies (of every replica) hold a leaf from it.
async fn ca_status<S: Store>(cp: &ControlPlane<S>) -> Reply {
    let proxies = match cp.all_proxies().await {
        Ok(p) => p,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the connected proxies: {e}")),
    };
    let (roots, signing, pending) = match cp.ca.lock() {
        Ok(ca) => (
            ca.bundle().roots,
            ca.signing_root().map(|r| meshgate_tls::fingerprint(r)),
            ca.pending_root().map(|r| meshgate_tls::fingerprint(r)),
        ),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "CA unavailable"),
    };
    let roots: Vec<serde_json::Value> = roots
        .iter()
        .map(|r| {
            let fp = meshgate_tls::fingerprint(r);
            let d = meshgate_tls::svid::describe(r);
            json!({
                "fingerprint": fp,
                "subject": d.subject,
                "notBefore": d.not_before,
                "notAfter": d.not_after,
                "signing": signing.as_deref() == Some(fp.as_str()),
                "pending": pending.as_deref() == Some(fp.as_str()),
                "proxies": proxies.iter().filter(|p| p.leaf_root == fp).count(),
                "trustedBy": proxies.iter().filter(|p| p.trusts.contains(&fp)).count(),
            })
        })
        .collect();
    let listed: Vec<serde_json::Value> = proxies
        .iter()
        .map(|p| {
            json!({ "identity": p.identity, "role": p.role, "replica": p.replica, "leafRoot": p.leaf_root, "leafNotAfter": p.leaf_not_after, "trusts": p.trusts })
        })
        .collect();
    let unreported = proxies.iter().filter(|p| p.leaf_root.is_empty()).count();
    json_reply(
        StatusCode::OK,
        &json!({ "trustDomain": cp.options.trust_domain.to_string(), "roots": roots, "proxies": listed, "unreported": unreported }),
    )
}
