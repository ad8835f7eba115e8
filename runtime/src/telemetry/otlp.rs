//! OTLP export of the host's spans, logs and a few metrics (HTTP/protobuf).
//!
//! The SDK's exporters do the encoding and the HTTP (reqwest's blocking client, already
//! in the tree for OCI pulls). Spans and log records do not go through the SDK's batch
//! processors: those drop silently when their queue is full, and the operator is owed a
//! count. [`BatchQueue`] is a bounded channel in front of one export thread per signal:
//! a record that does not fit, or a batch the collector refused or never answered, adds
//! to `wasmgate_telemetry_dropped_total{signal}`. Nothing on a request's path waits for
//! the collector: a full queue costs one failed `try_send`.
//!
//! Metrics are aggregated in place by the SDK (bounded by its cardinality limit) and
//! pushed by its `PeriodicReader`; an export that fails counts its metric streams as
//! dropped.

use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{
    LogBatch, LogExporter, LogProcessor, SdkLogRecord, SdkLoggerProvider,
};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Records waiting for export per signal; beyond it they are dropped and counted.
pub const QUEUE_CAPACITY: usize = 2048;
/// Most records in one export request.
pub const MAX_BATCH: usize = 512;
/// How often spans and logs are sent when fewer than [`MAX_BATCH`] are waiting, and
/// the default period of the metrics push.
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(5);
/// The scope every host span, log record and instrument is reported under.
pub const SCOPE: &str = "wasmgate";

/// Where the pipeline sends what, as the operator configured it.
#[derive(Debug, Clone, Default)]
pub struct OtlpSettings {
    /// `[telemetry] otlp-endpoint`: the collector's base URL (`/v1/traces` etc. are
    /// appended), overridden by the `OTEL_EXPORTER_OTLP_*ENDPOINT` variables.
    pub endpoint: Option<String>,
    /// Period of span / log batches and of the metrics push.
    pub export_interval: Option<Duration>,
    /// The host's Margo device id, reported as `margo.device.id`.
    pub device_id: Option<String>,
}

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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct SignalLabels {
    signal: &'static str,
}

/// The drop counters are process-wide, like the tracing subscriber that feeds them:
/// the pipeline starts before the host's registry exists, and every registry shows
/// the same series.
static DROPPED: LazyLock<Family<SignalLabels, Counter>> = LazyLock::new(|| {
    let family = Family::<SignalLabels, Counter>::default();
    for signal in Signal::ALL {
        // Shown as 0 from the start, so a rise is visible.
        drop(family.get_or_create(&SignalLabels {
            signal: signal.as_str(),
        }));
    }
    family
});

/// `wasmgate_telemetry_dropped_total{signal}` for the Prometheus registry.
pub(super) fn dropped_family() -> Family<SignalLabels, Counter> {
    DROPPED.clone()
}

fn dropped(signal: Signal) -> Counter {
    DROPPED
        .get_or_create(&SignalLabels {
            signal: signal.as_str(),
        })
        .clone()
}

/// Records of `signal` dropped so far.
pub fn dropped_total(signal: Signal) -> u64 {
    dropped(signal).get()
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

/// The URL each signal goes to, `None` for a signal with no endpoint. Per signal:
/// its own variable as is, else `OTEL_EXPORTER_OTLP_ENDPOINT`, else the file's
/// `otlp-endpoint`, each base followed by `/v1/<signal>`.
pub fn endpoints(
    file: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> [(Signal, Option<String>); 3] {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let base = set("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| file.map(str::to_owned));
    Signal::ALL.map(|signal| {
        let url = set(signal.endpoint_var()).or_else(|| {
            base.as_ref()
                .map(|b| format!("{}{}", b.trim().trim_end_matches('/'), signal.path()))
        });
        (signal, url)
    })
}

/// The process environment, as [`endpoints`] reads it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `url` without credentials or query, for reports (the capabilities' extensions).
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "invalid".into(),
    }
}

fn check_url(signal: Signal, url: &str) -> Result<(), OtlpError> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(OtlpError::Endpoint {
            signal: signal.as_str(),
            url: url.to_owned(),
        }),
    }
}

/// The resource of every signal: ours first, then `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_SERVICE_NAME`, which win for the keys they set.
fn resource(settings: &OtlpSettings) -> Resource {
    use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector};
    let mut ours = vec![
        KeyValue::new("service.name", "wasmgate"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Some(host) = sysinfo::System::host_name() {
        ours.push(KeyValue::new("host.name", host));
    }
    if let Some(id) = &settings.device_id {
        ours.push(KeyValue::new("margo.device.id", id.clone()));
    }
    let from_env = EnvResourceDetector::new().detect();
    let mut builder = Resource::builder_empty()
        .with_attributes(ours)
        .with_attributes(
            from_env
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        );
    if let Some(name) = process_env("OTEL_SERVICE_NAME").filter(|n| !n.is_empty()) {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

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

/// One workload's OTLP instruments: invocation count and duration, instantiation
/// time. Built from the global meter when the workload is, so a workload deployed
/// while metrics are exported records into the SDK; otherwise they are no-ops.
#[derive(Debug)]
pub(super) struct WorkloadInstruments {
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
    pub(super) fn new(deployment: &str, component: &str, partition: &str) -> Self {
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

    pub(super) fn invocation(&self, elapsed: Duration, outcome: &'static str) {
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

    pub(super) fn cold_start(&self, elapsed: Duration) {
        self.cold_start
            .record(elapsed.as_secs_f64(), &self.attributes);
    }
}

/// What a [`BatchQueue`]'s thread does with a batch.
trait Sink<T>: Send + 'static {
    fn export(&mut self, batch: Vec<T>) -> OTelSdkResult;
    fn shutdown(&mut self, timeout: Duration);
}

enum Message<T> {
    Record(T),
    /// Export what came before, then answer.
    Flush(SyncSender<()>),
    /// Export what came before, stop, then answer.
    Stop(SyncSender<()>),
}

/// A bounded queue of records and the thread that exports them in batches.
struct BatchQueue<T> {
    signal: Signal,
    tx: SyncSender<Message<T>>,
    dropped: Counter,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<T> std::fmt::Debug for BatchQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchQueue")
            .field("signal", &self.signal)
            .finish()
    }
}

impl<T: Send + 'static> BatchQueue<T> {
    fn start(signal: Signal, interval: Duration, sink: impl Sink<T>) -> Result<Self, OtlpError> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let dropped = dropped(signal);
        let counter = dropped.clone();
        let thread = std::thread::Builder::new()
            .name(format!("otlp-{}", signal.as_str()))
            .spawn(move || run_batches(rx, sink, interval, counter))
            .map_err(|source| OtlpError::Thread {
                signal: signal.as_str(),
                source,
            })?;
        Ok(Self {
            signal,
            tx,
            dropped,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Never waits: a full queue drops the record and counts it.
    fn push(&self, record: T) {
        if self.tx.try_send(Message::Record(record)).is_err() {
            self.dropped.inc();
        }
    }

    /// Sends `make(ack)` and waits for the answer, both within `timeout`.
    fn request(&self, make: fn(SyncSender<()>) -> Message<T>, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack) = mpsc::sync_channel(1);
        let mut message = make(ack_tx);
        // The queue may be full of records: retry until there is room or time is up.
        loop {
            match self.tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(timeout)),
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
            }
        }
        ack.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }

    fn flush(&self, timeout: Duration) -> OTelSdkResult {
        self.request(Message::Flush, timeout)
    }

    fn stop(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.request(Message::Stop, timeout);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // Joined only once it answered: a thread stuck on a silent collector is left
        // to the process exit.
        if result.is_ok() {
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
        result
    }
}

/// The export thread: a batch goes out when it is full, when `interval` passed, or
/// when asked.
fn run_batches<T: Send + 'static>(
    rx: Receiver<Message<T>>,
    mut sink: impl Sink<T>,
    interval: Duration,
    dropped: Counter,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut due = Instant::now() + interval;
    let send = |batch: &mut Vec<T>, sink: &mut dyn Sink<T>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let full = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
        if sink.export(full).is_err() {
            dropped.inc_by(n);
        }
    };
    loop {
        match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(Message::Record(record)) => {
                batch.push(record);
                if batch.len() >= MAX_BATCH {
                    send(&mut batch, &mut sink);
                }
            }
            Ok(Message::Flush(ack)) => {
                send(&mut batch, &mut sink);
                let _ = ack.send(());
            }
            Ok(Message::Stop(ack)) => {
                send(&mut batch, &mut sink);
                sink.shutdown(Duration::from_secs(1));
                let _ = ack.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch, &mut sink);
                due = Instant::now() + interval;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch, &mut sink);
                return;
            }
        }
    }
}

struct SpanSink(opentelemetry_otlp::SpanExporter);

impl Sink<SpanData> for SpanSink {
    fn export(&mut self, batch: Vec<SpanData>) -> OTelSdkResult {
        // The blocking client does its I/O inside the future: no runtime is needed.
        futures_executor::block_on(self.0.export(batch))
    }

    fn shutdown(&mut self, timeout: Duration) {
        let _ = self.0.shutdown_with_timeout(timeout);
    }
}

struct LogSink(opentelemetry_otlp::LogExporter);

impl Sink<(SdkLogRecord, InstrumentationScope)> for LogSink {
    fn export(&mut self, batch: Vec<(SdkLogRecord, InstrumentationScope)>) -> OTelSdkResult {
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|(r, s)| (r, s)).collect();
        futures_executor::block_on(self.0.export(LogBatch::new(&refs)))
    }

    fn shutdown(&mut self, timeout: Duration) {
        let _ = self.0.shutdown_with_timeout(timeout);
    }
}

#[derive(Debug)]
struct SpanQueue(BatchQueue<SpanData>);

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush(DEFAULT_EXPORT_INTERVAL)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.stop(timeout)
    }
}

#[derive(Debug)]
struct LogQueue(BatchQueue<(SdkLogRecord, InstrumentationScope)>);

impl LogProcessor for LogQueue {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.0.push((record.clone(), scope.clone()));
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush(DEFAULT_EXPORT_INTERVAL)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.stop(timeout)
    }
}

/// The SDK's metric exporter, counting the streams of a push that failed.
struct CountingMetrics(opentelemetry_otlp::MetricExporter);

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn urls(found: [(Signal, Option<String>); 3]) -> Vec<Option<String>> {
        found.into_iter().map(|(_, u)| u).collect()
    }

    #[test]
    fn endpoints_follow_the_variables_then_the_file() {
        assert_eq!(urls(endpoints(None, env(&[]))), vec![None, None, None]);
        assert_eq!(
            urls(endpoints(Some("http://c:4318/"), env(&[]))),
            vec![
                Some("http://c:4318/v1/traces".into()),
                Some("http://c:4318/v1/metrics".into()),
                Some("http://c:4318/v1/logs".into())
            ]
        );
        let found = endpoints(
            Some("http://file:4318"),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:1/exact"),
            ]),
        );
        assert_eq!(
            urls(found),
            vec![
                Some("http://env:4318/v1/traces".into()),
                Some("http://env:4318/v1/metrics".into()),
                Some("http://logs:1/exact".into())
            ]
        );
        // One signal alone, no base.
        let found = endpoints(
            None,
            env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t")]),
        );
        assert_eq!(urls(found), vec![Some("http://t".into()), None, None]);
    }

    #[test]
    fn reports_never_carry_credentials() {
        assert_eq!(
            redacted("https://user:secret@collector:4318/v1/traces?token=x"),
            "https://collector:4318/v1/traces"
        );
        assert!(check_url(Signal::Logs, "collector:4318").is_err());
        assert!(check_url(Signal::Logs, "ftp://collector").is_err());
        assert!(check_url(Signal::Logs, "http://127.0.0.1:4318/v1/logs").is_ok());
    }

    struct Recorder {
        batches: std::sync::Arc<Mutex<Vec<usize>>>,
        fail: bool,
        delay: Duration,
    }

    impl Sink<u32> for Recorder {
        fn export(&mut self, batch: Vec<u32>) -> OTelSdkResult {
            std::thread::sleep(self.delay);
            self.batches.lock().unwrap().push(batch.len());
            if self.fail {
                Err(OTelSdkError::InternalFailure("collector away".into()))
            } else {
                Ok(())
            }
        }

        fn shutdown(&mut self, _: Duration) {}
    }

    #[test]
    fn full_queues_and_failed_batches_are_counted_and_pushing_never_waits() {
        let batches = std::sync::Arc::new(Mutex::new(Vec::new()));
        let before = dropped_total(Signal::Logs);
        // A collector that takes a second per batch and then refuses it.
        let queue = BatchQueue::start(
            Signal::Logs,
            Duration::from_secs(60),
            Recorder {
                batches: batches.clone(),
                fail: true,
                delay: Duration::from_millis(300),
            },
        )
        .unwrap();
        let started = Instant::now();
        let n = QUEUE_CAPACITY * 3;
        for i in 0..n {
            queue.push(i as u32);
        }
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "pushing {n} records took {:?}",
            started.elapsed()
        );
        queue.stop(Duration::from_secs(30)).unwrap();
        let exported: usize = batches.lock().unwrap().iter().sum();
        assert!(batches.lock().unwrap().iter().all(|b| *b <= MAX_BATCH));
        // Every record is accounted for: exported (and refused) or dropped at the door.
        let counted = dropped_total(Signal::Logs) - before;
        assert_eq!(counted as usize, n, "exported {exported}");
    }

    #[test]
    fn a_flush_sends_what_is_queued() {
        let batches = std::sync::Arc::new(Mutex::new(Vec::new()));
        let queue = BatchQueue::start(
            Signal::Traces,
            Duration::from_secs(60),
            Recorder {
                batches: batches.clone(),
                fail: false,
                delay: Duration::ZERO,
            },
        )
        .unwrap();
        for i in 0..10 {
            queue.push(i);
        }
        queue.flush(Duration::from_secs(5)).unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![10]);
        queue.stop(Duration::from_secs(5)).unwrap();
        assert!(queue.flush(Duration::from_millis(50)).is_err());
    }
}
