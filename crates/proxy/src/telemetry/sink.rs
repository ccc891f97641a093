//! The sink every proxy runs: metrics always, access logs while they are on, `tap` while
//! someone listens, spans of sampled requests while tracing is on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use arc_swap::ArcSwapOption;
use meshgate_model::peer::Peer;

use super::export::{ExportStats, Exporter};

use super::access::AccessLog;
use super::metrics::Metrics;
use super::tap::Tap;
use super::{ConnRecord, RequestRecord, TelemetrySink};

/// How a proxy's telemetry starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct TelemetryOptions {
    /// Access logs on whatever the configuration says (`--access-log`).
    pub access_log: bool,
    /// `gateway` or `sidecar`, for the spans' resource.
    pub role: &'static str,
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
    role: &'static str,
    /// Sampling of new traces in millionths; `u32::MAX`: tracing off.
    sampling: AtomicU32,
    exporter: ArcSwapOption<Exporter>,
    /// What the span exporter did.
    pub spans: Arc<ExportStats>,
}

const TRACING_OFF: u32 = u32::MAX;

impl Telemetry {
    /// A sink as `options` say.
    pub fn new(options: TelemetryOptions) -> Self {
        Telemetry {
            metrics: Metrics::default(),
            access: AccessLog::default(),
            tap: Tap::default(),
            forced: options.access_log,
            logging: AtomicBool::new(options.access_log),
            role: if options.role.is_empty() { "proxy" } else { options.role },
            sampling: AtomicU32::new(TRACING_OFF),
            exporter: ArcSwapOption::empty(),
            spans: Arc::new(ExportStats::default()),
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

    fn tap(&self) -> Option<&Tap> {
        Some(&self.tap)
    }

    fn configure(&self, settings: &meshgate_model::settings::Telemetry, me: &Peer) {
        self.logging.store(self.forced || settings.access_log, Ordering::Relaxed);
        let Some(t) = &settings.tracing else {
            self.sampling.store(TRACING_OFF, Ordering::Relaxed);
            self.exporter.store(None);
            return;
        };
        let service = if &*me.app == meshgate_model::peer::UNKNOWN { &me.workload } else { &me.app };
        let service = format!("{service}.{}", me.namespace);
        let current = self.exporter.load();
        if current.as_ref().is_none_or(|e| e.target != t.exporter) {
            match Exporter::start(t.exporter.clone(), service, self.role, self.spans.clone()) {
                Some(e) => {
                    tracing::info!(exporter = ?t.exporter, sampling_ppm = t.sampling_ppm, "tracing on");
                    self.exporter.store(Some(Arc::new(e)));
                }
                None => tracing::warn!("tracing configured, but there is no runtime to export from"),
            }
        }
        self.sampling.store(t.sampling_ppm.min(1_000_000), Ordering::Relaxed);
    }

    fn trace_sampling(&self) -> Option<u32> {
        let s = self.sampling.load(Ordering::Relaxed);
        (s != TRACING_OFF).then_some(s)
    }

    fn request(&self, record: &RequestRecord) {
        self.metrics.request(record);
        if let Some(t) = record.trace.as_ref().filter(|t| t.sampled)
            && let Some(e) = &*self.exporter.load()
        {
            e.push(super::trace::spans(record, t));
        }
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
