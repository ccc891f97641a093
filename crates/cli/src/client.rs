//! The operator commands that talk to a control plane's HTTP API: apply, get, delete,
//! proxy-status, analyze, token create, ca rotate.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where the API is and how to authenticate.
pub(crate) struct Api {
    pub(crate) server: String,
    pub(crate) token: String,
}

impl Api {
    /// From flags, `MESHGATE_TOKEN`, or the token file the control plane wrote.
    pub(crate) fn new(server: &str, token: Option<String>, state_dir: &Path) -> anyhow::Result<Self> {
        let token = match token.or_else(|| std::env::var("MESHGATE_TOKEN").ok()) {
            Some(t) => t,
            None => {
                let path = meshgate_control::run::token_path(state_dir);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no --token given and cannot read {} (is a control plane running here?)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let server = server.trim_end_matches('/').trim_start_matches("http://").to_string();
        Ok(Api { server, token })
    }

    /// A one-time join token for `namespace/service_account`: the API's whole answer, whose
    /// `token` is a string.
    pub(crate) async fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        ttl_seconds: u64,
        source: &str,
    ) -> anyhow::Result<Value> {
        let body =
            serde_json::json!({ "namespace": namespace, "serviceAccount": service_account, "ttlSeconds": ttl_seconds });
        let (status, v) =
            self.call(Method::POST, "/api/v1/tokens", Some((Bytes::from(body.to_string()), source))).await?;
        if !status.is_success() {
            bail!("{}", error_text(&v));
        }
        if !v["token"].is_string() {
            bail!("the control plane returned no token");
        }
        Ok(v)
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let stream = tokio::net::TcpStream::connect(&self.server)
            .await
            .with_context(|| format!("cannot reach the control plane at http://{} (--server)", self.server))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.server)
            .header("authorization", format!("Bearer {}", self.token));
        if let Some((_, source)) = &body {
            req = req.header("x-meshgate-source", *source);
        }
        let req = req.body(Full::new(body.map(|b| b.0).unwrap_or_default()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }
}

/// What an API error reply says: its `errors` (apply) or its `error`.
pub(crate) fn error_text(v: &Value) -> String {
    let errors: Vec<&str> =
        v.get("errors").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    if !errors.is_empty() {
        return errors.join("; ");
    }
    v.get("error").and_then(Value::as_str).map_or_else(|| v.to_string(), str::to_string)
}

pub(crate) async fn apply(api: &Api, paths: &[PathBuf]) -> anyhow::Result<bool> {
    let mut files = Vec::new();
    for p in paths {
        meshgate_api::collect_files(p, &mut files).with_context(|| format!("cannot read {}", p.display()))?;
    }
    let mut ok = true;
    for f in files {
        let text = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let source = f.display().to_string();
        let (status, v) = api.call(Method::POST, "/api/v1/apply", Some((Bytes::from(text), &source))).await?;
        for r in v.get("results").and_then(Value::as_array).into_iter().flatten() {
            out!("{} {}", r["object"].as_str().unwrap_or("?"), r["action"].as_str().unwrap_or("?"));
        }
        for e in v.get("errors").and_then(Value::as_array).into_iter().flatten() {
            out!("error: {}", e.as_str().unwrap_or("?"));
            ok = false;
        }
        if !status.is_success() && v.get("errors").is_none() {
            out!("error: {}", error_text(&v));
            ok = false;
        }
    }
    Ok(ok)
}

fn render(v: &Value, output: &str) -> anyhow::Result<String> {
    Ok(match output {
        "json" => serde_json::to_string_pretty(v)?,
        _ => serde_saphyr::to_string(v).map_err(|e| anyhow::anyhow!("{e}"))?,
    })
}

/// The problems among `item`'s status conditions: meshgate's own (`status.meshgate`, boolean
/// status) and those of a Gateway API status (`status.conditions`, per listener and per parent,
/// "True"/"False"), named by where they are.
fn conditions_summary(item: &Value) -> String {
    let status = &item["status"];
    fn add<'a>(all: &mut Vec<(String, &'a Value)>, at: String, conds: &'a Value) {
        for c in conds.as_array().into_iter().flatten() {
            all.push((at.clone(), c));
        }
    }
    let mut all: Vec<(String, &Value)> = Vec::new();
    add(&mut all, String::new(), &status["meshgate"]["conditions"]);
    add(&mut all, String::new(), &status["conditions"]);
    for l in status["listeners"].as_array().into_iter().flatten() {
        add(&mut all, format!("listener {}: ", l["name"].as_str().unwrap_or("?")), &l["conditions"]);
    }
    for p in status["parents"].as_array().into_iter().flatten() {
        let r = &p["parentRef"];
        let section = r["sectionName"].as_str().map_or(String::new(), |s| format!("/{s}"));
        add(&mut all, format!("parent {}{section}: ", r["name"].as_str().unwrap_or("?")), &p["conditions"]);
    }
    let problems: Vec<String> = all
        .iter()
        .filter(|(_, c)| {
            let ok = c["status"].as_bool().unwrap_or_else(|| c["status"] != "False");
            if c["type"] == "Conflicted" { c["status"] == true || c["status"] == "True" } else { !ok }
        })
        .map(|(at, c)| {
            let status = c["status"]
                .as_bool()
                .map_or_else(|| c["status"].as_str().unwrap_or("?").to_string(), |b| b.to_string());
            format!("{at}{}={status} ({})", c["type"].as_str().unwrap_or(""), c["reason"].as_str().unwrap_or(""))
        })
        .fold(Vec::new(), |mut seen, p| {
            if !seen.contains(&p) {
                seen.push(p);
            }
            seen
        });
    if problems.is_empty() { if all.is_empty() { "-".into() } else { "OK".into() } } else { problems.join(", ") }
}

pub(crate) async fn get(
    api: &Api,
    kind: &str,
    name: Option<&str>,
    ns: Option<&str>,
    output: Option<&str>,
) -> anyhow::Result<bool> {
    match name {
        Some(name) => {
            let path = format!("/api/v1/resources/{kind}/{}/{name}", ns.unwrap_or("default"));
            let (status, v) = api.call(Method::GET, &path, None).await?;
            if !status.is_success() {
                out!("error: {}", error_text(&v));
                return Ok(false);
            }
            put!("{}", render(&v, output.unwrap_or("yaml"))?);
            Ok(true)
        }
        None => {
            let mut path = format!("/api/v1/resources?kind={kind}");
            if let Some(ns) = ns {
                path.push_str(&format!("&namespace={ns}"));
            }
            let (status, v) = api.call(Method::GET, &path, None).await?;
            if !status.is_success() {
                out!("error: {}", error_text(&v));
                return Ok(false);
            }
            let items = v["items"].as_array().cloned().unwrap_or_default();
            match output {
                Some(o) => put!("{}", render(&Value::Array(items), o)?),
                None => {
                    out!("{:<20} {:<32} STATUS", "NAMESPACE", "NAME");
                    for i in &items {
                        out!(
                            "{:<20} {:<32} {}",
                            i["metadata"]["namespace"].as_str().unwrap_or("-"),
                            i["metadata"]["name"].as_str().unwrap_or("?"),
                            conditions_summary(i)
                        );
                    }
                }
            }
            for e in v["invalid"].as_array().into_iter().flatten() {
                out!("invalid: {}", e.as_str().unwrap_or("?"));
            }
            Ok(true)
        }
    }
}

pub(crate) async fn delete(api: &Api, kind: &str, name: &str, ns: Option<&str>) -> anyhow::Result<bool> {
    let path = format!("/api/v1/resources/{kind}/{}/{name}", ns.unwrap_or("default"));
    let (status, v) = api.call(Method::DELETE, &path, None).await?;
    if status.is_success() {
        out!("{} deleted", v["deleted"].as_str().unwrap_or(name));
        Ok(true)
    } else {
        out!("error: {}", error_text(&v));
        Ok(false)
    }
}

/// A one-time sign-in URL for the dashboard (the admin token stays here; the browser gets a
/// session cookie for the code).
pub(crate) async fn dashboard_url(api: &Api) -> anyhow::Result<String> {
    let (status, v) = api.call(Method::POST, "/api/v1/ui/login-codes", None).await?;
    if !status.is_success() {
        bail!("{}", error_text(&v));
    }
    let path = v["path"].as_str().context("the control plane returned no sign-in path")?;
    Ok(format!("http://{}{path}", api.server))
}

/// Prints a new dashboard sign-in URL.
pub(crate) async fn dashboard(api: &Api) -> anyhow::Result<bool> {
    let url = dashboard_url(api).await?;
    out!("{url}");
    out!("(one use, within 10 minutes; the browser keeps a session for 12 hours)");
    Ok(true)
}

pub(crate) async fn proxy_status(api: &Api) -> anyhow::Result<bool> {
    let (status, v) = api.call(Method::GET, "/api/v1/proxies", None).await?;
    if !status.is_success() {
        bail!("{}", error_text(&v));
    }
    out!("control plane version {}", v["version"]);
    if let Some(p) = v["partial"].as_str() {
        out!("warning: {p}; this replica's proxies only");
    }
    out!(
        "{:<46} {:<22} {:<8} {:<8} {:<6} {:<6} {:<10} REASON",
        "PROXY",
        "WORKLOAD",
        "ROLE",
        "STATUS",
        "SENT",
        "ACKED",
        "REPLICA"
    );
    let mut proxies: Vec<&Value> = v["proxies"].as_array().into_iter().flatten().collect();
    proxies.sort_by_key(|p| (p["identity"].as_str().unwrap_or(""), p["workload"].as_str().unwrap_or("")));
    for p in proxies {
        let workload = p["workload"].as_str().filter(|w| !w.is_empty()).unwrap_or("-");
        out!(
            "{:<46} {:<22} {:<8} {:<8} {:<6} {:<6} {:<10} {}",
            p["identity"].as_str().unwrap_or("?"),
            workload,
            p["role"].as_str().unwrap_or("?"),
            p["status"].as_str().unwrap_or("?"),
            p["sent"].to_string(),
            p["acked"].to_string(),
            p["replica"].as_str().unwrap_or("?"),
            p["nack"].as_str().unwrap_or("")
        );
    }
    Ok(true)
}

pub(crate) async fn analyze(api: &Api) -> anyhow::Result<bool> {
    let (status, v) = api.call(Method::GET, "/api/v1/analyze", None).await?;
    if !status.is_success() {
        bail!("{}", error_text(&v));
    }
    let findings = v["findings"].as_array().cloned().unwrap_or_default();
    for f in &findings {
        out!(
            "{} [{}] {}: {}",
            f["severity"].as_str().unwrap_or("?"),
            f["source"].as_str().unwrap_or("?"),
            f["object"].as_str().unwrap_or("?"),
            f["message"].as_str().unwrap_or("?")
        );
    }
    if findings.is_empty() {
        out!("no problems found");
    }
    Ok(!findings.iter().any(|f| f["severity"] == "Error"))
}

pub(crate) async fn token_create(
    api: &Api,
    namespace: &str,
    service_account: &str,
    ttl_seconds: u64,
) -> anyhow::Result<bool> {
    let v = match api.create_token(namespace, service_account, ttl_seconds, "cli").await {
        Ok(v) => v,
        Err(e) => {
            out!("error: {e}");
            return Ok(false);
        }
    };
    out!("{}", v["token"].as_str().unwrap_or(""));
    eprintln!("one-time join token for {} (valid {} s)", v["identity"].as_str().unwrap_or("?"), v["expiresInSeconds"]);
    Ok(true)
}

pub(crate) async fn ca_rotate(api: &Api, step: &str) -> anyhow::Result<bool> {
    let (status, v) = api.call(Method::POST, &format!("/api/v1/ca/{step}"), Some((Bytes::new(), "cli"))).await?;
    if !status.is_success() {
        out!("error: {}", error_text(&v));
        return Ok(false);
    }
    out!("{step}: the trust bundle now holds {} root(s)", v["roots"]);
    match step {
        "add-root" => out!(
            "next: once `meshgate ca status` shows every proxy trusting the new root (seconds), `meshgate ca rotate use-root`"
        ),
        "use-root" => out!(
            "next: proxies renew their leaves from the new root now; when `meshgate ca status` shows none left on the old root, `meshgate ca rotate withdraw-old-roots`"
        ),
        _ => {}
    }
    Ok(true)
}

pub(crate) async fn ca_status(api: &Api) -> anyhow::Result<bool> {
    let (status, v) = api.call(Method::GET, "/api/v1/ca", None).await?;
    if !status.is_success() {
        out!("error: {}", error_text(&v));
        return Ok(false);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    out!("trust domain {}", v["trustDomain"].as_str().unwrap_or("?"));
    let total = v["proxies"].as_array().map_or(0, Vec::len);
    out!("{total} connected proxy(ies); PROXIES: leaves from the root; TRUSTED BY: proxies whose bundle holds it");
    out!("{:<18} {:<9} {:>7} {:>10} {:<22} SUBJECT", "ROOT (SHA-256)", "STATE", "PROXIES", "TRUSTED BY", "EXPIRES");
    for r in v["roots"].as_array().into_iter().flatten() {
        let fp = r["fingerprint"].as_str().unwrap_or("");
        let state = if r["signing"] == true {
            "signing"
        } else if r["pending"] == true {
            "pending"
        } else {
            "trusted"
        };
        let not_after = r["notAfter"].as_i64().unwrap_or(0);
        let expires = format!("{} ({} days)", unix_date(not_after), (not_after - now) / 86_400);
        out!(
            "{:<18} {:<9} {:>7} {:>10} {:<22} {}",
            fp.get(..16).unwrap_or(fp),
            state,
            r["proxies"].as_u64().unwrap_or(0),
            r["trustedBy"].as_u64().unwrap_or(0),
            expires,
            r["subject"].as_str().unwrap_or("")
        );
    }
    let unreported = v["unreported"].as_u64().unwrap_or(0);
    if unreported > 0 {
        out!("{unreported} connected proxy(ies) have not reported which root their leaf is from");
    }
    Ok(true)
}

/// `YYYY-MM-DD` of Unix seconds (UTC).
fn unix_date(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    meshgate_proxy::telemetry::access::rfc3339(t)[..10].to_string()
}

pub(crate) async fn certs(admin: &str) -> anyhow::Result<bool> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot reach the proxy admin endpoint at {admin} (--admin)"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder().uri("/certs").header("host", admin).body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).context("not a /certs answer")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let when = |t: &Value| {
        let t = t.as_u64().unwrap_or(0);
        if t >= now { format!("in {}s", t - now) } else { format!("{}s ago", now - t) }
    };
    let Some(svid) = v.get("svid").filter(|s| !s.is_null()) else {
        out!("this proxy has no mTLS identity");
        return Ok(true);
    };
    out!("identity:      {}", svid["spiffeId"].as_str().unwrap_or("?"));
    out!("expires:       {}", when(&svid["notAfter"]));
    out!("next rotation: {}", when(&svid["nextRotation"]));
    for (i, c) in svid["chain"].as_array().into_iter().flatten().enumerate() {
        out!(
            "chain[{i}]: serial {} issuer {:?} valid until {}",
            c["serial"].as_str().unwrap_or("?"),
            c["issuer"].as_str().unwrap_or("?"),
            when(&c["notAfter"])
        );
    }
    for (i, r) in v["bundle"].as_array().into_iter().flatten().enumerate() {
        out!("trust bundle[{i}]: {} (valid until {})", r["subject"].as_str().unwrap_or("?"), when(&r["notAfter"]));
    }
    Ok(true)
}
