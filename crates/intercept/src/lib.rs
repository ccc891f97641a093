//! Transparent interception on one Linux machine: a network namespace per workload (its own
//! address on a lab bridge, as a Kubernetes pod has), the redirection rules a sidecar needs
//! inside it (iptables or nftables, as Istio's init step installs), and the original
//! destination of a redirected connection.
//!
//! Everything here touches only what it creates: namespaces named `mg-*`, veths `mgv*`, the
//! bridge `meshgate0` and addresses in 10.77.0.0/16 and 10.96.0.0/16.

mod netns;
mod rules;

use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;

pub use netns::{BRIDGE, BRIDGE_IP, Pod, cleanup_all, create_pod, delete_pod, ensure_bridge, exec, root, write_hosts};
pub use rules::{Backend, RuleSpec, install};

/// A failure running a system tool.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// Not root (CAP_NET_ADMIN).
    #[error("transparent interception needs root (CAP_NET_ADMIN): {0}")]
    NotRoot(String),
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A tool is missing.
    #[error("{0} not found: install it (scripts/deps lab)")]
    Missing(&'static str),
    /// File system.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The destination a client dialled before iptables/nftables redirected the connection here
/// (`SO_ORIGINAL_DST`).
pub fn original_dst<F: AsFd>(socket: &F) -> std::io::Result<SocketAddr> {
    let raw =
        nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::OriginalDst).map_err(std::io::Error::from)?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(raw.sin_port))))
}
