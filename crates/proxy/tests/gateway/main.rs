//! End-to-end tests of the gateway role: a real gateway on loopback, real upstreams, real
//! HTTP/1.1 and HTTP/2 clients. Routing cases follow the Gateway API conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity, missing_docs, unreachable_pub)]

mod backend_tls;
mod clients;
mod conformance;
mod edge;
mod grpc;
mod harness;
mod https;
mod ingress;
mod l4;
mod listener_policy;
mod mtls;
mod policy;
mod records;
mod reload;
mod suite;
mod svid;
mod tracing;
mod websocket;
