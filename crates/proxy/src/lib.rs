//! The data plane: one proxy core that serves the gateway and sidecar roles (and the node
//! role later): downstream servers, the HTTP request path, upstream pools, the admin
//! endpoint, and configuration sources.

pub mod admin;
pub mod balance;
pub mod body;
pub mod clock;
pub mod cp;
pub mod flags;
pub mod gateway;
pub mod headers;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod managed;
pub mod pool;
pub mod replay;
pub mod server;
pub mod sidecar;
pub mod source;
pub mod timeouts;

pub use gateway::{Gateway, GatewayOptions, Snapshot};
