//! The mesh end to end, in real network namespaces: a control plane, workloads started with
//! `meshgate run` (each in its own namespace with a sidecar and redirection rules), plain
//! namespaces without a sidecar, and the lab of `meshgate up`. Needs root (CAP_NET_ADMIN), as
//! `meshgate run` does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;
mod dashboard;
mod harness;
mod lab;
mod telemetry;
mod up;
mod workloads;
