//! One workload's OTLP instruments, recorded beside its Prometheus series (by
//! `WorkloadMetrics`): the same measurements, for a collector rather than a scraper.

use super::SCOPE;
use opentelemetry::KeyValue;
use std::time::Duration;

/// One workload's OTLP instruments: invocation count and duration, instantiation
/// time. Built from the global meter when the workload is, so a workload deployed
/// while metrics are exported records into the SDK; otherwise they are no-ops.
#[derive(Debug)]
pub(in crate::telemetry) struct WorkloadInstruments {
    invocations: opentelemetry::metrics::Counter<u64>,
    duration: opentelemetry::metrics::Histogram<f64>,
    cold_start: opentelemetry::metrics::Histogram<f64>,
    /// deployment, component, partition; the outcome is added per invocation.
    attributes: [KeyValue; 3],
}

/// Seconds, 0.5 ms .. ~16 s, as the Prometheus histogram.
fn invocation_boundaries() -> Vec<f64> {
    (0..16).map(|i| 0.0005 * 2f64.powi(i)).collect()
}

/// Seconds, 5 us .. ~80 ms.
fn cold_start_boundaries() -> Vec<f64> {
    (0..12).map(|i| 0.000_005 * 2.5f64.powi(i)).collect()
}

impl WorkloadInstruments {
    pub(in crate::telemetry) fn new(deployment: &str, component: &str, partition: &str) -> Self {
        let meter = opentelemetry::global::meter(SCOPE);
        let text = |s: &str| opentelemetry::Value::from(std::sync::Arc::<str>::from(s));
        Self {
            invocations: meter
                .u64_counter("wasmgate.invocations")
                .with_description("Requests and events a workload handled, by outcome")
                .with_unit("{invocation}")
                .build(),
            duration: meter
                .f64_histogram("wasmgate.invocation.duration")
                .with_description("Time from admission to the guest's return")
                .with_unit("s")
                .with_boundaries(invocation_boundaries())
                .build(),
            cold_start: meter
                .f64_histogram("wasmgate.cold_start.duration")
                .with_description("Time to instantiate the component")
                .with_unit("s")
                .with_boundaries(cold_start_boundaries())
                .build(),
            attributes: [
                KeyValue::new("wasmgate.deployment", text(deployment)),
                KeyValue::new("wasmgate.component", text(component)),
                KeyValue::new("wasmgate.partition", text(partition)),
            ],
        }
    }

    pub(in crate::telemetry) fn invocation(&self, elapsed: Duration, outcome: &'static str) {
        let [a, b, c] = &self.attributes;
        let attributes = [
            a.clone(),
            b.clone(),
            c.clone(),
            KeyValue::new("wasmgate.outcome", outcome),
        ];
        self.invocations.add(1, &attributes);
        self.duration.record(elapsed.as_secs_f64(), &attributes);
    }

    pub(in crate::telemetry) fn cold_start(&self, elapsed: Duration) {
        self.cold_start
            .record(elapsed.as_secs_f64(), &self.attributes);
    }
}
