//! The per-workload families (invocations, failures, durations, cold starts) and the
//! [`WorkloadMetrics`] handle a workload records into, on the hot path; the series of a
//! label set live as long as some handle of it does.

use super::lock;
use super::timing::{cold_start_histogram, invocation_histogram, HistogramFamily};
use crate::telemetry::otlp::WorkloadInstruments;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

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
pub(super) struct WorkloadLabels {
    deployment: String,
    component: String,
    partition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct FailureLabels {
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

/// The per-workload families, shared by every [`WorkloadMetrics`] handle.
#[derive(Debug)]
pub(super) struct WorkloadFamilies {
    pub(super) invocations: Family<WorkloadLabels, Counter>,
    pub(super) failures: Family<FailureLabels, Counter>,
    pub(super) duration: HistogramFamily<WorkloadLabels>,
    pub(super) cold_start: HistogramFamily<WorkloadLabels>,
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
    /// The handles of one workload (see `Metrics::workload`).
    pub(super) fn handle(
        self: &Arc<Self>,
        deployment: &str,
        component: &str,
        partition: &str,
    ) -> WorkloadMetrics {
        WorkloadMetrics(self.series(WorkloadLabels {
            deployment: deployment.to_owned(),
            component: component.to_owned(),
            partition: partition.to_owned(),
        }))
    }

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
            otlp: WorkloadInstruments::new(
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
    otlp: WorkloadInstruments,
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
            otlp: WorkloadInstruments::new("", "", ""),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{Format, Metrics};

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
}
