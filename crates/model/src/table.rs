//! Per-port listener selection and per-listener route tables, sorted once at compile time so
//! a request is one hash lookup and a short scan.

use std::collections::HashMap;
use std::sync::Arc;

use meshgate_tls::edge::EdgeCert;
use serde::Serialize;

use crate::host::HostPattern;
use crate::matching::{MatchRank, PathMatch, RequestView, RouteMatch};
use crate::rule::{Rule, WeightedBackend, pick_weighted};

/// One match of one rule, with the hostnames it answers for on this listener.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Effective hostnames (route ∩ listener); empty means any host.
    pub hostnames: Vec<HostPattern>,
    /// The conditions.
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// The rule to apply.
    #[serde(skip)]
    pub rule: Arc<Rule>,
    /// Tie-breakers after the match rank: route age, route name, rule index, match index.
    #[serde(skip)]
    pub order: (i64, Arc<str>, usize, usize),
}

impl Entry {
    /// The prefix the request matched, for ReplacePrefixMatch.
    pub fn matched_prefix(&self) -> Option<&str> {
        match &self.matcher.path {
            PathMatch::PathPrefix(p) => Some(p),
            _ => None,
        }
    }

    fn host_rank(&self, host: &str) -> (std::cmp::Reverse<usize>, std::cmp::Reverse<usize>) {
        let best =
            self.hostnames.iter().filter(|h| h.matches(host)).map(HostPattern::specificity).max().unwrap_or((0, 0));
        (std::cmp::Reverse(best.0), std::cmp::Reverse(best.1))
    }

    fn answers(&self, host: &str) -> bool {
        self.hostnames.is_empty() || self.hostnames.iter().any(|h| h.matches(host))
    }
}

/// The routes attached to one listener.
#[derive(Debug, Default, Serialize)]
pub struct RouteTable {
    /// Every entry, in precedence order for an unknown host.
    pub entries: Vec<Entry>,
    /// Exact request host → indexes of the entries answering it, in precedence order.
    #[serde(skip)]
    exact: HashMap<String, Vec<u32>>,
    /// Entries for hosts not in `exact` (wildcards and catch-alls), in precedence order.
    #[serde(skip)]
    fallback: Vec<u32>,
}

type Key<'a> = (MatchRank, (std::cmp::Reverse<usize>, std::cmp::Reverse<usize>), &'a (i64, Arc<str>, usize, usize));

impl RouteTable {
    /// Builds the table from entries in any order.
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| (a.matcher.rank(), &a.order).cmp(&(b.matcher.rank(), &b.order)));
        let mut exact_hosts: Vec<String> = entries
            .iter()
            .flat_map(|e| e.hostnames.iter())
            .filter_map(|h| match h {
                HostPattern::Exact(h) => Some(h.clone()),
                HostPattern::Wildcard(_) => None,
            })
            .collect();
        exact_hosts.sort();
        exact_hosts.dedup();
        let ordered = |host: Option<&str>| -> Vec<u32> {
            let mut picked: Vec<(Key<'_>, u32)> = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| match host {
                    Some(h) => e.answers(h),
                    None => e.hostnames.is_empty() || e.hostnames.iter().any(|h| matches!(h, HostPattern::Wildcard(_))),
                })
                .map(|(i, e)| {
                    let host_rank = match host {
                        Some(h) => e.host_rank(h),
                        None => {
                            let best = e.hostnames.iter().map(HostPattern::specificity).max().unwrap_or((0, 0));
                            (std::cmp::Reverse(best.0), std::cmp::Reverse(best.1))
                        }
                    };
                    ((e.matcher.rank(), host_rank, &e.order), i as u32)
                })
                .collect();
            picked.sort_by(|a, b| a.0.cmp(&b.0));
            picked.into_iter().map(|(_, i)| i).collect()
        };
        let exact = exact_hosts.iter().map(|h| (h.clone(), ordered(Some(h)))).collect();
        let fallback = ordered(None);
        RouteTable { entries, exact, fallback }
    }

    /// The highest-precedence entry matching the request, if any.
    pub fn find(&self, host: &str, req: &RequestView<'_>) -> Option<&Entry> {
        match self.exact.get(host) {
            Some(list) => list.iter().map(|&i| &self.entries[i as usize]).find(|e| e.matcher.matches(req)),
            None => self
                .fallback
                .iter()
                .map(|&i| &self.entries[i as usize])
                .find(|e| e.answers(host) && e.matcher.matches(req)),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no route is attached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One Gateway listener as served.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// `namespace/name` of the Gateway.
    pub gateway: Arc<str>,
    /// Listener name.
    pub name: String,
    /// Listener hostname; `None` answers any host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<HostPattern>,
    /// Routes attached to it.
    pub routes: RouteTable,
    /// An HTTPS listener's certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// What it carries.
    pub protocol: ListenerProtocol,
    /// A TLS (passthrough) or TCP listener's connection routes.
    #[serde(skip_serializing_if = "L4Table::is_empty")]
    pub l4: L4Table,
}

/// What a listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ListenerProtocol {
    /// HTTP requests in plaintext.
    Http,
    /// HTTP requests over TLS the gateway terminates.
    Https,
    /// TLS connections passed through by SNI, unterminated (TLSRoute).
    TlsPassthrough,
    /// TLS the gateway terminates, the decrypted bytes to a TLSRoute's backends.
    TlsTerminate,
    /// Opaque TCP connections (TCPRoute).
    Tcp,
}

/// The certificates an HTTPS listener serves, in the order of its `certificateRefs`.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// Never empty.
    pub certs: Vec<Arc<EdgeCert>>,
}

impl ListenerTls {
    /// The certificate for a ClientHello naming `sni`: one naming it exactly, else one covering
    /// it by a wildcard, else the first (also for clients sending no SNI).
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<EdgeCert>> {
        if let Some(sni) = sni {
            if let Some(c) = self.certs.iter().find(|c| c.names_exactly(sni)) {
                return Some(c);
            }
            if let Some(c) = self.certs.iter().find(|c| c.covers(sni)) {
                return Some(c);
            }
        }
        self.certs.first()
    }
}

impl Serialize for ListenerTls {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Cert<'a> {
            secret: &'a str,
            names: &'a [String],
            key_type: &'a str,
            not_after: i64,
        }
        s.collect_seq(self.certs.iter().map(|c| Cert {
            secret: &c.secret,
            names: &c.names,
            key_type: c.key_type,
            not_after: c.not_after,
        }))
    }
}

/// The listeners sharing one port, selected by the request's host (most specific wins).
#[derive(Debug, Default, Serialize)]
pub struct ListenerSet {
    /// The listeners, most specific first.
    pub listeners: Vec<Listener>,
    /// How the port takes connections (ListenerPolicy).
    pub settings: PortSettings,
    #[serde(skip)]
    exact: HashMap<String, usize>,
    #[serde(skip)]
    wildcards: Vec<usize>,
    #[serde(skip)]
    catch_all: Option<usize>,
}

impl ListenerSet {
    /// Builds the selector; listeners with equal hostnames must have been removed before.
    pub fn new(mut listeners: Vec<Listener>) -> Self {
        listeners.sort_by_key(|l| match &l.hostname {
            Some(HostPattern::Exact(_)) => (0, 0),
            Some(HostPattern::Wildcard(s)) => (1, usize::MAX - s.len()),
            None => (2, 0),
        });
        let mut set = ListenerSet::default();
        for (i, l) in listeners.iter().enumerate() {
            match &l.hostname {
                Some(HostPattern::Exact(h)) => {
                    set.exact.entry(h.clone()).or_insert(i);
                }
                Some(HostPattern::Wildcard(_)) => set.wildcards.push(i),
                None => {
                    set.catch_all.get_or_insert(i);
                }
            }
        }
        set.listeners = listeners;
        set
    }

    /// The listener answering `host` (lower case, no port).
    pub fn select(&self, host: &str) -> Option<&Listener> {
        if let Some(&i) = self.exact.get(host) {
            return self.listeners.get(i);
        }
        for &i in &self.wildcards {
            if let Some(l) = self.listeners.get(i)
                && l.hostname.as_ref().is_some_and(|h| h.matches(host))
            {
                return Some(l);
            }
        }
        self.catch_all.and_then(|i| self.listeners.get(i))
    }

    /// The listener whose TLS the gateway terminates to carry bytes, not requests, for a
    /// ClientHello naming `sni` (as [`ListenerSet::select_cert`] chooses the listener).
    pub fn tls_terminate(&self, sni: Option<&str>) -> Option<&Listener> {
        self.for_client_hello(sni).filter(|l| l.protocol == ListenerProtocol::TlsTerminate)
    }

    /// Whether the port terminates TLS (its listeners are HTTPS, or TLS in Terminate mode).
    pub fn terminates_tls(&self) -> bool {
        self.listeners.iter().any(|l| l.tls.is_some())
    }

    /// Whether some listener of the port passes TLS through by SNI.
    pub fn passes_tls_through(&self) -> bool {
        self.listeners.iter().any(|l| l.protocol == ListenerProtocol::TlsPassthrough)
    }

    /// The TCP listener of the port (a TCP port has one: TCP listeners have no hostname).
    pub fn tcp(&self) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.protocol == ListenerProtocol::Tcp)
    }

    /// The passthrough listener a ClientHello naming `sni` is for, when the listener its name
    /// selects passes TLS through (without SNI: the port's catch-all listener, if it does).
    pub fn passthrough(&self, sni: Option<&str>) -> Option<&Listener> {
        let listener = match sni {
            Some(name) => self.select(name)?,
            None => self.catch_all.and_then(|i| self.listeners.get(i))?,
        };
        (listener.protocol == ListenerProtocol::TlsPassthrough).then_some(listener)
    }

    /// The certificate a ClientHello naming `sni` gets: from the listener its name selects (as
    /// `Host` selects for requests), or for a client without SNI the catch-all listener's, else
    /// the port's first listener's. `None`: no listener serves that name.
    pub fn select_cert(&self, sni: Option<&str>) -> Option<&Arc<EdgeCert>> {
        self.for_client_hello(sni)?.tls.as_ref()?.select(sni)
    }

    /// The listener a ClientHello naming `sni` is for: the one its name selects (as `Host` does
    /// for requests); without SNI the catch-all listener, else the port's first.
    fn for_client_hello(&self, sni: Option<&str>) -> Option<&Listener> {
        match sni {
            Some(name) => self.select(name),
            None => self.catch_all.and_then(|i| self.listeners.get(i)).or_else(|| self.listeners.first()),
        }
    }

    /// Every certificate served on the port, by Secret.
    pub fn certs(&self) -> impl Iterator<Item = &Arc<EdgeCert>> {
        self.listeners.iter().filter_map(|l| l.tls.as_ref()).flat_map(|t| t.certs.iter())
    }
}

/// One rule of a TLSRoute or TCPRoute on a listener.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Route {
    /// `TLSRoute ns/name` or `TCPRoute ns/name`, and the rule's index.
    pub route: Arc<str>,
    /// The server names it answers for on this listener (TLS; empty: any).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<HostPattern>,
    /// Where its connections go.
    pub backends: Vec<WeightedBackend>,
    #[serde(skip)]
    total_weight: u64,
}

impl L4Route {
    /// A rule with its backends.
    pub fn new(route: Arc<str>, hostnames: Vec<HostPattern>, backends: Vec<WeightedBackend>) -> Self {
        let total_weight = backends.iter().map(|b| u64::from(b.weight)).sum();
        L4Route { route, hostnames, backends, total_weight }
    }

    /// Picks a backend by weight; `None` when every weight is zero.
    pub fn pick_backend(&self) -> Option<&WeightedBackend> {
        pick_weighted(&self.backends, self.total_weight)
    }
}

/// The connection routes of one listener, oldest route first.
#[derive(Debug, Default, Serialize)]
pub struct L4Table {
    /// The rules.
    pub routes: Vec<L4Route>,
}

impl L4Table {
    /// The rule for a connection whose ClientHello names `sni`: one naming it exactly, then
    /// the longest wildcard covering it, then one for any name; the oldest route wins ties.
    pub fn select(&self, sni: Option<&str>) -> Option<&L4Route> {
        if let Some(sni) = sni {
            let exact =
                self.routes.iter().find(|r| r.hostnames.iter().any(|h| matches!(h, HostPattern::Exact(e) if e == sni)));
            if exact.is_some() {
                return exact;
            }
            let wildcard = self
                .routes
                .iter()
                .filter_map(|r| {
                    let best = r
                        .hostnames
                        .iter()
                        .filter(|h| matches!(h, HostPattern::Wildcard(_)) && h.matches(sni))
                        .map(|h| h.to_string().len())
                        .max()?;
                    Some((best, r))
                })
                .fold(None::<(usize, &L4Route)>, |acc, (len, r)| match acc {
                    Some((l, _)) if l >= len => acc,
                    _ => Some((len, r)),
                });
            if let Some((_, r)) = wildcard {
                return Some(r);
            }
        }
        self.routes.iter().find(|r| r.hostnames.is_empty())
    }

    /// True when no route is attached.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The connection settings of one port; unset fields keep the gateway's flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSettings {
    /// Every connection starts with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
    /// HTTP/1.1 request-head timeout (`Some(0)`: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_timeout: Option<std::time::Duration>,
    /// Idle timeout (`Some(0)`: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<std::time::Duration>,
    /// Most connections open at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `namespace/name` of the policy that set them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}
