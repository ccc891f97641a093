//! The compiled configuration a proxy serves: listeners → routes → backends → endpoints,
//! built once per configuration change and read lock-free on every request.

mod compile;
pub mod host;
pub mod matching;
pub mod mesh;
pub mod policy;
pub mod resolve;
pub mod rule;
pub mod security;
mod status;
pub mod table;

pub use compile::{CONTROLLER_NAME, Compiled, DEFAULT_CLASS, GatewayConfig, compile_gateway};
pub use security::Downstream;
pub use status::{Condition, Severity};

/// A reference to a backend of [`GatewayConfig::backends`] by slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ServiceBackendRef {
    /// Index in `backends`.
    pub slot: usize,
}
