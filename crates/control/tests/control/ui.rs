//! The dashboard's door: a one-time sign-in code becomes a session cookie; what the cookie may
//! do (read; change things only with the session's CSRF token and from the dashboard's own
//! origin); a confirmation for a resource that changed meanwhile; the live graph stream.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use meshgate_testkit::{Client, Reply};

use crate::harness::{Cp, ports, tmp};

async fn send(cp: &Cp, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    Client::h1().send(cp.running.http, method, "127.0.0.1", path, headers, Bytes::from(body.to_string())).await.unwrap()
}

/// Signs in with a fresh code: the session cookie (`name=value`) and its CSRF token.
async fn sign_in(cp: &Cp) -> (String, String) {
    let (status, v) = cp.call(Method::POST, "/api/v1/ui/login-codes", "").await;
    assert_eq!(status, 200, "{v}");
    let path = v["path"].as_str().unwrap().to_string();
    let r = send(cp, Method::GET, &path, &[], "").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location").as_deref(), Some("/"));
    let set = r.header("set-cookie").unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let s = send(cp, Method::GET, "/api/v1/ui/session", &[("cookie", &cookie)], "").await;
    assert_eq!(s.status, 200, "{}", s.text());
    let csrf = serde_json::from_slice::<serde_json::Value>(&s.body).unwrap()["csrf"].as_str().unwrap().to_string();
    // The code is spent.
    assert_eq!(send(cp, Method::GET, &path, &[], "").await.status, 401);
    (cookie, csrf)
}

const ROUTE: &str = r#"{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{"name":"r","namespace":"shop"},"spec":{"parentRefs":[{"group":"","kind":"Service","name":"inventory","port":8080}],"rules":[{"backendRefs":[{"name":"v1","port":8080,"weight":99},{"name":"v2","port":8080,"weight":1}]}]}}"#;

#[tokio::test]
async fn sign_in_session_csrf_and_conflicts() {
    let dir = tmp();
    let (g, h) = ports();
    let cp =
        Cp::start(&format!("dir:{}", dir.path().join("store").display()), &dir.path().join("state"), g, h, "a").await;
    // Without a session: the sign-in page, and the API refuses.
    let page = send(&cp, Method::GET, "/", &[], "").await;
    assert_eq!(page.status, 401);
    assert!(page.text().contains("meshgate dashboard"), "{}", page.text());
    assert_eq!(send(&cp, Method::GET, "/api/v1/resources", &[], "").await.status, 401);
    assert_eq!(
        send(&cp, Method::GET, "/api/v1/resources", &[("cookie", "meshgate_session=forged")], "").await.status,
        401
    );
    assert_eq!(send(&cp, Method::GET, "/login?code=0123", &[], "").await.status, 401);

    let (cookie, csrf) = sign_in(&cp).await;
    let page = send(&cp, Method::GET, "/", &[("cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/ui/app.js"));
    assert!(page.header("content-security-policy").unwrap().contains("frame-ancestors 'none'"));
    assert_eq!(send(&cp, Method::GET, "/api/v1/resources", &[("cookie", &cookie)], "").await.status, 200);
    // A session cannot mint sign-in codes: only the admin token can.
    let (csrf_h, origin) = (("x-csrf-token", csrf.as_str()), ("origin", "http://127.0.0.1"));
    let code = send(&cp, Method::POST, "/api/v1/ui/login-codes", &[("cookie", &cookie), csrf_h], "").await;
    assert_eq!(code.status, 403, "{}", code.text());

    // Changes with the cookie: refused without the CSRF token, with a wrong one, from another
    // origin; applied with the token from the dashboard's own origin.
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("cookie", &cookie)], "needs its X-CSRF-Token"),
        (&[("cookie", &cookie), ("x-csrf-token", "nope")], "wrong X-CSRF-Token"),
        (&[("cookie", &cookie), csrf_h, ("origin", "http://evil.example")], "Origin http://evil.example"),
    ];
    for (headers, why) in cases {
        let r = send(&cp, Method::POST, "/api/v1/apply", headers, ROUTE).await;
        assert_eq!(r.status, 403, "{why}: {}", r.text());
        assert!(r.text().contains(why), "{}", r.text());
    }
    let (status, _) = cp.call(Method::GET, "/api/v1/resources/HTTPRoute/shop/r", "").await;
    assert_eq!(status, 404, "nothing was applied");
    let r = send(&cp, Method::POST, "/api/v1/apply", &[("cookie", &cookie), csrf_h, origin], ROUTE).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A confirmation for what was read at generation 1, after someone else moved it to 2.
    cp.apply(&ROUTE.replace("\"weight\":99", "\"weight\":90").replace("\"weight\":1}", "\"weight\":10}")).await;
    let guarded = [("cookie", cookie.as_str()), csrf_h, ("x-meshgate-if-generation", "1")];
    let mine = ROUTE.replace("\"weight\":99", "\"weight\":50").replace("\"weight\":1}", "\"weight\":50}");
    let r = send(&cp, Method::POST, "/api/v1/apply", &guarded, &mine).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("changed since it was read (generation 1; it is at generation 2)"), "{}", r.text());
    let (_, v) = cp.call(Method::GET, "/api/v1/resources/HTTPRoute/shop/r", "").await;
    assert_eq!(v["spec"]["rules"][0]["backendRefs"][0]["weight"], 90, "nothing applied: {v}");
    let fresh = [("cookie", cookie.as_str()), csrf_h, ("x-meshgate-if-generation", "2")];
    assert_eq!(send(&cp, Method::POST, "/api/v1/apply", &fresh, &mine).await.status, 200);
    let (_, v) = cp.call(Method::GET, "/api/v1/resources/HTTPRoute/shop/r", "").await;
    assert_eq!(v["spec"]["rules"][0]["backendRefs"][0]["weight"], 50);
}

#[tokio::test]
async fn the_live_graph_streams_as_server_sent_events() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tmp();
    let (g, h) = ports();
    let cp =
        Cp::start(&format!("dir:{}", dir.path().join("store").display()), &dir.path().join("state"), g, h, "a").await;
    let (cookie, _) = sign_in(&cp).await;
    let mut s = tokio::net::TcpStream::connect(cp.running.http).await.unwrap();
    let req = format!("GET /api/v1/ui/events?window=30s HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Two events, a second apart.
    while String::from_utf8_lossy(&got).matches("event: graph").count() < 2 {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await.expect("two events within 5 s").unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200") && text.contains("content-type: text/event-stream"), "{text}");
    assert!(text.contains("data: {") && text.contains("\"window\":\"30s\""), "{text}");
    // Without a session, no stream.
    let r = send(&cp, Method::GET, "/api/v1/ui/events", &[], "").await;
    assert_ne!(r.status, 200);
}
