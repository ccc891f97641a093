//! The control plane end to end: real stores (a directory, a real etcd), real proxies
//! subscribed over mTLS gRPC, real upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

mod certs;
mod harness;
mod push;
mod rotation;
mod status;
mod stores;
mod taps;
mod tokens;
mod ui;
