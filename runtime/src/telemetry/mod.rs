//! Telemetry: what the host measures about itself and its workloads. A leaf module:
//! it imports nothing from the rest of the crate, so every other room may record into
//! it without the data flow turning back.
//!
//! It holds the Prometheus metrics ([`Metrics`]), rendered by the admin listener's
//! `/metrics` with the `prometheus-client` crate, which escapes every label value: a
//! name carrying `"` or a newline cannot forge a series; and the OTLP pipeline
//! ([`otlp`], installed by [`init`]): the rest of the crate only opens `tracing` spans
//! and emits `tracing` events, and this module turns them into OTLP spans and log
//! records.

mod metrics;
pub mod otlp;
mod settings;
mod subscriber;

pub use otlp::{OtlpError, OtlpSettings, Pipeline, Signal};
pub use settings::{OtlpProtocol, TelemetrySettings};
pub use subscriber::{export_layers, init, set_log_filter, LogFilterChange, DEFAULT_LOG_FILTER};

pub use metrics::{
    AotMetrics, FailureKind, Format, Metrics, OciMetrics, OciPull, PartitionSample,
    ReconcileMetrics, ReconcileOutcome, ReloadResult, WfmMetrics, WorkloadMetrics,
};
