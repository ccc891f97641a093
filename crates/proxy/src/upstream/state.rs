//! The counters of one backend that outlive configuration changes: requests, retries and
//! waiting requests in flight, connections, and the circuit-breaker limits and retry budget
//! that read them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use meshgate_model::policy::{BackendPolicy, RetryPolicy};
use tokio::sync::Notify;

use crate::clock::now_nanos;

/// Counters of one backend that outlive configuration reloads.
#[derive(Debug, Default)]
pub struct BackendState {
    active: AtomicUsize,
    retries: AtomicUsize,
    pending: AtomicUsize,
    connections: AtomicUsize,
    max_connections: AtomicUsize,
    max_pending: AtomicUsize,
    /// Second (since the clock base) and retries granted in it, packed: `second << 32 | count`.
    retry_window: AtomicU64,
    /// What happened to it, for metrics.
    pub events: BackendEvents,
    /// Woken when a connection may be free for a request waiting on `maxConnections`: one came
    /// back from a request or closed. (Nothing waits on `maxRequests`: it refuses at once.)
    pub freed: Notify,
}

/// Counts of what a backend's policy did, for metrics (they outlive reloads with the state).
#[derive(Debug, Default)]
pub struct BackendEvents {
    /// Retries made.
    pub retries: AtomicU64,
    /// Retries the budget refused.
    pub budget_refused: AtomicU64,
    /// Requests a circuit breaker refused (maxRequests, maxConnections, maxPending).
    pub overflow: AtomicU64,
    /// Endpoints ejected by outlier detection.
    pub ejections: AtomicU64,
}

impl BackendEvents {
    /// Counts one.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Marks a request in flight until dropped.
#[derive(Debug)]
pub struct ActiveGuard(Arc<BackendState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks a retry in flight until dropped.
#[derive(Debug)]
pub struct RetryGuard(Arc<BackendState>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks a request waiting for capacity until dropped.
#[derive(Debug)]
pub struct PendingGuard(Arc<BackendState>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BackendState {
    /// Applies the limits of a (new) policy.
    pub fn set_limits(&self, policy: &BackendPolicy) {
        self.max_connections.store(policy.limits.max_connections, Ordering::Relaxed);
        self.max_pending.store(policy.limits.max_pending, Ordering::Relaxed);
    }

    /// Counts a request in flight unless `max` are already.
    pub fn try_start(self: &Arc<Self>, max: usize) -> Option<ActiveGuard> {
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ActiveGuard(self.clone()))
    }

    /// Requests in flight.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Asks the retry budget for one retry: granted while retries in flight stay within
    /// `budget.ratio` of requests in flight or below `budget.min_concurrency` (Envoy's
    /// `min_retry_concurrency`: a caller with few requests in flight cannot cause a storm, and
    /// a share of one request would never allow a retry), or from the per-second allowance.
    pub fn try_retry(self: &Arc<Self>, budget: &RetryPolicy) -> Option<RetryGuard> {
        let active = self.active.load(Ordering::Relaxed);
        let retries = self.retries.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        let within =
            (retries + 1) as f64 <= (budget.budget_ratio * active as f64).max(f64::from(budget.budget_min_concurrency));
        if within || self.take_per_second(budget.budget_min_per_second) {
            return Some(RetryGuard(self.clone()));
        }
        self.retries.fetch_sub(1, Ordering::Relaxed);
        BackendEvents::count(&self.events.budget_refused);
        None
    }

    fn take_per_second(&self, limit: u32) -> bool {
        if limit == 0 {
            return false;
        }
        let second = now_nanos() / 1_000_000_000;
        loop {
            let cur = self.retry_window.load(Ordering::Relaxed);
            let (win, used) = (cur >> 32, cur & 0xffff_ffff);
            let next = if win == second {
                if used >= u64::from(limit) {
                    return false;
                }
                cur + 1
            } else {
                (second << 32) | 1
            };
            if self.retry_window.compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                return true;
            }
        }
    }

    pub(crate) fn try_add_connection(&self) -> bool {
        let max = self.max_connections.load(Ordering::Relaxed).max(1);
        let before = self.connections.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn force_add_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn remove_connection(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        self.freed.notify_one();
    }

    /// Counts a waiting request unless the pending limit is reached.
    pub fn enter_pending(self: &Arc<Self>) -> Option<PendingGuard> {
        let max = self.max_pending.load(Ordering::Relaxed);
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(PendingGuard(self.clone()))
    }

    /// Open upstream connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests waiting.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}
