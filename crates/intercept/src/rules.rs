//! The redirection rules inside a workload's namespace, as Istio's init container installs
//! them: outbound TCP to the sidecar's outbound port, except the proxy's own traffic (by uid
//! and gid), loopback and excluded ports or CIDRs; inbound TCP to the inbound port, except the
//! proxy's own ports. Both back ends write the same rules.

use std::process::Command;

use crate::InterceptError;
use crate::netns::{check, exec};

/// Which rule engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// iptables (nat table; nf_tables or legacy underneath).
    Iptables,
    /// native nftables.
    Nftables,
}

impl Backend {
    /// nftables when `nft` is installed, else iptables.
    pub fn detect() -> Result<Backend, InterceptError> {
        let has = |p: &str| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
        if has("nft") {
            Ok(Backend::Nftables)
        } else if has("iptables") {
            Ok(Backend::Iptables)
        } else {
            Err(InterceptError::Missing("iptables or nft"))
        }
    }

    /// From a flag value.
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "iptables" => Some(Backend::Iptables),
            "nftables" | "nft" => Some(Backend::Nftables),
            _ => None,
        }
    }
}

/// What to redirect.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// The proxy's uid and gid: its own traffic is never redirected.
    pub proxy_uid: u32,
    /// The proxy's gid.
    pub proxy_gid: u32,
    /// Outbound capture port (15001).
    pub outbound_port: u16,
    /// Inbound capture port (15006).
    pub inbound_port: u16,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound ports left alone (the proxy's own: admin, metrics, capture ports).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination CIDRs left alone.
    pub exclude_cidrs: Vec<String>,
}

impl RuleSpec {
    /// Istio's defaults: uid/gid 1337, 15001 out, 15006 in, proxy ports excluded.
    pub fn new(proxy_uid: u32) -> Self {
        RuleSpec {
            proxy_uid,
            proxy_gid: proxy_uid,
            outbound_port: 15001,
            inbound_port: 15006,
            exclude_outbound_ports: Vec::new(),
            exclude_inbound_ports: vec![15000, 15001, 15006, 15008, 15020],
            exclude_cidrs: Vec::new(),
        }
    }
}

fn ipt(ns: &str, args: &[&str]) -> Result<(), InterceptError> {
    // `-w`: wait for the xtables lock, which is one file for every namespace; without it a
    // concurrent `meshgate run` (or any other iptables user) makes this fail at once.
    check(exec(ns, "iptables").arg("-w").arg("5").args(args), None).map(drop)
}

fn ports(list: &[u16]) -> String {
    list.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

/// Installs the rules in namespace `ns`.
pub fn install(ns: &str, backend: Backend, spec: &RuleSpec) -> Result<(), InterceptError> {
    match backend {
        Backend::Iptables => install_iptables(ns, spec),
        Backend::Nftables => install_nftables(ns, spec),
    }
}

fn install_iptables(ns: &str, s: &RuleSpec) -> Result<(), InterceptError> {
    let (uid, gid, out_port, in_port) =
        (s.proxy_uid.to_string(), s.proxy_gid.to_string(), s.outbound_port.to_string(), s.inbound_port.to_string());
    ipt(ns, &["-t", "nat", "-N", "MESHGATE_OUTPUT"])?;
    ipt(ns, &["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "MESHGATE_OUTPUT"])?;
    ipt(ns, &["-t", "nat", "-A", "MESHGATE_OUTPUT", "-m", "owner", "--uid-owner", &uid, "-j", "RETURN"])?;
    ipt(ns, &["-t", "nat", "-A", "MESHGATE_OUTPUT", "-m", "owner", "--gid-owner", &gid, "-j", "RETURN"])?;
    ipt(ns, &["-t", "nat", "-A", "MESHGATE_OUTPUT", "-d", "127.0.0.0/8", "-j", "RETURN"])?;
    for cidr in &s.exclude_cidrs {
        ipt(ns, &["-t", "nat", "-A", "MESHGATE_OUTPUT", "-d", cidr, "-j", "RETURN"])?;
    }
    if !s.exclude_outbound_ports.is_empty() {
        let p = ports(&s.exclude_outbound_ports);
        ipt(
            ns,
            &["-t", "nat", "-A", "MESHGATE_OUTPUT", "-p", "tcp", "-m", "multiport", "--dports", &p, "-j", "RETURN"],
        )?;
    }
    ipt(ns, &["-t", "nat", "-A", "MESHGATE_OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", &out_port])?;
    ipt(ns, &["-t", "nat", "-N", "MESHGATE_INBOUND"])?;
    ipt(ns, &["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "MESHGATE_INBOUND"])?;
    if !s.exclude_inbound_ports.is_empty() {
        let p = ports(&s.exclude_inbound_ports);
        ipt(
            ns,
            &["-t", "nat", "-A", "MESHGATE_INBOUND", "-p", "tcp", "-m", "multiport", "--dports", &p, "-j", "RETURN"],
        )?;
    }
    ipt(ns, &["-t", "nat", "-A", "MESHGATE_INBOUND", "-p", "tcp", "-j", "REDIRECT", "--to-ports", &in_port])?;
    Ok(())
}

fn install_nftables(ns: &str, s: &RuleSpec) -> Result<(), InterceptError> {
    let mut out_rules = vec![
        format!("meta skuid {} return", s.proxy_uid),
        format!("meta skgid {} return", s.proxy_gid),
        "ip daddr 127.0.0.0/8 return".to_string(),
    ];
    for cidr in &s.exclude_cidrs {
        out_rules.push(format!("ip daddr {cidr} return"));
    }
    if !s.exclude_outbound_ports.is_empty() {
        out_rules.push(format!("tcp dport {{ {} }} return", ports(&s.exclude_outbound_ports)));
    }
    out_rules.push(format!("meta l4proto tcp redirect to :{}", s.outbound_port));
    let mut in_rules = Vec::new();
    if !s.exclude_inbound_ports.is_empty() {
        in_rules.push(format!("tcp dport {{ {} }} return", ports(&s.exclude_inbound_ports)));
    }
    in_rules.push(format!("meta l4proto tcp redirect to :{}", s.inbound_port));
    let ruleset = format!(
        "table ip meshgate {{\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    {}\n  }}\n  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n    {}\n  }}\n}}\n",
        out_rules.join("\n    "),
        in_rules.join("\n    ")
    );
    check(exec(ns, "nft").args(["-f", "-"]), Some(ruleset.as_bytes())).map(drop)
}
