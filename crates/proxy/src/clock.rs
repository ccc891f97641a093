//! A monotonic clock in nanoseconds that fits in an atomic, read through tokio so tests with
//! paused time see the same clock the proxy does.

use std::sync::OnceLock;
use std::time::Duration;

static BASE: OnceLock<std::time::Instant> = OnceLock::new();

fn base() -> std::time::Instant {
    *BASE.get_or_init(|| {
        // Far enough in the past that every instant any runtime reports comes after it.
        let now = std::time::Instant::now();
        [86_400, 3_600, 60, 1].into_iter().find_map(|s| now.checked_sub(Duration::from_secs(s))).unwrap_or(now)
    })
}

/// Nanoseconds on the runtime's clock (never 0).
pub fn now_nanos() -> u64 {
    let now = tokio::time::Instant::now().into_std();
    u64::try_from(now.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// A duration in nanoseconds.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
