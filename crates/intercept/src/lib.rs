//! Transparent interception on one Linux machine: a network namespace per workload (its own
//! address on a lab bridge, as a Kubernetes pod has), the redirection rules a sidecar needs
//! inside it (iptables or nftables, as Istio's init step installs), and the original
//! destination of a redirected connection.
//!
//! Everything here touches only what it creates: namespaces named `mg-*`, veths `mgv*`, the
//! bridge `meshgate0` and addresses in 10.77.0.0/16 and 10.96.0.0/16.

mod netns;
mod rules;
mod sys;

use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;

pub use netns::{
    BRIDGE_IP, Pod, bridge_exists, cleanup_all, exec, pod_name, pod_namespaces, reclaim_abandoned,
    remove_bridge_if_unused, root,
};
pub use rules::{Backend, RuleSpec, install};
pub use sys::{release_free_heap, release_startup_pages};

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

/// The uid and gid the sidecar runs as: its own traffic is never redirected (Istio's 1337).
pub const PROXY_UID: u32 = 1337;

/// Drops this process to `uid`/`gid` with no supplementary groups, then asks the kernel for
/// SIGTERM when the parent dies (after the change of credentials, which clears that setting).
pub fn become_proxy_user(uid: u32, gid: u32) -> Result<(), InterceptError> {
    use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
    let fail = |what: &str, e: nix::Error| InterceptError::Io(std::io::Error::other(format!("{what}: {e}")));
    setgroups(&[]).map_err(|e| fail("setgroups", e))?;
    setgid(Gid::from_raw(gid)).map_err(|e| fail("setgid", e))?;
    setuid(Uid::from_raw(uid)).map_err(|e| fail("setuid", e))?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(|e| fail("prctl", e))?;
    Ok(())
}

/// Sends SIGTERM to a process.
pub fn terminate(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
        .map_err(std::io::Error::from)
}

/// Where address leases are kept (one empty file per address in use).
pub const LEASE_DIR: &str = "/run/meshgate/ips";

/// The address leases held now (one per live workload, or left by a crash).
pub fn leases() -> Vec<std::net::Ipv4Addr> {
    std::fs::read_dir(LEASE_DIR)
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// A workload address in use; released when dropped.
#[derive(Debug)]
pub struct IpLease {
    /// The address.
    pub ip: std::net::Ipv4Addr,
    path: std::path::PathBuf,
}

impl Drop for IpLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the last address handed out is remembered (next to the leases, not among them).
const LEASE_CURSOR: &str = "/run/meshgate/ips.last";

/// Leases a free workload address in 10.77.1.0–10.77.255.254 (`want` asks for one in
/// particular). Concurrent `meshgate run`s never get the same one: a lease is a file created
/// exclusively. The search starts after the address handed out last, as CNI's host-local IPAM
/// does: an address just given up is not reused at once, so connections and caches (ARP,
/// conntrack, clients' pools) that still point at the old workload do not reach a new one.
pub fn lease_ip(want: Option<std::net::Ipv4Addr>) -> Result<IpLease, InterceptError> {
    std::fs::create_dir_all(LEASE_DIR)?;
    let try_one = |ip: std::net::Ipv4Addr| -> Result<Option<IpLease>, InterceptError> {
        let path = std::path::Path::new(LEASE_DIR).join(ip.to_string());
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => Ok(Some(IpLease { ip, path })),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    if let Some(ip) = want {
        return try_one(ip)?
            .ok_or_else(|| InterceptError::Io(std::io::Error::other(format!("address {ip} is already in use"))));
    }
    let base = u32::from(netns::BRIDGE_IP) & 0xffff_0000;
    let (first, end) = (0x0101u32, 0xfffeu32);
    let last = std::fs::read_to_string(LEASE_CURSOR)
        .ok()
        .and_then(|t| t.trim().parse::<std::net::Ipv4Addr>().ok())
        .map(|ip| u32::from(ip).wrapping_sub(base))
        .filter(|n| (first..end).contains(n));
    let start = last.map_or(first, |n| n + 1);
    for n in (start..end).chain(first..start) {
        if n & 0xff == 0 || n & 0xff == 0xff {
            continue;
        }
        let ip = std::net::Ipv4Addr::from(base + n);
        if let Some(lease) = try_one(ip)? {
            // Best effort: a lost update only means an earlier start next time.
            let _ = std::fs::write(LEASE_CURSOR, ip.to_string());
            return Ok(lease);
        }
    }
    Err(InterceptError::Io(std::io::Error::other("no free workload address left in 10.77.0.0/16")))
}

#[cfg(test)]
mod tests {
    /// Needs root, as the rest of the namespace tests (`/run/meshgate`).
    #[test]
    fn an_address_given_up_is_not_handed_out_again_at_once() {
        let first = super::lease_ip(None).unwrap();
        let ip = first.ip;
        drop(first);
        let second = super::lease_ip(None).unwrap();
        assert_ne!(second.ip, ip, "the address just released came straight back");
        // Asked for by name, a free address is still given.
        drop(second);
        let again = super::lease_ip(Some(ip)).unwrap();
        assert_eq!(again.ip, ip);
    }
}
