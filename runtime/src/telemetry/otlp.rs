//! OTLP export of the host's spans, logs and a few metrics (HTTP/protobuf).
//!
//! The SDK's exporters do the encoding and the HTTP (reqwest's blocking client, already
//! in the tree for OCI pulls). Spans and log records do not go through the SDK's batch
//! processors: those drop silently when their queue is full, and the operator is owed a
//! count. [`BatchQueue`](queue::BatchQueue) is a bounded channel in front of one export thread per signal:
//! a record that does not fit, or a batch the collector refused or never answered, adds
//! to `wasmgate_telemetry_dropped_total{signal}`. Nothing on a request's path waits for
//! the collector: a full queue costs one failed `try_send`.
//!
//! Metrics are aggregated in place by the SDK (bounded by its cardinality limit) and
//! pushed by its `PeriodicReader`; an export that fails counts its metric streams as
//! dropped.
//!
//! One job per submodule: [`settings`] (where each signal goes), [`pipeline`] (start
//! and shutdown), [`resource`], [`queue`], [`processors`] (spans and logs into the
//! queues), [`metric_push`], [`instruments`] (per workload) and [`drops`] (the counters).

mod drops;
mod instruments;
mod metric_push;
mod pipeline;
mod processors;
mod queue;
mod resource;
mod settings;

pub use drops::dropped_total;
pub use pipeline::Pipeline;
pub use settings::{endpoints, process_env, redacted, OtlpSettings};

pub(super) use drops::dropped_family;
pub(super) use instruments::WorkloadInstruments;

use std::time::Duration;

/// Records waiting for export per signal; beyond it they are dropped and counted.
pub const QUEUE_CAPACITY: usize = 2048;
/// Most records in one export request.
pub const MAX_BATCH: usize = 512;
/// How often spans and logs are sent when fewer than [`MAX_BATCH`] are waiting, and
/// the default period of the metrics push.
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(5);
/// The scope every host span, log record and instrument is reported under.
pub const SCOPE: &str = "wasmgate";

/// One OTLP signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// The signal's own endpoint variable, used as is when set.
    fn endpoint_var(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            Signal::Logs => "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("invalid OTLP endpoint {url:?} for {signal}: expected an http:// or https:// URL")]
    Endpoint { signal: &'static str, url: String },
    #[error("cannot build the OTLP {signal} exporter")]
    Exporter {
        signal: &'static str,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot start the OTLP {signal} export thread")]
    Thread {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}
