//! The sink every proxy runs: metrics always, access logs while they are on, `tap` while
//! someone listens.

use std::sync::atomic::{AtomicBool, Ordering};

use super::access::AccessLog;
use super::metrics::Metrics;
use super::tap::Tap;
use super::{ConnRecord, RequestRecord, TelemetrySink};

/// How a proxy's telemetry starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct TelemetryOptions {
    /// Access logs on whatever the configuration says (`--access-log`).
    pub access_log: bool,
}

/// Metrics, access logs and `tap` of one proxy.
#[derive(Debug)]
pub struct Telemetry {
    /// Istio's standard metrics and the proxy's own.
    pub metrics: Metrics,
    /// The access log.
    pub access: AccessLog,
    /// Live request records.
    pub tap: Tap,
    forced: bool,
    logging: AtomicBool,
}

impl Telemetry {
    /// A sink as `options` say.
    pub fn new(options: TelemetryOptions) -> Self {
        Telemetry {
            metrics: Metrics::default(),
            access: AccessLog::default(),
            tap: Tap::default(),
            forced: options.access_log,
            logging: AtomicBool::new(options.access_log),
        }
    }

    /// Whether access logs are on.
    pub fn logging(&self) -> bool {
        self.logging.load(Ordering::Relaxed)
    }
}

impl TelemetrySink for Telemetry {
    fn wants_details(&self) -> bool {
        self.logging() || self.tap.active()
    }

    fn metrics(&self) -> Option<&Metrics> {
        Some(&self.metrics)
    }

    fn configure(&self, settings: &meshgate_model::settings::Telemetry) {
        self.logging.store(self.forced || settings.access_log, Ordering::Relaxed);
    }

    fn request(&self, record: &RequestRecord) {
        self.metrics.request(record);
        if record.details.is_some() {
            if self.logging() {
                self.access.request(record);
            }
            self.tap.publish(record);
        }
    }

    fn connection(&self, record: &ConnRecord) {
        self.metrics.connection(record);
        if self.logging() && record.opaque {
            self.access.connection(record);
        }
    }
}
