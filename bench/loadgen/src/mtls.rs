//! The cost of mutual TLS between proxies, measured side by side with plaintext: new
//! connections per second (TCP connect, the mTLS handshake with both certificates verified
//! by the SPIFFE verifier and the peer's identity checked, one request, close) and
//! keep-alive request throughput over established connections. The server runs on a thread
//! of its own; both use meshgate's own TLS configuration (ECDSA P-256 SVIDs from the CA).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use meshgate_identity::TrustDomain;
use meshgate_proxy::identity::{LocalCa, bootstrap};
use meshgate_tls::{CertificateAuthority, MeshTls, PeerIdentity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = [0u8; 1024];
    let mut seen = Vec::with_capacity(64);
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        seen.extend_from_slice(&buf[..n]);
        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            seen.drain(..end + 4);
            if s.write_all(RESPONSE).await.is_err() {
                return;
            }
        }
    }
}

/// A server on its own thread: plaintext on one port, mTLS on another.
fn server(tls: Arc<MeshTls>) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let (Ok(plain), Ok(secure)) =
                (TcpListener::bind("127.0.0.1:0").await, TcpListener::bind("127.0.0.1:0").await)
            else {
                return;
            };
            let (Ok(pa), Ok(sa)) = (plain.local_addr(), secure.local_addr()) else { return };
            let _ = tx.send((pa, sa));
            tokio::spawn(async move {
                while let Ok((s, _)) = plain.accept().await {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(serve_conn(s));
                }
            });
            while let Ok((s, _)) = secure.accept().await {
                let _ = s.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
                tokio::spawn(async move {
                    if let Ok(s) = acceptor.accept(s).await
                        && PeerIdentity::from_connection(s.get_ref().1).is_some()
                    {
                        serve_conn(s).await;
                    }
                });
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(5)).context("bench server did not start")
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> anyhow::Result<()> {
    s.write_all(REQUEST).await?;
    let mut got = [0u8; RESPONSE.len()];
    s.read_exact(&mut got).await?;
    Ok(())
}

async fn connect_tls(
    addr: SocketAddr,
    client: &Arc<MeshTls>,
    expected: &meshgate_identity::SpiffeId,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(client.material().client_tcp.clone());
    // Dialled by address, as proxies dial endpoints: no SNI is sent.
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = connector.connect(name, tcp).await?;
    let peer = PeerIdentity::from_connection(tls.get_ref().1).context("no peer identity")?;
    anyhow::ensure!(&peer.id == expected, "unexpected peer {}", peer.id);
    Ok(tls)
}

/// Runs `conns` loops of `one` for `secs`; returns operations per second.
async fn closed_loop<F, Fut>(conns: usize, secs: u64, one: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let local = tokio::task::LocalSet::new();
    let started = Instant::now();
    local
        .run_until(async {
            let mut tasks = Vec::new();
            for _ in 0..conns {
                let (stop, done, one) = (stop.clone(), done.clone(), one.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match one().await {
                            Ok(n) => done.fetch_add(n, Ordering::Relaxed),
                            Err(e) => return Err(e),
                        };
                    }
                    Ok(())
                }));
            }
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.await??;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await?;
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

pub(crate) async fn run(secs: u64, conns: usize) -> anyhow::Result<()> {
    let td = TrustDomain::new("cluster.local").map_err(|e| anyhow::anyhow!("{e}"))?;
    let ca = CertificateAuthority::self_signed(td.clone(), Duration::from_secs(3600))?;
    let ca = LocalCa { ca: std::sync::Mutex::new(ca), ttl: Duration::from_secs(3600) };
    let server_id = td.workload_id("bench", "server").map_err(|e| anyhow::anyhow!("{e}"))?;
    let client_id = td.workload_id("bench", "client").map_err(|e| anyhow::anyhow!("{e}"))?;
    let server_tls = bootstrap(&ca, &server_id).await?;
    let client_tls = bootstrap(&ca, &client_id).await?;
    let (plain, secure) = server(server_tls)?;

    // New connections: connect, (handshake,) one request, close.
    let new_plain = closed_loop(conns, secs, move || async move {
        let mut s = TcpStream::connect(plain).await?;
        s.set_nodelay(true)?;
        request(&mut s).await?;
        Ok(1)
    })
    .await?;
    let (c, id) = (client_tls.clone(), server_id.clone());
    let new_tls = closed_loop(conns, secs, move || {
        let (c, id) = (c.clone(), id.clone());
        async move {
            let mut s = connect_tls(secure, &c, &id).await?;
            request(&mut s).await?;
            let _ = s.shutdown().await;
            Ok(1)
        }
    })
    .await?;

    // Keep-alive: each loop owns one connection and sends 100 requests on it per turn.
    let ka_plain = closed_loop(conns, secs, move || async move {
        thread_local! { static CONN: std::cell::RefCell<Vec<TcpStream>> = const { std::cell::RefCell::new(Vec::new()) }; }
        let mut s = match CONN.with(|c| c.borrow_mut().pop()) {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(plain).await?;
                s.set_nodelay(true)?;
                s
            }
        };
        for _ in 0..100 {
            request(&mut s).await?;
        }
        CONN.with(|c| c.borrow_mut().push(s));
        Ok(100)
    })
    .await?;
    let (c, id) = (client_tls.clone(), server_id.clone());
    let ka_tls = closed_loop(conns, secs, move || {
        let (c, id) = (c.clone(), id.clone());
        async move {
            thread_local! { static CONN: std::cell::RefCell<Vec<tokio_rustls::client::TlsStream<TcpStream>>> = const { std::cell::RefCell::new(Vec::new()) }; }
            let mut s = match CONN.with(|c| c.borrow_mut().pop()) {
                Some(s) => s,
                None => connect_tls(secure, &c, &id).await?,
            };
            for _ in 0..100 {
                request(&mut s).await?;
            }
            CONN.with(|c| c.borrow_mut().push(s));
            Ok(100)
        }
    })
    .await?;

    println!("mTLS vs plaintext, {conns} concurrent clients, {secs} s each, client and server on separate threads:");
    println!();
    println!("| measure | plaintext | mTLS (SPIFFE, ECDSA P-256) | mTLS / plaintext |");
    println!("|---|---|---|---|");
    println!(
        "| new connections per second (connect, handshake, 1 request, close) | {new_plain:.0} | {new_tls:.0} | {:.3} |",
        new_tls / new_plain
    );
    println!("| keep-alive requests per second | {ka_plain:.0} | {ka_tls:.0} | {:.3} |", ka_tls / ka_plain);
    Ok(())
}
