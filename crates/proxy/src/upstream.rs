//! The upstream side of every role: per-endpoint connection pools (HTTP/1.1 keep-alive, one
//! HTTP/2 connection, or mTLS to a meshed peer), the balancer and outlier ejection, and the
//! per-backend counters behind circuit breakers and retry budgets.

pub mod balance;
#[cfg(test)]
pub(crate) mod memory;
pub mod pool;
pub mod state;
