//! The connection layer every role uses: accepting, detecting what a connection carries (TLS
//! with its SNI and ALPN, HTTP/1, HTTP/2, a PROXY header, or opaque bytes), TLS accept with a
//! configuration chosen by SNI, serving HTTP on a connection, relaying opaque TCP, and the
//! downstream timeouts.

pub(crate) mod accept;
pub mod detect;
pub mod serve;
pub(crate) mod tcp;
pub mod timeouts;
pub(crate) mod tls;

pub use serve::ServerSettings;
