//! The connection layer every role uses: accepting, serving HTTP on a connection, and the
//! downstream timeouts.

pub(crate) mod accept;
pub mod serve;
pub mod timeouts;

pub use serve::ServerSettings;
