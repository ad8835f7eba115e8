//! The Prometheus metrics of one host: a `prometheus-client` [`Registry`] of typed
//! families and the handles the code paths record into.
//!
//! Hot paths never look a label set up: a workload takes its [`WorkloadMetrics`] once,
//! when it is built, and each request only bumps atomics and one histogram. Series of
//! a workload leave the output when the last workload using them is dropped, so the
//! output (and memory) follows what runs, not every name ever deployed.
//!
//! Each room's families and their handle live in a submodule of their own
//! ([`workload`], [`partition`], [`reconcile`], [`aot`], [`oci`], [`wfm`]).

mod aot;
mod format;
mod oci;
mod partition;
mod reconcile;
mod timing;
mod wfm;
mod workload;

pub use aot::AotMetrics;
pub use format::Format;
pub use oci::{OciMetrics, OciPull};
pub use partition::PartitionSample;
pub use reconcile::{ReconcileMetrics, ReconcileOutcome};
pub use wfm::WfmMetrics;
pub use workload::{FailureKind, WorkloadMetrics};

use partition::PartitionCollector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex, MutexGuard};
use workload::WorkloadFamilies;

/// Locks `m`, recovering from a panic elsewhere: metrics stay readable whatever
/// happened to the thread that held the lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        // Every family is registered here, in one place, because the registration
        // order is the order of the exposition.
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
            "Components found compiled: mapped from the AOT cache or already loaded by this process",
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
        self.workloads.handle(deployment, component, partition)
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
    use std::time::Duration;

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
}
