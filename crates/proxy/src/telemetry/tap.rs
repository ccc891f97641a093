//! `tap`: a live stream of this proxy's requests, for `meshgate tap` (as `linkerd viz tap`).
//! Records are offered to a bounded broadcast only while someone listens; a listener that
//! stops reading misses records (it is told how many), it never slows the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;

use super::RequestRecord;

/// Records waiting for the slowest listener, at most.
const BACKLOG: usize = 1024;

/// The tap of one proxy.
#[derive(Debug)]
pub struct Tap {
    tx: broadcast::Sender<Arc<RequestRecord>>,
    /// Listeners: read on every request, so an atomic (the channel's own count takes a lock).
    listeners: Arc<AtomicUsize>,
}

impl Default for Tap {
    fn default() -> Self {
        Tap { tx: broadcast::channel(BACKLOG).0, listeners: Arc::default() }
    }
}

/// Counts a listener until dropped.
#[derive(Debug)]
pub struct Listening(Arc<AtomicUsize>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tap {
    /// Whether anyone listens.
    pub fn active(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) > 0
    }

    /// Offers a record to the listeners.
    pub fn publish(&self, r: &RequestRecord) {
        if self.active() {
            let _ = self.tx.send(Arc::new(r.clone()));
        }
    }

    /// A new listener, counted until the guard is dropped.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<RequestRecord>>, Listening) {
        self.listeners.fetch_add(1, Ordering::Relaxed);
        (self.tx.subscribe(), Listening(self.listeners.clone()))
    }
}

/// Which requests a listener wants.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Paths starting with this.
    pub path: Option<String>,
    /// This method.
    pub method: Option<String>,
    /// This authority (host, without port).
    pub authority: Option<String>,
}

impl Filter {
    /// From a query string (`path=/x&method=GET&authority=h`).
    pub fn from_query(query: &str) -> Self {
        let mut f = Filter::default();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "path" if !v.is_empty() => f.path = Some(v),
                "method" if !v.is_empty() => f.method = Some(v.to_ascii_uppercase()),
                "authority" if !v.is_empty() => f.authority = Some(v),
                _ => {}
            }
        }
        f
    }

    /// Whether `r` passes.
    pub fn matches(&self, r: &RequestRecord) -> bool {
        let Some(d) = &r.details else { return false };
        self.path.as_ref().is_none_or(|p| d.path.starts_with(p.as_str()))
            && self.method.as_ref().is_none_or(|m| d.method.as_str() == m)
            && self.authority.as_ref().is_none_or(|a| d.authority.split(':').next() == Some(a.as_str()))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_filters() {
        let f = Filter::from_query("path=%2Fapi%2Fv1&method=get&x=y&authority=");
        assert_eq!(f.path.as_deref(), Some("/api/v1"));
        assert_eq!(f.method.as_deref(), Some("GET"));
        assert!(f.authority.is_none());
        assert_eq!(percent_decode("a%zz%4"), "a%zz%4");
    }
}
