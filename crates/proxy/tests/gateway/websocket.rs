//! WebSockets through the gateway, with a real client and server (tungstenite): an HTTP/1.1
//! upgrade passes through with frames both ways; an HTTP/2 client's extended CONNECT (RFC 8441)
//! is bridged to an HTTP/1.1 upgrade upstream; a server that refuses the upgrade is answered
//! as a response.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::harness::{Mesh, gateway, service_yaml};

/// A WebSocket echo server: each text message comes back as `echo: ...`; it records the path
/// and Host of each handshake.
async fn ws_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, resp: Response| {
                    let host = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
                    let _ = tx.send((req.uri().path().to_string(), host));
                    if req.uri().path() == "/refuse" {
                        let mut refused = tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(Some(
                            "not here".to_string(),
                        ));
                        *refused.status_mut() = http::StatusCode::FORBIDDEN;
                        return Err(refused);
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if ws.send(Message::text(format!("echo: {t}"))).await.is_err() => return,
                        Message::Text(_) => {}
                        Message::Binary(b) => {
                            let _ = ws.send(Message::Binary(b)).await;
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn lab() -> (Mesh, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
    let (addr, seen) = ws_server().await;
    let yaml = gateway("gw")
        + "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: ws, namespace: infra}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: chat, port: 8080}]\n"
        + &service_yaml("infra", "chat", addr, None);
    (Mesh::start_raw(&yaml).await, seen)
}

#[tokio::test]
async fn an_http1_websocket_passes_through_with_frames_both_ways() {
    let (m, mut seen) = lab().await;
    let url = format!("ws://{}/chat/room1", m.addr());
    let request = http::Request::get(url)
        .header("host", "chat.example.com")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", tokio_tungstenite::tungstenite::handshake::client::generate_key())
        .body(())
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(m.addr()).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(request, tcp).await.expect("the upgrade goes through");
    assert_eq!(resp.status(), 101);
    assert_eq!(seen.recv().await.unwrap(), ("/chat/room1".to_string(), "chat.example.com".to_string()));
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("echo: hello {i}")));
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
    // The gateway still serves ordinary requests afterwards.
    let r = meshgate_testkit::Client::h1().try_get(m.addr(), "chat.example.com", "/").await;
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test]
async fn a_refused_upgrade_is_answered_as_a_response() {
    let (m, _seen) = lab().await;
    let url = format!("ws://{}/refuse", m.addr());
    let tcp = tokio::net::TcpStream::connect(m.addr()).await.unwrap();
    let err = tokio_tungstenite::client_async(url, tcp).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected the server's 403, got {other}"),
    }
}

#[tokio::test]
async fn an_http2_extended_connect_is_bridged_to_an_http1_upgrade() {
    let (m, mut seen) = lab().await;
    let tcp = tokio::net::TcpStream::connect(m.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("http://chat.example.com/chat/h2")
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = sender.send_request(req).await.expect("the server accepts extended CONNECT");
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), ("/chat/h2".to_string(), "chat.example.com".to_string()));
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    for i in 0..10 {
        ws.send(Message::text(format!("over h2 {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("echo: over h2 {i}")));
    }
    ws.close(None).await.unwrap();
    // The HTTP/2 connection carries other streams meanwhile and after.
    let plain = http::Request::get("http://chat.example.com/").body(Empty::new()).unwrap();
    let r = sender.send_request(plain).await;
    assert!(r.is_ok(), "{r:?}");
}
