//! Access logs: one JSON line per request and per opaque TCP connection, written to standard
//! output by a thread of their own. The request path only hands a record over a bounded
//! channel; when the writer falls behind (a blocked pipe, a slow disk) lines are dropped and
//! counted, never waited for.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::metrics::Reporter;
use super::{ConnRecord, Protocol, RequestRecord, Role, Security};

/// Lines waiting for the writer, at most.
const QUEUE: usize = 8192;

enum Line {
    Request(Box<RequestRecord>),
    Connection(Box<ConnRecord>),
}

/// The access log of one proxy.
#[derive(Debug, Default)]
pub struct AccessLog {
    tx: OnceLock<SyncSender<Line>>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    queued: AtomicU64,
}

impl AccessLog {
    fn sender(&self) -> Option<&SyncSender<Line>> {
        if let Some(tx) = self.tx.get() {
            return Some(tx);
        }
        let (tx, rx) = sync_channel(QUEUE);
        let written = self.written.clone();
        let spawned = std::thread::Builder::new().name("access-log".into()).spawn(move || write_lines(rx, &written));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the access log writer: access logs are off");
            return None;
        }
        let _ = self.tx.set(tx);
        self.tx.get()
    }

    fn send(&self, line: Line) {
        let Some(tx) = self.sender() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match tx.try_send(line) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed).is_multiple_of(10_000) {
                    tracing::warn!("access log writer is behind (standard output blocked?): dropping lines");
                }
            }
        }
    }

    /// Logs a request (its record carries the request line).
    pub fn request(&self, r: &RequestRecord) {
        self.send(Line::Request(Box::new(r.clone())));
    }

    /// Logs a connection.
    pub fn connection(&self, c: &ConnRecord) {
        self.send(Line::Connection(Box::new(c.clone())));
    }

    /// Waits (up to `timeout`) until every line queued so far is written and flushed: before
    /// the process exits.
    pub fn flush(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.written.load(Ordering::Relaxed) < self.queued.load(Ordering::Relaxed)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

fn write_lines(rx: Receiver<Line>, written: &AtomicU64) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut line = String::with_capacity(1024);
    // Blocks for the first line, drains what queued behind it, then flushes: one write per
    // burst, and nothing lingers in the buffer while the proxy is quiet.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut burst = 0;
        while let Some(l) = next {
            line.clear();
            match l {
                Line::Request(r) => line.push_str(&request_json(&r).to_string()),
                Line::Connection(c) => line.push_str(&connection_json(&c).to_string()),
            }
            line.push('\n');
            if out.write_all(line.as_bytes()).is_err() {
                return;
            }
            burst += 1;
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
        written.fetch_add(burst, Ordering::Relaxed);
    }
}

/// A request as one JSON object: the access log's line, and what `tap` streams.
pub fn request_json(r: &RequestRecord) -> Value {
    let mut m = Map::new();
    m.insert("start_time".into(), rfc3339(r.start_time()).into());
    m.insert("kind".into(), "request".into());
    m.insert("reporter".into(), reporter(r.role).into());
    if let Some(d) = &r.details {
        m.insert("method".into(), d.method.as_str().into());
        m.insert("authority".into(), d.authority.as_str().into());
        m.insert("path".into(), d.path.as_str().into());
        m.insert("request_id".into(), d.request_id.clone().into());
        m.insert("trace_id".into(), d.trace_id.clone().into());
        m.insert("user_agent".into(), d.user_agent.clone().into());
    }
    m.insert(
        "protocol".into(),
        match (r.protocol, r.grpc) {
            (_, true) => "gRPC",
            (Protocol::Http1, false) => "HTTP/1.1",
            (Protocol::Http2, false) => "HTTP/2",
        }
        .into(),
    );
    m.insert("response_code".into(), r.status.into());
    m.insert("grpc_status".into(), r.grpc_status.into());
    m.insert("response_flags".into(), r.flags.to_string().into());
    m.insert("duration_ms".into(), ms(r.duration).into());
    m.insert("ttfb_ms".into(), ms(r.ttfb).into());
    m.insert("proxy_ms".into(), ms(r.proxy_time).into());
    m.insert("route".into(), r.route.as_ref().map(|(name, i)| format!("{name}#{i}")).into());
    m.insert("upstream_service".into(), r.backend.as_deref().into());
    m.insert("upstream_host".into(), r.endpoint.map(|e| e.to_string()).into());
    m.insert("attempts".into(), r.attempts.into());
    m.insert("bytes_received".into(), r.request_bytes.into());
    m.insert("bytes_sent".into(), r.response_bytes.into());
    m.insert("downstream_peer".into(), r.peer.to_string().into());
    m.insert("source_principal".into(), r.source.as_deref().into());
    m.insert("destination_principal".into(), r.destination.as_deref().into());
    m.insert("source_workload".into(), r.source_workload.as_deref().map(peer).into());
    m.insert("destination_workload".into(), r.destination_workload.as_deref().map(peer).into());
    m.insert("connection_security_policy".into(), Security::name(r.security).into());
    m.insert("authorization".into(), r.authz.as_deref().into());
    Value::Object(m)
}

/// A connection as one JSON object.
pub fn connection_json(c: &ConnRecord) -> Value {
    json!({
        "start_time": rfc3339(c.opened),
        "kind": if c.opaque { "tcp" } else { "connection" },
        "reporter": reporter(c.role),
        "duration_ms": ms(c.duration),
        "downstream_peer": c.peer.to_string(),
        "bytes_received": c.bytes_in,
        "bytes_sent": c.bytes_out,
        "close": format!("{:?}", c.close),
        "response_flags": c.flags.to_string(),
        "upstream_service": c.backend.as_deref(),
        "upstream_host": c.endpoint.map(|e| e.to_string()),
        "source_principal": c.source.as_deref().or(c.peer_identity.as_deref()),
        "destination_principal": c.destination.as_deref(),
        "source_workload": c.source_workload.as_deref().map(peer),
        "destination_workload": c.destination_workload.as_deref().map(peer),
        "connection_security_policy": Security::name(Some(c.security)),
        "plaintext_reason": match c.security {
            Security::Plaintext(why) => Some(format!("{why:?}")),
            _ => None,
        },
    })
}

fn peer(p: &meshgate_model::peer::Peer) -> String {
    format!("{}/{}", p.namespace, p.workload)
}

fn reporter(role: Role) -> &'static str {
    Reporter::of(role).as_str()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

pub use meshgate_model::time::rfc3339;

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_175_065_123);
        assert_eq!(rfc3339(t), "2026-12-02T01:31:05.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
