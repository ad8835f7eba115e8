//! The Prometheus metrics of one host: a `prometheus-client` [`Registry`] of typed
//! families and the handles the code paths record into.
//!
//! Hot paths never look a label set up: a workload takes its [`WorkloadMetrics`] once,
//! when it is built, and each request only bumps atomics and one histogram. Series of
//! a workload leave the output when the last workload using them is dropped, so the
//! output (and memory) follows what runs, not every name ever deployed.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Locks `m`, recovering from a panic elsewhere: metrics stay readable whatever
/// happened to the thread that held the lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4, what `promtool check metrics` parses.
    Prometheus,
    /// OpenMetrics 1.0 text, for scrapers that ask for it in `Accept`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header asks for it, the classic text otherwise
    /// (Prometheus itself sends both and prefers OpenMetrics).
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Why an invocation failed, as the `kind` label of `wasmgate_invocation_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The guest trapped (a panic, `unreachable`, a stack overflow...).
    Trap,
    /// Stopped at its deadline.
    Deadline,
    /// A memory growth refused by the instance or partition limit.
    Memory,
    /// Refused at admission: the partition's concurrency limit stayed full.
    Queue,
    /// Anything else (the guest could not be linked or given its directory, ...).
    Error,
}

impl FailureKind {
    pub const ALL: [FailureKind; 5] = [
        Self::Trap,
        Self::Deadline,
        Self::Memory,
        Self::Queue,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::Queue => "queue",
            Self::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl EncodeLabelValue for FailureKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WorkloadLabels {
    deployment: String,
    component: String,
    partition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    deployment: String,
    component: String,
    partition: String,
    kind: FailureKind,
}

impl FailureLabels {
    fn new(w: &WorkloadLabels, kind: FailureKind) -> Self {
        Self {
            deployment: w.deployment.clone(),
            component: w.component.clone(),
            partition: w.partition.clone(),
            kind,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// How a configuration reload (SIGHUP) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    /// Invalid, needing a restart, or not applicable: the running one stays.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindOutcomeLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// One request or event, admission to the guest's return: 0.5 ms .. ~16 s.
fn invocation_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Instantiation from the pre-linked component, ~11 us on the pooling allocator:
/// 5 us .. ~80 ms.
fn cold_start_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_005, 2.5, 12))
}

/// Compiles, pulls, reconcile passes and WFM round trips: 1 ms .. ~130 s.
fn slow_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// The per-workload families, shared by every [`WorkloadMetrics`] handle.
#[derive(Debug)]
struct WorkloadFamilies {
    invocations: Family<WorkloadLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: HistogramFamily<WorkloadLabels>,
    cold_start: HistogramFamily<WorkloadLabels>,
    /// Label set -> the live handle, so a new revision of a workload continues the
    /// counters of the one it replaces and the last one out removes the series.
    live: Mutex<HashMap<WorkloadLabels, Weak<WorkloadSeries>>>,
}

impl Default for WorkloadFamilies {
    fn default() -> Self {
        Self {
            invocations: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(invocation_histogram),
            cold_start: Family::new_with_constructor(cold_start_histogram),
            live: Mutex::new(HashMap::new()),
        }
    }
}

impl WorkloadFamilies {
    fn series(self: &Arc<Self>, labels: WorkloadLabels) -> Arc<WorkloadSeries> {
        let mut live = lock(&self.live);
        if let Some(found) = live.get(&labels).and_then(Weak::upgrade) {
            return found;
        }
        let series = Arc::new(WorkloadSeries {
            invocations: self.invocations.get_or_create_owned(&labels),
            failures: FailureKind::ALL.map(|k| {
                self.failures
                    .get_or_create_owned(&FailureLabels::new(&labels, k))
            }),
            duration: self.duration.get_or_create_owned(&labels),
            cold_start: self.cold_start.get_or_create_owned(&labels),
            otlp: super::otlp::WorkloadInstruments::new(
                &labels.deployment,
                &labels.component,
                &labels.partition,
            ),
            owner: Arc::downgrade(self),
            labels: labels.clone(),
        });
        live.insert(labels, Arc::downgrade(&series));
        series
    }
}

#[derive(Debug)]
struct WorkloadSeries {
    labels: WorkloadLabels,
    invocations: Counter,
    failures: [Counter; FailureKind::ALL.len()],
    duration: Histogram,
    cold_start: Histogram,
    /// The same measurements over OTLP (no-ops while no pipeline exports metrics).
    otlp: super::otlp::WorkloadInstruments,
    /// Empty for detached handles (benchmarks, unit tests).
    owner: Weak<WorkloadFamilies>,
}

impl Drop for WorkloadSeries {
    fn drop(&mut self) {
        let Some(families) = self.owner.upgrade() else {
            return;
        };
        let mut live = lock(&families.live);
        // A handle created while this one was being dropped took over the label set
        // (and these very metrics): then the series stay.
        let me: *const WorkloadSeries = self;
        if !live
            .get(&self.labels)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), me))
        {
            return;
        }
        live.remove(&self.labels);
        families.invocations.remove(&self.labels);
        for kind in FailureKind::ALL {
            families
                .failures
                .remove(&FailureLabels::new(&self.labels, kind));
        }
        families.duration.remove(&self.labels);
        families.cold_start.remove(&self.labels);
    }
}

/// What one workload (deployment, component, partition) records per invocation.
/// Cloning shares the series.
#[derive(Debug, Clone)]
pub struct WorkloadMetrics(Arc<WorkloadSeries>);

impl WorkloadMetrics {
    /// Handles registered nowhere: they count, but no `/metrics` shows them.
    pub fn detached() -> Self {
        let labels = WorkloadLabels {
            deployment: String::new(),
            component: String::new(),
            partition: String::new(),
        };
        Self(Arc::new(WorkloadSeries {
            labels,
            invocations: Counter::default(),
            failures: FailureKind::ALL.map(|_| Counter::default()),
            duration: invocation_histogram(),
            cold_start: cold_start_histogram(),
            otlp: super::otlp::WorkloadInstruments::new("", "", ""),
            owner: Weak::new(),
        }))
    }

    /// One finished request or event, successful when `failure` is `None`.
    pub fn invocation(&self, elapsed: Duration, failure: Option<FailureKind>) {
        let s = &self.0;
        s.invocations.inc();
        if let Some(kind) = failure {
            s.failures[kind.index()].inc();
        }
        s.duration.observe(elapsed.as_secs_f64());
        s.otlp
            .invocation(elapsed, failure.map_or("ok", FailureKind::as_str));
    }

    /// One instantiation of the component.
    pub fn cold_start(&self, elapsed: Duration) {
        self.0.cold_start.observe(elapsed.as_secs_f64());
        self.0.otlp.cold_start(elapsed);
    }

    pub fn invocations(&self) -> u64 {
        self.0.invocations.get()
    }

    pub fn failures(&self, kind: FailureKind) -> u64 {
        self.0.failures[kind.index()].get()
    }
}

/// Budget use of one partition, read when `/metrics` is scraped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionSample {
    /// `DEVICE/PARTITION`.
    pub partition: String,
    pub memory_used: u64,
    pub memory_limit: u64,
    pub cpu_throttled_seconds: f64,
    pub storage_used: u64,
    pub storage_quota: u64,
    pub active_instances: u32,
    pub concurrency_limit: u32,
}

/// Encodes the partition samples of the scrape in progress.
#[derive(Debug, Default)]
struct PartitionCollector {
    samples: Mutex<Vec<PartitionSample>>,
}

enum Sampled {
    Gauge(fn(&PartitionSample) -> f64),
    Counter(fn(&PartitionSample) -> f64),
}

const PARTITION_METRICS: [(&str, &str, Sampled); 7] = [
    (
        "wasmgate_partition_memory_bytes",
        "Linear memory held by the partition's live instances",
        Sampled::Gauge(|s| s.memory_used as f64),
    ),
    (
        "wasmgate_partition_memory_limit_bytes",
        "The partition's memory budget for all its live instances",
        Sampled::Gauge(|s| s.memory_limit as f64),
    ),
    (
        "wasmgate_partition_cpu_throttled_seconds",
        "Time the partition's guests were held back by its CPU share",
        Sampled::Counter(|s| s.cpu_throttled_seconds),
    ),
    (
        "wasmgate_partition_storage_bytes",
        "Bytes the partition stores: key-value data and files",
        Sampled::Gauge(|s| s.storage_used as f64),
    ),
    (
        "wasmgate_partition_storage_quota_bytes",
        "The partition's storage quota",
        Sampled::Gauge(|s| s.storage_quota as f64),
    ),
    (
        "wasmgate_partition_active_instances",
        "Instances running in the partition now",
        Sampled::Gauge(|s| f64::from(s.active_instances)),
    ),
    (
        "wasmgate_partition_concurrency_limit",
        "Most instances the partition runs at once",
        Sampled::Gauge(|s| f64::from(s.concurrency_limit)),
    ),
];

impl Collector for PartitionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = lock(&self.samples);
        for (name, help, read) in &PARTITION_METRICS {
            let kind = match read {
                Sampled::Gauge(_) => MetricType::Gauge,
                Sampled::Counter(_) => MetricType::Counter,
            };
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for s in samples.iter() {
                let labels = [("partition", s.partition.as_str())];
                let metric = family.encode_family(&labels)?;
                match read {
                    Sampled::Gauge(f) => ConstGauge::new(f(s)).encode(metric)?,
                    Sampled::Counter(f) => ConstCounter::new(f(s)).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}

/// Reconcile passes and what they did to deployments.
#[derive(Debug, Clone)]
pub struct ReconcileMetrics {
    duration: Histogram,
    outcomes: Family<OutcomeLabels, Counter>,
}

/// What a reconcile pass did to one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// A new or changed deployment now serves.
    Installed,
    /// A deployment could not be applied (invalid, unplaceable, unfetchable, ...).
    Failed,
    /// A deployment left the desired state and was stopped.
    Removed,
}

impl Default for ReconcileMetrics {
    fn default() -> Self {
        Self {
            duration: slow_histogram(),
            outcomes: Family::default(),
        }
    }
}

impl ReconcileMetrics {
    pub fn pass(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn outcome(&self, outcome: ReconcileOutcome) {
        let outcome = match outcome {
            ReconcileOutcome::Installed => "installed",
            ReconcileOutcome::Failed => "failed",
            ReconcileOutcome::Removed => "removed",
        };
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// The AOT cache of compiled components.
#[derive(Debug, Clone)]
pub struct AotMetrics {
    hits: Counter,
    misses: Counter,
    compile: Histogram,
}

impl Default for AotMetrics {
    fn default() -> Self {
        Self {
            hits: Counter::default(),
            misses: Counter::default(),
            compile: slow_histogram(),
        }
    }
}

impl AotMetrics {
    /// A component mapped from an intact cache entry.
    pub fn hit(&self) {
        self.hits.inc();
    }

    /// A component compiled (no usable entry), taking `elapsed`.
    pub fn miss(&self, elapsed: Duration) {
        self.misses.inc();
        self.compile.observe(elapsed.as_secs_f64());
    }

    pub fn hits(&self) -> u64 {
        self.hits.get()
    }

    pub fn misses(&self) -> u64 {
        self.misses.get()
    }
}

/// What an OCI request fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciPull {
    Manifest,
    Layer,
}

/// Pulls of Wasm components from OCI registries.
#[derive(Debug, Clone)]
pub struct OciMetrics {
    bytes: Counter,
    duration: HistogramFamily<KindOutcomeLabels>,
}

impl Default for OciMetrics {
    fn default() -> Self {
        Self {
            bytes: Counter::default(),
            duration: Family::new_with_constructor(slow_histogram),
        }
    }
}

impl OciMetrics {
    /// One manifest or layer request, successful or not, and how long it took.
    pub fn pull(&self, what: OciPull, ok: bool, elapsed: Duration) {
        let labels = KindOutcomeLabels {
            kind: match what {
                OciPull::Manifest => "manifest",
                OciPull::Layer => "layer",
            },
            outcome: if ok { "ok" } else { "error" },
        };
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Layer bytes received from a registry.
    pub fn bytes(&self, n: u64) {
        self.bytes.inc_by(n);
    }

    pub fn bytes_total(&self) -> u64 {
        self.bytes.get()
    }
}

/// The Margo WFM client: round trips, the status outbox, refused capabilities.
///
/// Wiring (in `margo`): after each WFM request,
/// `wfm.request("state" | "capabilities" | "status" | "bundle" | "deployment", outcome, elapsed)`
/// with `outcome` one of `"ok"`, `"not-modified"`, `"rejected"` (a 4xx answer),
/// `"error"` (5xx, transport, timeout); `wfm.outbox_depth(n)` whenever the outbox
/// changes; `wfm.capabilities_refused(device_id)` when the WFM refuses a device's
/// capabilities report; `wfm.state_damaged(record)` when a state record of the client
/// is found damaged and `wfm.accepted_state_unreadable(..)` while the accepted record
/// cannot be read. Kinds, outcomes and records are `&'static str` so the label values
/// stay a fixed, small set.
#[derive(Debug, Clone)]
pub struct WfmMetrics {
    requests: HistogramFamily<KindOutcomeLabels>,
    outbox: Gauge,
    refused: Family<DeviceLabels, Counter>,
    damaged: Family<RecordLabels, Counter>,
    unreadable: Gauge,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RecordLabels {
    record: &'static str,
}

impl Default for WfmMetrics {
    fn default() -> Self {
        Self {
            requests: Family::new_with_constructor(slow_histogram),
            outbox: Gauge::default(),
            refused: Family::default(),
            damaged: Family::default(),
            unreadable: Gauge::default(),
        }
    }
}

impl WfmMetrics {
    /// One request to the WFM of `kind` that ended with `outcome` after `elapsed`.
    pub fn request(&self, kind: &'static str, outcome: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&KindOutcomeLabels { kind, outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// Status reports waiting in the durable outbox.
    pub fn outbox_depth(&self, n: usize) {
        self.outbox.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A state record of the WFM client (`accepted`, `outbox-entry`, `last-reported`,
    /// `capabilities-reported`) was found unreadable or damaged.
    pub fn state_damaged(&self, record: &'static str) {
        self.damaged.get_or_create(&RecordLabels { record }).inc();
    }

    /// How many times `record` was found damaged.
    pub fn damaged(&self, record: &'static str) -> u64 {
        self.damaged.get_or_create(&RecordLabels { record }).get()
    }

    /// Whether the accepted-state record (the replay guard) cannot be read now.
    pub fn accepted_state_unreadable(&self, unreadable: bool) {
        self.unreadable.set(i64::from(unreadable));
    }

    /// The WFM refused the capabilities report of `device` (a device or partition id).
    pub fn capabilities_refused(&self, device: &str) {
        self.refused
            .get_or_create(&DeviceLabels {
                device: device.to_owned(),
            })
            .inc();
    }
}

/// Every metric of the host, and `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    workloads: Arc<WorkloadFamilies>,
    partitions: Arc<PartitionCollector>,
    /// One scrape at a time sees its own partition samples.
    scrape: Mutex<()>,
    pub reconcile: ReconcileMetrics,
    pub aot: AotMetrics,
    pub oci: OciMetrics,
    pub wfm: WfmMetrics,
    reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let workloads = Arc::new(WorkloadFamilies::default());
        let partitions = Arc::new(PartitionCollector::default());
        let (reconcile, aot, oci, wfm) = (
            ReconcileMetrics::default(),
            AotMetrics::default(),
            OciMetrics::default(),
            WfmMetrics::default(),
        );
        let r = &mut registry;
        r.register(
            "wasmgate_invocations",
            "Requests and events a workload handled, failed or not",
            workloads.invocations.clone(),
        );
        r.register(
            "wasmgate_invocation_failures",
            "Invocations that produced no result, by kind (trap, deadline, memory, queue, error)",
            workloads.failures.clone(),
        );
        r.register(
            "wasmgate_invocation_duration_seconds",
            "Time from admission to the guest's return, per request or event",
            workloads.duration.clone(),
        );
        r.register(
            "wasmgate_cold_start_seconds",
            "Time to instantiate the component for one request or event",
            workloads.cold_start.clone(),
        );
        r.register_collector(Box::new(partitions.clone()));
        r.register(
            "wasmgate_reconcile_duration_seconds",
            "Duration of reconcile passes",
            reconcile.duration.clone(),
        );
        r.register(
            "wasmgate_reconcile_deployments",
            "Deployments a reconcile pass installed, failed to apply or removed",
            reconcile.outcomes.clone(),
        );
        r.register(
            "wasmgate_aot_cache_hits",
            "Components mapped from the AOT cache",
            aot.hits.clone(),
        );
        r.register(
            "wasmgate_aot_cache_misses",
            "Components compiled because the AOT cache had no usable entry",
            aot.misses.clone(),
        );
        r.register(
            "wasmgate_aot_compile_duration_seconds",
            "Time to compile a component on an AOT cache miss",
            aot.compile.clone(),
        );
        r.register(
            "wasmgate_oci_pull_bytes",
            "Component layer bytes received from OCI registries",
            oci.bytes.clone(),
        );
        r.register(
            "wasmgate_oci_pull_duration_seconds",
            "Duration of OCI manifest and layer requests, by outcome",
            oci.duration.clone(),
        );
        r.register(
            "wasmgate_wfm_request_duration_seconds",
            "Round trips to the Margo WFM, by request kind and outcome",
            wfm.requests.clone(),
        );
        r.register(
            "wasmgate_wfm_outbox_depth",
            "Status reports waiting in the durable outbox",
            wfm.outbox.clone(),
        );
        r.register(
            "wasmgate_telemetry_dropped",
            "Spans, log records and metric streams the OTLP pipeline dropped: its queue was full or the collector failed the export",
            super::otlp::dropped_family(),
        );
        r.register(
            "wasmgate_wfm_capabilities_refused",
            "Capabilities reports the WFM refused, per device",
            wfm.refused.clone(),
        );
        r.register(
            "wasmgate_wfm_state_damaged",
            "WFM client state records found unreadable or damaged, by record",
            wfm.damaged.clone(),
        );
        r.register(
            "wasmgate_wfm_accepted_state_unreadable",
            "1 while the accepted-manifest record cannot be read and no desired state is accepted",
            wfm.unreadable.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        for result in ["applied", "refused"] {
            // Both series from the start: a scraper sees 0 rather than no series.
            let _ = reloads.get_or_create(&ResultLabels { result });
        }
        r.register(
            "wasmgate_config_reloads",
            "Configuration reloads (SIGHUP), by result: applied, or refused with the running configuration kept",
            reloads.clone(),
        );
        Self {
            registry,
            workloads,
            partitions,
            scrape: Mutex::new(()),
            reconcile,
            aot,
            oci,
            wfm,
            reloads,
        }
    }

    pub fn config_reload(&self, result: ReloadResult) {
        let result = match result {
            ReloadResult::Applied => "applied",
            ReloadResult::Refused => "refused",
        };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The handles of one workload; call once when it is built.
    pub fn workload(&self, deployment: &str, component: &str, partition: &str) -> WorkloadMetrics {
        WorkloadMetrics(self.workloads.series(WorkloadLabels {
            deployment: deployment.to_owned(),
            component: component.to_owned(),
            partition: partition.to_owned(),
        }))
    }

    /// The exposition of every metric, with `partitions` as the budget samples.
    pub fn render(&self, partitions: Vec<PartitionSample>, format: Format) -> String {
        let _scrape = lock(&self.scrape);
        *lock(&self.partitions.samples) = partitions;
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in the
        // crate, and a partial answer beats a panic in the admin listener.
        let result = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
        if let Err(err) = result {
            tracing::error!(error = %err, "cannot encode the metrics");
        }
        lock(&self.partitions.samples).clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(partition: &str) -> PartitionSample {
        PartitionSample {
            partition: partition.into(),
            memory_used: 1024,
            memory_limit: 4096,
            cpu_throttled_seconds: 0.25,
            storage_used: 10,
            storage_quota: 100,
            active_instances: 1,
            concurrency_limit: 8,
        }
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let metrics = Metrics::new();
        let evil = "evil\"} 1\nwasmgate_invocations_total{deployment=\"forged\\";
        let w = metrics.workload(evil, "c", "edge-01/p1");
        w.invocation(Duration::from_millis(3), Some(FailureKind::Trap));
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let out = metrics.render(vec![sample("edge-01/p\"1\n")], format);
            assert!(
                out.contains(
                    r#"wasmgate_invocations_total{deployment="evil\"} 1\nwasmgate_invocations_total{deployment=\"forged\\",component="c",partition="edge-01/p1"} 1"#
                ),
                "{out}"
            );
            assert!(
                out.contains(r#"wasmgate_partition_memory_bytes{partition="edge-01/p\"1\n"} 1024"#),
                "{out}"
            );
            // Every sample line starts with a metric name: no forged line begins a row.
            for line in out.lines() {
                assert!(
                    line.starts_with("wasmgate_") || line.starts_with('#'),
                    "line {line:?} in\n{out}"
                );
                assert!(!line.starts_with("wasmgate_invocations_total{deployment=\"forged"));
            }
        }
    }

    #[test]
    fn series_follow_the_live_workloads() {
        let metrics = Metrics::new();
        let old = metrics.workload("app", "c", "edge-01/p1");
        old.invocation(Duration::from_millis(1), None);
        // The next revision continues the counters of the one it replaces.
        let new = metrics.workload("app", "c", "edge-01/p1");
        new.invocation(Duration::from_millis(1), Some(FailureKind::Deadline));
        drop(old);
        assert_eq!(new.invocations(), 2);
        assert_eq!(new.failures(FailureKind::Deadline), 1);
        let out = metrics.render(Vec::new(), Format::Prometheus);
        assert!(out.contains(r#"wasmgate_invocations_total{deployment="app",component="c",partition="edge-01/p1"} 2"#), "{out}");
        assert!(out.contains(r#"kind="deadline"} 1"#), "{out}");
        assert!(out.contains("wasmgate_cold_start_seconds_bucket{"), "{out}");
        drop(new);
        let out = metrics.render(Vec::new(), Format::Prometheus);
        assert!(!out.contains("deployment=\"app\""), "{out}");
        // A later deployment of the same name starts again from zero.
        let again = metrics.workload("app", "c", "edge-01/p1");
        assert_eq!(again.invocations(), 0);
    }

    #[test]
    fn families_have_their_types_and_names() {
        let metrics = Metrics::new();
        let w = metrics.workload("app", "c", "edge-01/p1");
        w.invocation(Duration::from_millis(2), None);
        metrics.reconcile.pass(Duration::from_millis(5));
        metrics.reconcile.outcome(ReconcileOutcome::Installed);
        metrics.aot.hit();
        metrics.aot.miss(Duration::from_millis(30));
        metrics
            .oci
            .pull(OciPull::Layer, true, Duration::from_millis(40));
        metrics.oci.bytes(1234);
        metrics
            .wfm
            .request("state", "not-modified", Duration::from_millis(7));
        metrics.wfm.outbox_depth(3);
        metrics.wfm.capabilities_refused("edge-01/p1");
        let out = metrics.render(vec![sample("edge-01/p1")], Format::Prometheus);
        for expected in [
            "# TYPE wasmgate_invocations_total counter",
            "# TYPE wasmgate_invocation_duration_seconds histogram",
            "# TYPE wasmgate_partition_cpu_throttled_seconds_total counter",
            "wasmgate_partition_cpu_throttled_seconds_total{partition=\"edge-01/p1\"} 0.25",
            "wasmgate_partition_concurrency_limit{partition=\"edge-01/p1\"} 8",
            "wasmgate_reconcile_deployments_total{outcome=\"installed\"} 1",
            "wasmgate_reconcile_duration_seconds_count 1",
            "wasmgate_aot_cache_hits_total 1",
            "wasmgate_aot_cache_misses_total 1",
            "wasmgate_oci_pull_bytes_total 1234",
            "wasmgate_oci_pull_duration_seconds_count{kind=\"layer\",outcome=\"ok\"} 1",
            "wasmgate_wfm_request_duration_seconds_count{kind=\"state\",outcome=\"not-modified\"} 1",
            "wasmgate_wfm_outbox_depth 3",
            "wasmgate_wfm_capabilities_refused_total{device=\"edge-01/p1\"} 1",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        let open = metrics.render(Vec::new(), Format::OpenMetrics);
        assert!(open.ends_with("# EOF\n"), "{open}");
        // The partition samples belong to the scrape that passed them.
        assert!(!open.contains("partition=\"edge-01/p1\"} 0.25"), "{open}");
    }

    #[test]
    fn format_negotiation() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert!(Format::Prometheus.content_type().starts_with("text/plain"));
    }
}
