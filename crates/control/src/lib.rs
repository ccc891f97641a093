//! The control plane: resources in (from a store), per-proxy configuration out (pushed over
//! gRPC), identities issued by its CA, and the HTTP API the CLI and dashboard use.

pub mod analyze;
pub mod api;
pub mod ca;
pub mod graph;
pub mod grpc;
pub mod metrics;
pub mod plane;
pub mod run;
pub mod state;
pub mod store;
pub mod taps;
pub mod tokens;
pub mod ui;
