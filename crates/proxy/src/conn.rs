//! The connection layer every role uses: accepting, serving HTTP on a connection, relaying
//! opaque TCP, and the downstream timeouts.

pub(crate) mod accept;
pub mod serve;
pub(crate) mod tcp;
pub mod timeouts;

pub use serve::ServerSettings;
