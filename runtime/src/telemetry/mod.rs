//! Telemetry: what the host measures about itself and its workloads. A leaf module:
//! it imports nothing from the rest of the crate, so every other room may record into
//! it without the data flow turning back.
//!
//! Today it holds the Prometheus metrics ([`Metrics`]), rendered by the admin
//! listener's `/metrics` with the `prometheus-client` crate, which escapes every label
//! value: a name carrying `"` or a newline cannot forge a series.

mod metrics;

pub use metrics::{
    AotMetrics, FailureKind, Format, Metrics, OciMetrics, OciPull, PartitionSample,
    ReconcileMetrics, ReconcileOutcome, WfmMetrics, WorkloadMetrics,
};
