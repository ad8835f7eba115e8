//! The metrics push: the SDK's OTLP metric exporter behind its `PeriodicReader`,
//! wrapped so that a push the collector fails counts its metric streams as dropped.

use super::drops::dropped;
use super::Signal;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use std::time::Duration;

/// The SDK's metric exporter, counting the streams of a push that failed.
pub(super) struct CountingMetrics(pub(super) opentelemetry_otlp::MetricExporter);

impl PushMetricExporter for CountingMetrics {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.0.export(metrics).await;
        if result.is_err() {
            let streams: usize = metrics.scope_metrics().map(|s| s.metrics().count()).sum();
            dropped(Signal::Metrics).inc_by(streams as u64);
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.0.temporality()
    }
}
