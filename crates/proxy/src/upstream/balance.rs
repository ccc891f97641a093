//! A backend at run time: its endpoints, how one is picked for a request (P2C on peak-EWMA
//! latency, round robin, random, or Maglev consistent hashing), and outlier ejection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meshgate_model::policy::{BackendPolicy, HashKey, Lb, Outlier};
use meshgate_model::rule::ServiceBackend;

use super::pool::EndpointPool;
use super::state::BackendState;
use crate::clock::{nanos, now_nanos};

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The Service has no ready endpoints.
    None,
    /// Every endpoint is ejected; the earliest comes back at this clock value.
    AllEjected {
        /// Endpoints.
        total: usize,
        /// Earliest return (`clock::now_nanos` scale).
        until: u64,
    },
}

/// A Service backend with a pool per endpoint.
#[derive(Debug)]
pub struct BackendRt {
    /// What the model says about it.
    pub model: Arc<ServiceBackend>,
    /// One pool per ready endpoint, in the model's order.
    pub endpoints: Vec<Arc<EndpointPool>>,
    /// Counters that outlive reloads.
    pub state: Arc<BackendState>,
    rr: AtomicUsize,
    maglev: Vec<u16>,
}

/// Peak-EWMA decay: how fast an old latency is forgotten (Linkerd uses 10 s).
const EWMA_DECAY_NANOS: f64 = 10e9;

impl BackendRt {
    /// Prepares the balancer (the Maglev table, for consistent hashing).
    pub fn new(model: Arc<ServiceBackend>, endpoints: Vec<Arc<EndpointPool>>, state: Arc<BackendState>) -> Self {
        state.set_limits(&model.policy);
        let maglev = match model.policy.load_balancer {
            Lb::ConsistentHash(_) if endpoints.len() < usize::from(u16::MAX) => maglev_table(&endpoints),
            _ => Vec::new(),
        };
        BackendRt { model, endpoints, state, rr: AtomicUsize::new(0), maglev }
    }

    /// The policy in force.
    pub fn policy(&self) -> &BackendPolicy {
        &self.model.policy
    }

    /// The consistent-hash key this backend wants from a request, if any.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.model.policy.load_balancer {
            Lb::ConsistentHash(k) => Some(k),
            _ => None,
        }
    }

    /// Picks an endpoint, skipping ejected ones and (when another is available) `avoid`.
    pub fn pick(&self, key: Option<u64>, avoid: Option<&Arc<EndpointPool>>) -> Result<&Arc<EndpointPool>, NoEndpoint> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(NoEndpoint::None);
        }
        let now = now_nanos();
        let usable = |e: &Arc<EndpointPool>| e.health.ejected_until.load(Ordering::Relaxed) <= now;
        let preferred = |e: &Arc<EndpointPool>| usable(e) && avoid.is_none_or(|a| !Arc::ptr_eq(a, e));
        let picked = match &self.model.policy.load_balancer {
            Lb::ConsistentHash(_) if !self.maglev.is_empty() => {
                let start = key.unwrap_or_else(|| fastrand::u64(..)) as usize % self.maglev.len();
                self.scan(start, |e| preferred(e)).or_else(|| self.scan(start, |e| usable(e)))
            }
            Lb::RoundRobin | Lb::ConsistentHash(_) => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                self.ring(start, &preferred).or_else(|| self.ring(start, &usable))
            }
            Lb::Random => {
                let start = fastrand::usize(..n);
                self.ring(start, &preferred).or_else(|| self.ring(start, &usable))
            }
            Lb::LeastRequest => self.p2c(now, &preferred).or_else(|| self.p2c(now, &usable)),
        };
        picked.ok_or_else(|| NoEndpoint::AllEjected {
            total: n,
            until: self.endpoints.iter().map(|e| e.health.ejected_until.load(Ordering::Relaxed)).min().unwrap_or(now),
        })
    }

    /// The first endpoint that is `ok`, going round the endpoints from `start`.
    fn ring(&self, start: usize, ok: &dyn Fn(&Arc<EndpointPool>) -> bool) -> Option<&Arc<EndpointPool>> {
        let n = self.endpoints.len();
        (0..n).map(|i| &self.endpoints[(start + i) % n]).find(|e| ok(e))
    }

    fn scan(&self, start: usize, ok: impl Fn(&Arc<EndpointPool>) -> bool) -> Option<&Arc<EndpointPool>> {
        let m = self.maglev.len();
        (0..m).map(|i| &self.endpoints[self.maglev[(start + i) % m] as usize]).find(|e| ok(e))
    }

    /// Power of two choices: two random usable endpoints, the cheaper wins; cost is the decayed
    /// peak-EWMA latency times (in-flight + 1).
    fn p2c(&self, now: u64, ok: &dyn Fn(&Arc<EndpointPool>) -> bool) -> Option<&Arc<EndpointPool>> {
        let n = self.endpoints.len();
        if n == 1 {
            return self.endpoints.first().filter(|e| ok(e));
        }
        let mut candidates = [None, None];
        let mut found = 0;
        // Sample without replacement; fall back to a scan when few are usable.
        for _ in 0..4 {
            let e = &self.endpoints[fastrand::usize(..n)];
            if ok(e)
                && candidates[..found]
                    .iter()
                    .all(|c: &Option<&Arc<EndpointPool>>| c.is_some_and(|c| !Arc::ptr_eq(c, e)))
            {
                candidates[found] = Some(e);
                found += 1;
                if found == 2 {
                    break;
                }
            }
        }
        if found < 2 {
            for e in &self.endpoints {
                if found == 2 {
                    break;
                }
                if ok(e) && candidates[..found].iter().all(|c| c.is_some_and(|c| !Arc::ptr_eq(c, e))) {
                    candidates[found] = Some(e);
                    found += 1;
                }
            }
        }
        match candidates {
            [Some(a), Some(b)] => Some(if cost(b, now) < cost(a, now) { b } else { a }),
            [Some(a), None] => Some(a),
            _ => None,
        }
    }

    /// Records how an attempt to `endpoint` went: latency for the balancer, errors for
    /// outlier detection.
    pub fn record(&self, endpoint: &EndpointPool, outcome: Outcome, latency: Duration) {
        if !matches!(outcome, Outcome::ConnectFailure) {
            observe_latency(endpoint, latency);
        }
        let Some(outlier) = &self.model.policy.outlier else { return };
        let h = &endpoint.health;
        let (is_5xx, is_gateway, is_connect) = match outcome {
            Outcome::Success => {
                h.consecutive_5xx.store(0, Ordering::Relaxed);
                h.consecutive_gateway.store(0, Ordering::Relaxed);
                h.consecutive_connect.store(0, Ordering::Relaxed);
                let times = h.times_ejected.load(Ordering::Relaxed);
                if times > 0 && now_nanos() > h.ejected_until.load(Ordering::Relaxed) + nanos(outlier.base_ejection) {
                    h.times_ejected.store(times - 1, Ordering::Relaxed);
                }
                return;
            }
            Outcome::ServerError => (true, false, false),
            Outcome::GatewayError => (true, true, false),
            Outcome::ConnectFailure => (true, true, true),
        };
        let bump = |c: &std::sync::atomic::AtomicU32, on: bool, limit: u32| {
            if !on {
                c.store(0, Ordering::Relaxed);
                return false;
            }
            let n = c.fetch_add(1, Ordering::Relaxed) + 1;
            limit > 0 && n >= limit
        };
        let eject = bump(&h.consecutive_5xx, is_5xx, outlier.consecutive_5xx)
            | bump(&h.consecutive_gateway, is_gateway, outlier.consecutive_gateway)
            | bump(&h.consecutive_connect, is_connect, outlier.consecutive_connect);
        if eject {
            self.eject(endpoint, outlier);
        }
    }

    fn eject(&self, endpoint: &EndpointPool, outlier: &Outlier) {
        let now = now_nanos();
        let h = &endpoint.health;
        if h.ejected_until.load(Ordering::Relaxed) > now {
            return;
        }
        let n = self.endpoints.len();
        let ejected = self.endpoints.iter().filter(|e| e.health.ejected_until.load(Ordering::Relaxed) > now).count();
        let allowed = (n * outlier.max_ejection_percent as usize / 100).max(1);
        if ejected + 1 > allowed {
            tracing::info!(
                endpoint = %endpoint.addr,
                backend = %self.model.id,
                "outlier detection: not ejecting, {ejected} of {n} endpoints already ejected (maxEjectionPercent {})",
                outlier.max_ejection_percent
            );
            return;
        }
        let times = h.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let length = (outlier.base_ejection * times).min(outlier.max_ejection);
        h.ejected_until.store(now + nanos(length), Ordering::Relaxed);
        crate::upstream::state::BackendEvents::count(&self.state.events.ejections);
        h.consecutive_5xx.store(0, Ordering::Relaxed);
        h.consecutive_gateway.store(0, Ordering::Relaxed);
        h.consecutive_connect.store(0, Ordering::Relaxed);
        tracing::warn!(
            endpoint = %endpoint.addr,
            backend = %self.model.id,
            "outlier detection: endpoint ejected for {length:?} (ejection #{times})"
        );
    }

    /// Whether an endpoint is ejected now.
    #[cfg(test)]
    pub(crate) fn is_ejected(endpoint: &EndpointPool) -> bool {
        endpoint.health.ejected_until.load(Ordering::Relaxed) > now_nanos()
    }
}

/// How an attempt ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Below 500.
    Success,
    /// 500, or 5xx other than 502/503/504.
    ServerError,
    /// 502, 503, 504, or a reset before the response.
    GatewayError,
    /// The connection could not be made.
    ConnectFailure,
}

fn decayed_ewma(e: &EndpointPool, now: u64) -> f64 {
    let ewma = f64::from_bits(e.health.ewma.load(Ordering::Relaxed));
    let at = e.health.ewma_at.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    let age = now.saturating_sub(at) as f64;
    ewma * (-age / EWMA_DECAY_NANOS).exp()
}

fn cost(e: &EndpointPool, now: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let load = (e.in_flight() + 1) as f64;
    (decayed_ewma(e, now) + 1_000.0) * load
}

fn observe_latency(e: &EndpointPool, latency: Duration) {
    let now = now_nanos();
    #[allow(clippy::cast_precision_loss)]
    let rtt = latency.as_nanos() as f64;
    let prev = decayed_ewma(e, now);
    // Peak EWMA: a slower sample takes over at once; faster ones pull it down gradually.
    let next = if rtt > prev { rtt } else { prev * 0.9 + rtt * 0.1 };
    e.health.ewma.store(next.to_bits(), Ordering::Relaxed);
    e.health.ewma_at.store(now, Ordering::Relaxed);
}

/// 64-bit FNV-1a: stable across processes (consistent hashing must not depend on a random
/// seed, or two proxies would disagree).
pub fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final mix (FNV alone leaves low bits weak for short keys).
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// Builds a Maglev lookup table (Eisenbud et al., NSDI 2016): each endpoint fills slots in
/// its own permutation order, in turn, so removing one endpoint moves only its slots.
fn maglev_table(endpoints: &[Arc<EndpointPool>]) -> Vec<u16> {
    let n = endpoints.len();
    if n == 0 {
        return Vec::new();
    }
    // The table size must not depend on the endpoint count, or every change would reshuffle
    // all keys; it steps up once, past 40 endpoints, to keep the spread even (M ≫ N).
    let m = if n <= 40 { 4099 } else { 65537 };
    debug_assert!(is_prime(m));
    let perms: Vec<(usize, usize)> = endpoints
        .iter()
        .map(|e| {
            let key = e.addr.to_string();
            let offset = (fnv1a(key.as_bytes(), 0x9e37) % m as u64) as usize;
            let skip = (fnv1a(key.as_bytes(), 0x7f4a) % (m as u64 - 1) + 1) as usize;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut table = vec![u16::MAX; m];
    let mut filled = 0;
    'outer: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while table[c] != u16::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c] = u16::try_from(i).unwrap_or(0);
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'outer;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests;
