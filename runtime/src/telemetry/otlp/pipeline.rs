//! Setting the pipeline up and down: one OTLP exporter per signal that has an
//! endpoint, wired to its queue or periodic reader, and the [`Pipeline`] that owns them
//! until shutdown flushes them.

use super::metric_push::CountingMetrics;
use super::processors::{LogQueue, LogSink, SpanQueue, SpanSink};
use super::queue::BatchQueue;
use super::resource::resource;
use super::settings::{check_url, endpoints, process_env, OtlpSettings};
use super::{OtlpError, Signal, DEFAULT_EXPORT_INTERVAL, SCOPE};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::logs::{LogExporter, SdkLoggerProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use std::time::Duration;

/// The running pipeline: owns the providers and their export threads.
pub struct Pipeline {
    tracer: Option<SdkTracerProvider>,
    logger: Option<SdkLoggerProvider>,
    meter: Option<SdkMeterProvider>,
    endpoints: Vec<(Signal, String)>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl Pipeline {
    /// Builds the exporters of every signal that has an endpoint; `None` when none has.
    /// Installs the meter provider globally, so instruments created afterwards
    /// (per workload) export.
    pub fn start(settings: &OtlpSettings) -> Result<Option<Self>, OtlpError> {
        let targets: Vec<(Signal, String)> = endpoints(settings.endpoint.as_deref(), process_env)
            .into_iter()
            .filter_map(|(s, url)| url.map(|u| (s, u)))
            .collect();
        if targets.is_empty() {
            return Ok(None);
        }
        for (signal, url) in &targets {
            check_url(*signal, url)?;
        }
        // https collectors: reqwest is built without a default crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resource = resource(settings);
        let interval = settings.export_interval.unwrap_or(DEFAULT_EXPORT_INTERVAL);
        let mut pipeline = Pipeline {
            tracer: None,
            logger: None,
            meter: None,
            endpoints: targets.clone(),
        };
        let built = |signal: Signal| {
            move |source| OtlpError::Exporter {
                signal: signal.as_str(),
                source,
            }
        };
        for (signal, url) in targets {
            match signal {
                Signal::Traces => {
                    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .with_endpoint(url)
                        .build()
                        .map_err(built(signal))?;
                    exporter.set_resource(&resource);
                    let queue = BatchQueue::start(signal, interval, SpanSink(exporter))?;
                    pipeline.tracer = Some(
                        SdkTracerProvider::builder()
                            .with_resource(resource.clone())
                            .with_span_processor(SpanQueue(queue))
                            .build(),
                    );
                }
                Signal::Logs => {
                    let mut exporter = opentelemetry_otlp::LogExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .with_endpoint(url)
                        .build()
                        .map_err(built(signal))?;
                    exporter.set_resource(&resource);
                    let queue = BatchQueue::start(signal, interval, LogSink(exporter))?;
                    pipeline.logger = Some(
                        SdkLoggerProvider::builder()
                            .with_resource(resource.clone())
                            .with_log_processor(LogQueue(queue))
                            .build(),
                    );
                }
                Signal::Metrics => {
                    let exporter = opentelemetry_otlp::MetricExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .with_endpoint(url)
                        .with_temporality(Temporality::Cumulative)
                        .build()
                        .map_err(built(signal))?;
                    let reader = PeriodicReader::builder(CountingMetrics(exporter))
                        .with_interval(interval)
                        .build();
                    let meter = SdkMeterProvider::builder()
                        .with_resource(resource.clone())
                        .with_reader(reader)
                        .build();
                    opentelemetry::global::set_meter_provider(meter.clone());
                    pipeline.meter = Some(meter);
                }
            }
        }
        Ok(Some(pipeline))
    }

    /// The URL of each exported signal.
    pub fn endpoints(&self) -> &[(Signal, String)] {
        &self.endpoints
    }

    /// The tracer spans are exported with, when traces are.
    pub fn tracer(&self) -> Option<opentelemetry_sdk::trace::SdkTracer> {
        use opentelemetry::trace::TracerProvider;
        self.tracer.as_ref().map(|p| p.tracer(SCOPE))
    }

    pub fn logger_provider(&self) -> Option<&SdkLoggerProvider> {
        self.logger.as_ref()
    }

    /// Sends what is queued and stops the export threads, giving up after about
    /// `timeout` per signal (a collector that does not answer must not hold the
    /// process).
    pub fn shutdown(self, timeout: Duration) {
        if let Some(p) = self.tracer {
            let _ = p.shutdown_with_timeout(timeout);
        }
        if let Some(p) = self.logger {
            let _ = p.shutdown_with_timeout(timeout);
        }
        if let Some(p) = self.meter {
            let _ = p.shutdown_with_timeout(timeout);
        }
    }
}
