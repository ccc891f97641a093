//! TLS handshakes by side and outcome, for metrics (`meshgate_tls_handshakes_total`): process
//! counters, a fixed set of reasons, one atomic add per handshake.

use std::sync::atomic::{AtomicU64, Ordering};

/// Which side of the handshake this proxy was.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// It accepted (gateway HTTPS, inbound mTLS).
    Server,
    /// It dialled (mTLS to a meshed endpoint, BackendTLSPolicy).
    Client,
}

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Completed.
    Ok,
    /// Did not complete in time.
    Timeout,
    /// The peer's certificate was refused (untrusted, expired, wrong name or identity).
    BadCertificate,
    /// The client presented no certificate where one is required.
    NoCertificate,
    /// No certificate serves the name the client asked for.
    UnknownServerName,
    /// The peer sent an alert (it refused ours, or has no protocol in common).
    AlertReceived,
    /// No protocol version, cipher suite or ALPN in common.
    Incompatible,
    /// Not TLS, or malformed.
    Protocol,
    /// The connection broke.
    Io,
}

const OUTCOMES: [(Outcome, &str); 9] = [
    (Outcome::Ok, "ok"),
    (Outcome::Timeout, "timeout"),
    (Outcome::BadCertificate, "bad_certificate"),
    (Outcome::NoCertificate, "no_certificate"),
    (Outcome::UnknownServerName, "unknown_server_name"),
    (Outcome::AlertReceived, "alert_received"),
    (Outcome::Incompatible, "incompatible"),
    (Outcome::Protocol, "protocol_error"),
    (Outcome::Io, "io_error"),
];

static COUNTS: [[AtomicU64; 9]; 2] = [const { [const { AtomicU64::new(0) }; 9] }; 2];

impl Outcome {
    /// The outcome a handshake's I/O error says.
    pub fn of_io(e: &std::io::Error) -> Self {
        use tokio_rustls::rustls::Error as E;
        match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
            Some(E::InvalidCertificate(_)) => Outcome::BadCertificate,
            Some(E::NoCertificatesPresented) => Outcome::NoCertificate,
            Some(E::AlertReceived(_)) => Outcome::AlertReceived,
            Some(E::PeerIncompatible(_) | E::NoApplicationProtocol) => Outcome::Incompatible,
            Some(_) => Outcome::Protocol,
            None if e.kind() == std::io::ErrorKind::InvalidData => Outcome::Protocol,
            None => Outcome::Io,
        }
    }
}

/// Counts a handshake.
pub fn count(side: Side, outcome: Outcome) {
    let i = OUTCOMES.iter().position(|(o, _)| *o == outcome).unwrap_or(OUTCOMES.len() - 1);
    COUNTS[side as usize][i].fetch_add(1, Ordering::Relaxed);
}

/// Appends the counters' Prometheus text to `out`.
pub fn render(out: &mut String) {
    use std::fmt::Write as _;
    super::metrics::help(out, "meshgate_tls_handshakes_total", "counter", "TLS handshakes by side and outcome.");
    for (side, name) in [(Side::Server, "server"), (Side::Client, "client")] {
        for (i, (_, outcome)) in OUTCOMES.iter().enumerate() {
            let n = COUNTS[side as usize][i].load(Ordering::Relaxed);
            let _ = writeln!(out, "meshgate_tls_handshakes_total{{side=\"{name}\",outcome=\"{outcome}\"}} {n}");
        }
    }
}
