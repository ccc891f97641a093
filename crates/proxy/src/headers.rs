//! Header handling every proxied request and response goes through: hop-by-hop removal,
//! X-Forwarded-*, and request ids.

use std::cell::RefCell;
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// W3C Trace Context's `traceparent`.
pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a header is hop-by-hop by itself (without looking at `Connection`); `TE` too,
/// which is stripped unless it is `trailers`.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::TE
}

/// Removes hop-by-hop headers, including those named by `Connection`. `TE: trailers` is kept
/// (gRPC needs it end to end). One pass over the headers when there is nothing to remove,
/// which is the common case.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| *n != header::TE)
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    if let Some(te) = headers.get(header::TE) {
        let trailers = te.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Sets X-Forwarded-For (appends the client), X-Forwarded-Proto (this hop's scheme: the
/// gateway is the edge, a client's claim is not trusted) and X-Forwarded-Host (the original
/// Host, when not already set by an earlier proxy).
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, scheme: &'static str, host: Option<&HeaderValue>) {
    let mut buf = [0u8; 64];
    let ip = format_ip(client, &mut buf[..]);
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Occupied(mut e) => {
            let prev = e.get().as_bytes();
            let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(ip);
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                e.insert(v);
            }
        }
        header::Entry::Vacant(e) => {
            if let Ok(v) = HeaderValue::from_bytes(ip) {
                e.insert(v);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if let Some(host) = host
        && let header::Entry::Vacant(e) = headers.entry(&X_FORWARDED_HOST)
    {
        e.insert(host.clone());
    }
}

/// Writes an IP address into `buf` without the formatting machinery; returns the bytes.
pub(crate) fn format_ip(ip: IpAddr, buf: &mut [u8]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + (octet / 10) % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            &buf[..n]
        }
        IpAddr::V6(_) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            let len = usize::try_from(cursor.position()).unwrap_or(0);
            &buf[..len]
        }
    }
}

/// Returns the request id, generating a random (v4 UUID) one when the client sent none.
///
/// Marked never to be indexed by HPACK, the client's as well as ours: a value unique to each
/// request, inserted into an HTTP/2 connection's header table (between sidecars all requests
/// share one), would only push out the headers that repeat (`:authority`, `user-agent`, ...),
/// which would then be sent in full again.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get_mut(&X_REQUEST_ID).filter(|v| !v.is_empty()) {
        v.set_sensitive(true);
        return v.clone();
    }
    let id = uuid_v4();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// Lets HPACK index the names of the never-indexed headers unique to each request
/// (`x-request-id`, `traceparent`), once: their values stay never indexed, but a name absent
/// from the connection's header table is sent as a literal each time (Huffman-coded by the
/// sender, decoded, checked and allocated by the receiver). HPACK has no way to index a name
/// alone, so this request's values are indexed with them: one entry each in a table of 4 KiB.
/// For the first request on an HTTP/2 connection and every [`REINDEX_EVERY`]th after, in case
/// other headers have pushed the entries out meanwhile.
pub(crate) fn index_unique_names(headers: &mut HeaderMap) {
    for name in [&X_REQUEST_ID, &TRACEPARENT] {
        if let Some(v) = headers.get_mut(name) {
            v.set_sensitive(false);
        }
    }
}

/// How often (in requests on one HTTP/2 connection) [`index_unique_names`] runs.
pub(crate) const REINDEX_EVERY: u32 = 1024;

fn uuid_v4() -> HeaderValue {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[usize::from(b >> 4)];
        out[j + 1] = HEX[usize::from(b & 0xf)];
        j += 2;
    }
    unique_value(&out).unwrap_or_else(|| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

/// Size of the chunks [`unique_value`] cuts values from.
const CHUNK: usize = 4096;

thread_local! {
    /// This thread's chunk: what is left of it after the values cut so far.
    static CHUNK_LEFT: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A never-indexed header value unique to one request (an `x-request-id` or `traceparent` this
/// proxy writes), cut from a 4 KiB chunk of this thread's instead of an allocation of its own:
/// two allocations per ~45 requests (the chunk and its shared owner) where there were one or
/// two per value. Each value is a reference-counted slice of its chunk, so a request head
/// copied for a possible retry still clones it by a count; a chunk is freed with the last value
/// cut from it (a long-lived request keeps at most one chunk alive). `None` for bytes a header
/// value may not hold.
pub(crate) fn unique_value(v: &[u8]) -> Option<HeaderValue> {
    let cut = CHUNK_LEFT
        .try_with(|left| {
            let mut left = left.try_borrow_mut().ok()?;
            if left.capacity() < v.len() {
                *left = BytesMut::with_capacity(CHUNK.max(v.len()));
            }
            left.extend_from_slice(v);
            Some(left.split().freeze())
        })
        .ok()
        .flatten();
    let mut value = HeaderValue::from_maybe_shared(cut.unwrap_or_else(|| Bytes::copy_from_slice(v))).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_tokens() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret, te"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let host = HeaderValue::from_static("shop.example.com:8080");
        set_forwarded(&mut h, "10.1.2.3".parse().unwrap(), "http", Some(&host));
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.7, 10.1.2.3");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "shop.example.com:8080");
    }

    #[test]
    fn ips_format_like_display() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.30.255", "192.168.100.9", "::1", "2001:db8::7"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(format_ip(ip, &mut buf), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn request_ids_are_uuids_and_kept() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_eq!(ensure_request_id(&mut h), id);
        assert!(h[&X_REQUEST_ID].is_sensitive(), "never indexed by HPACK");
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("from-the-client"));
        assert_eq!(ensure_request_id(&mut h), "from-the-client");
        assert!(h[&X_REQUEST_ID].is_sensitive(), "the client's too");
    }

    /// The size of each HEADERS frame a real HTTP/2 client writes for three requests, each
    /// with its own request id and `traceparent` (never indexed), the first passed through
    /// `index_unique_names` when `index` is set.
    async fn header_block_sizes(index: bool) -> Vec<usize> {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let io = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for i in 0..3u8 {
            let mut req = http::Request::get("http://upstream.bench.svc/").body(Default::default()).unwrap();
            ensure_request_id(req.headers_mut());
            let mut tp = HeaderValue::from_str(&format!("00-{:032x}-{:016x}-00", 1000 + u128::from(i), 7)).unwrap();
            tp.set_sensitive(true);
            req.headers_mut().insert(TRACEPARENT.clone(), tp);
            if index && i == 0 {
                index_unique_names(req.headers_mut());
            }
            let send = sender.send_request(req);
            tokio::spawn(send);
            tokio::task::yield_now().await;
        }
        // The client preface, then frames: 9-byte headers (length, type, flags, stream).
        let mut preface = [0u8; 24];
        server.read_exact(&mut preface).await.unwrap();
        let mut sizes = Vec::new();
        while sizes.len() < 3 {
            let mut head = [0u8; 9];
            server.read_exact(&mut head).await.unwrap();
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            server.read_exact(&mut payload).await.unwrap();
            if head[3] == 0x1 {
                sizes.push(len);
            }
        }
        sizes
    }

    #[tokio::test]
    async fn unique_header_names_are_indexed_once_per_connection() {
        let plain = header_block_sizes(false).await;
        let indexed = header_block_sizes(true).await;
        // Later requests refer to the two names by index instead of spelling them out (both
        // Huffman-coded: 9 bytes for `x-request-id`, 9 for `traceparent`).
        assert!(indexed[1] + 14 <= plain[1], "second request: {indexed:?} vs {plain:?}");
        assert!(indexed[2] + 14 <= plain[2], "third request: {indexed:?} vs {plain:?}");
    }

    #[test]
    fn unique_values_are_cut_from_one_chunk_and_outlive_it() {
        // On a thread of its own: a fresh chunk.
        std::thread::spawn(|| {
            let at = |v: &HeaderValue| v.as_bytes().as_ptr() as usize;
            let first = unique_value(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
            let second = uuid_v4();
            assert!(first.is_sensitive() && second.is_sensitive());
            assert_eq!(at(&second), at(&first) + 55, "the next bytes of the same chunk");
            let mut kept = vec![first.clone(), second.clone()];
            // Past the chunk's end: a new chunk, the old values intact.
            let mut last = second.clone();
            let mut chunks = 1;
            for i in 0..200 {
                let v = unique_value(format!("value-{i:03}-{}", "x".repeat(40)).as_bytes()).unwrap();
                if at(&v) != at(&last) + last.len() {
                    chunks += 1;
                }
                last = v.clone();
                kept.push(v);
            }
            assert_eq!(chunks, 3, "200 values of 50 bytes after 91: three 4 KiB chunks");
            assert_eq!(kept[0], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
            assert_eq!(kept[1].len(), 36);
            for (i, v) in kept[2..].iter().enumerate() {
                assert_eq!(v.to_str().unwrap(), format!("value-{i:03}-{}", "x".repeat(40)));
            }
            // Bytes a header value may not hold are refused.
            assert!(unique_value(b"a\nb").is_none());
        })
        .join()
        .unwrap();
    }
}
