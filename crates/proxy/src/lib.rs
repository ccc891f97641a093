//! The data plane: one proxy core (`core`) that the gateway and sidecar roles (and the node
//! role later) run over (`roles`), the connection layer they share (`conn`), the HTTP request
//! path in stages (`http`), upstream pools and balancing (`upstream`), the control-plane
//! client, the admin endpoint, and configuration sources.

pub mod admin;
pub mod body;
pub mod clock;
pub mod conn;
pub mod core;
pub mod cp;
pub mod flags;
pub mod headers;
pub mod http;
pub mod identity;
pub mod managed;
pub mod roles;
pub mod source;
pub mod telemetry;
pub mod upstream;

pub use core::{ProxyCore, Snapshot};
pub use roles::gateway::{Gateway, GatewayOptions};
