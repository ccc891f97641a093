//! Wall-clock times as RFC 3339 text, for access logs and Gateway API status.

use std::time::{SystemTime, UNIX_EPOCH};

/// `t` as RFC 3339 UTC with milliseconds (`2026-12-02T00:31:05.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let mut s = rfc3339_seconds(t);
    let millis = t.duration_since(UNIX_EPOCH).unwrap_or_default().subsec_millis();
    s.insert_str(s.len() - 1, &format!(".{millis:03}"));
    s
}

/// `t` as RFC 3339 UTC in whole seconds (`2026-12-02T00:31:05Z`), as Kubernetes writes times.
pub fn rfc3339_seconds(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
