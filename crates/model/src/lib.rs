//! The compiled configuration a proxy serves: listeners → routes → backends → endpoints,
//! built once per configuration change and read lock-free on every request.
//!
//! Modules, each depending only on those listed before it: `status`, `host`, `matching`,
//! `policy`, `peer`, `rule`, `table`, `settings`; `resolve` (Services to endpoints), `security`
//! (inbound policy); `config` (the compiled types); `route` (HTTPRoute rules); `listeners`
//! and `attach` (the gateway compiler's two steps); `gateway` and `mesh` (the compilers);
//! `gwstatus` (Gateway API status from the gateway compiler's conditions).

mod attach;
pub mod certs;
pub mod config;
mod gateway;
mod grpc;
pub mod gwstatus;
pub mod host;
pub mod ingress;
pub mod l4;
pub mod listener_policy;
mod listeners;
pub mod matching;
pub mod mesh;
pub mod peer;
pub mod policy;
pub mod resolve;
mod route;
pub mod rule;
pub mod security;
pub mod settings;
mod status;
pub mod table;
pub mod time;

pub use certs::CompileInputs;
pub use config::{Compiled, ProxyConfig, ServiceBackendRef};
pub use gateway::{compile_gateway, compile_gateway_with};
pub use listeners::{CONTROLLER_NAME, DEFAULT_CLASS, NamespaceLabels, namespace_labels};
pub use settings::Downstream;
pub use status::{Condition, Severity};
