//! Network namespaces with a veth to the lab bridge: one per workload.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::{InterceptError, IpLease};

/// The lab bridge in the host namespace.
const BRIDGE: &str = "meshgate0";
/// Its address: the workloads' default gateway, and how the host reaches them.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// A workload's namespace with an address of its own; deleted, and the address released,
/// when dropped.
#[derive(Debug)]
pub struct Pod {
    /// Namespace name (`mg-10-77-1-2`).
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    _lease: IpLease,
}

impl Pod {
    /// Leases an address (`want`, or the next free one) and creates its namespace: a veth on
    /// the lab bridge, a default route through it, and an `/etc/hosts` of its own.
    pub fn create(want: Option<Ipv4Addr>) -> Result<Pod, InterceptError> {
        if !root() {
            return Err(InterceptError::NotRoot("creating a network namespace".into()));
        }
        let lease = crate::lease_ip(want)?;
        let (ip, name) = (lease.ip, pod_name(lease.ip));
        {
            // The bridge is shared: created, joined and removed under one host-wide lock, so
            // pods starting and stopping at the same instant never see it half made or gone.
            let _host = HostLock::acquire()?;
            if let Err(e) = ensure_bridge().and_then(|()| setup(&name, ip)) {
                remove_bridge_if_unused_locked();
                return Err(e);
            }
        }
        // From here on, dropping the pod undoes everything above.
        let pod = Pod { name, ip, _lease: lease };
        write_hosts(&pod.name)?;
        Ok(pod)
    }

    /// A command run inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        exec(&self.name, program)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let host = HostLock::acquire();
        if let Err(e) = delete_pod(&self.name) {
            tracing::warn!(namespace = %self.name, error = %e, "cannot delete the network namespace");
        }
        // The last pod takes the bridge with it: a host the lab has left is as it found it.
        if host.is_ok() {
            remove_bridge_if_unused_locked();
        }
    }
}

/// Where meshgate keeps host-wide state: address leases and the host lock.
pub(crate) const RUN_DIR: &str = "/run/meshgate";

/// An exclusive lock on the host's shared set-up (the bridge, its address, the `/run/netns`
/// mount that the first `ip netns add` makes), held while it is created, joined or removed.
/// Every `meshgate run` of the host takes it, so many starting at once serialise their few
/// `ip` calls instead of racing (two `ip link add meshgate0` at once: "File exists"). The
/// kernel releases it when the holder exits, however it exits.
struct HostLock {
    _file: std::fs::File,
}

impl HostLock {
    fn acquire() -> Result<HostLock, InterceptError> {
        std::fs::create_dir_all(RUN_DIR)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::path::Path::new(RUN_DIR).join("host.lock"))?;
        file.lock()?;
        Ok(HostLock { _file: file })
    }
}

/// Whether this process runs as root.
pub fn root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn run(args: &[&str]) -> Result<String, InterceptError> {
    check(Command::new(args[0]).args(&args[1..]), None)
}

/// Runs `cmd` (writing `stdin` to it, if any); its output, or an error naming the command and
/// what it printed.
pub(crate) fn check(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<String, InterceptError> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let is_ip = cmd.get_program() == "ip";
    let missing = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            InterceptError::Missing(if is_ip { "ip (iproute2)" } else { "a system tool" })
        } else {
            InterceptError::Io(e)
        }
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(missing)?;
    if let (Some(bytes), Some(pipe)) = (stdin, child.stdin.as_mut()) {
        pipe.write_all(bytes)?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(InterceptError::Command {
            command: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command run inside namespace `ns`.
pub fn exec(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Creates the lab bridge with its address, or completes one left half made; every step is
/// idempotent (the caller holds the host lock, so no other meshgate races it). Workloads
/// reach each other across the bridge and the host through its address, so no forwarding or
/// NAT is set up: nothing of the host's own routing changes.
fn ensure_bridge() -> Result<(), InterceptError> {
    if !root() {
        return Err(InterceptError::NotRoot("creating the lab bridge".into()));
    }
    if run(&["ip", "link", "show", BRIDGE]).is_err() {
        // Another program could still have made it since: "File exists" is success.
        if let Err(e) = run(&["ip", "link", "add", BRIDGE, "type", "bridge"])
            && run(&["ip", "link", "show", BRIDGE]).is_err()
        {
            return Err(e);
        }
    }
    run(&["ip", "addr", "replace", &format!("{BRIDGE_IP}/16"), "dev", BRIDGE])?;
    run(&["ip", "link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Creates namespace `name` with address `ip` on the lab bridge and a default route through
/// it; on failure removes what it made. The caller holds the host lock.
fn setup(name: &str, ip: Ipv4Addr) -> Result<(), InterceptError> {
    let veth = veth_name(ip);
    // A namespace deleted a moment ago may still be tearing down (the kernel frees it
    // asynchronously) with its veth: remove that first.
    if run(&["ip", "link", "show", &veth]).is_ok() {
        let _ = run(&["ip", "link", "del", &veth]);
    }
    run(&["ip", "netns", "add", name])?;
    let setup = (|| {
        run(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", name])?;
        run(&["ip", "link", "set", &veth, "master", BRIDGE, "up"])?;
        run(&["ip", "-n", name, "addr", "add", &format!("{ip}/16"), "dev", "eth0"])?;
        run(&["ip", "-n", name, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", name, "route", "add", "default", "via", &BRIDGE_IP.to_string()])?;
        Ok::<(), InterceptError>(())
    })();
    if let Err(e) = setup {
        let _ = delete_pod(name);
        return Err(e);
    }
    Ok(())
}

/// The host end of the veth of the workload at `ip`.
fn veth_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("mgv{:02x}{:02x}{:02x}", o[1], o[2], o[3])
}

/// The namespace name for the workload at `ip` (`mg-10-77-1-2`).
pub fn pod_name(ip: Ipv4Addr) -> String {
    format!("mg-{}", ip.to_string().replace('.', "-"))
}

/// Deletes a namespace and its `/etc/netns` files. The veth goes at once (deleting one end
/// deletes the pair), not when the kernel gets round to freeing the namespace, so the address
/// can be reused right away.
fn delete_pod(name: &str) -> Result<(), InterceptError> {
    if let Some(ip) = name.strip_prefix("mg-").and_then(|rest| rest.replace('-', ".").parse::<Ipv4Addr>().ok()) {
        let _ = run(&["ip", "link", "del", &veth_name(ip)]);
    }
    let r = run(&["ip", "netns", "del", name]);
    let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
    r.map(|_| ())
}

/// Writes the namespace's `/etc/hosts` (`ip netns exec` bind-mounts it), with localhost only:
/// the sidecar rewrites it in place with the mesh's Services.
fn write_hosts(name: &str) -> Result<(), InterceptError> {
    let dir = format!("/etc/netns/{name}");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(format!("{dir}/hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
    Ok(())
}

/// The workload network namespaces that exist now (`mg-…`), live or left by a crash.
pub fn pod_namespaces() -> Vec<String> {
    run(&["ip", "netns", "list"])
        .map(|out| {
            out.lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|name| name.starts_with("mg-"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the lab bridge when no workload namespace is left. Returns whether it did.
pub fn remove_bridge_if_unused() -> bool {
    match HostLock::acquire() {
        Ok(_host) => remove_bridge_if_unused_locked(),
        Err(_) => false,
    }
}

/// Whether the lab bridge exists.
pub fn bridge_exists() -> bool {
    run(&["ip", "link", "show", BRIDGE]).is_ok()
}

fn remove_bridge_if_unused_locked() -> bool {
    pod_namespaces().is_empty() && bridge_exists() && run(&["ip", "link", "del", BRIDGE]).is_ok()
}

/// Removes every namespace, veth and bridge meshgate created (after a crash). Returns what
/// was removed.
pub fn cleanup_all() -> Result<Vec<String>, InterceptError> {
    if !root() {
        return Err(InterceptError::NotRoot("cleaning up".into()));
    }
    let _host = HostLock::acquire()?;
    let mut removed = Vec::new();
    for name in pod_namespaces() {
        if delete_pod(&name).is_ok() {
            removed.push(format!("network namespace {name}"));
        }
    }
    for line in run(&["ip", "-o", "link", "show"])?.lines() {
        let name = line.split(':').nth(1).map(str::trim).unwrap_or("");
        let name = name.split('@').next().unwrap_or("");
        if name.starts_with("mgv") && run(&["ip", "link", "del", name]).is_ok() {
            removed.push(format!("veth {name}"));
        }
    }
    if run(&["ip", "link", "show", BRIDGE]).is_ok() && run(&["ip", "link", "del", BRIDGE]).is_ok() {
        removed.push(format!("bridge {BRIDGE}"));
    }
    if let Ok(entries) = std::fs::read_dir(crate::LEASE_DIR) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
            removed.push(format!("address lease {}", e.file_name().to_string_lossy()));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("mg-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(removed)
}

/// Removes what runs that are gone left on the host (killed with SIGKILL, or the machine's
/// session ended under them): workload namespaces with no process left in them, address leases
/// with no namespace, and the bridge when nothing uses it. A namespace or lease younger than
/// `min_age` is left alone, as it may belong to a `meshgate run` still setting up (the lease is
/// taken, then the namespace made, then the sidecar started in it). Live workloads are never
/// touched: their sidecar and application run inside their namespace. Returns what it removed.
pub fn reclaim_abandoned(min_age: std::time::Duration) -> Result<Vec<String>, InterceptError> {
    if !root() {
        return Err(InterceptError::NotRoot("reclaiming what earlier runs left".into()));
    }
    let old = |path: &str| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().map(|age| age >= min_age).unwrap_or(false))
            .unwrap_or(true)
    };
    let _host = HostLock::acquire()?;
    let mut removed = Vec::new();
    let namespaces = pod_namespaces();
    for name in &namespaces {
        let ip = name.strip_prefix("mg-").map(|rest| rest.replace('-', "."));
        let lease = ip.as_ref().map(|ip| format!("{}/{ip}", crate::LEASE_DIR));
        let young = lease.as_deref().is_some_and(|l| !old(l)) || !old(&format!("/etc/netns/{name}"));
        let empty = run(&["ip", "netns", "pids", name]).is_ok_and(|pids| pids.trim().is_empty());
        if young || !empty || delete_pod(name).is_err() {
            continue;
        }
        removed.push(format!("network namespace {name}"));
        if let Some(lease) = lease
            && std::fs::remove_file(&lease).is_ok()
        {
            removed.push(format!("address lease {}", ip.unwrap_or_default()));
        }
    }
    let namespaces = pod_namespaces();
    for ip in crate::leases() {
        let lease = format!("{}/{ip}", crate::LEASE_DIR);
        if !namespaces.contains(&pod_name(ip)) && old(&lease) && std::fs::remove_file(&lease).is_ok() {
            removed.push(format!("address lease {ip}"));
        }
    }
    if remove_bridge_if_unused_locked() {
        removed.push(format!("bridge {BRIDGE}"));
    }
    Ok(removed)
}
