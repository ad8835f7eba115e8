//! The reconciler's families: how long each pass took and what it did to each
//! deployment.

use super::timing::slow_histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct OutcomeLabels {
    outcome: &'static str,
}

/// Reconcile passes and what they did to deployments.
#[derive(Debug, Clone)]
pub struct ReconcileMetrics {
    pub(super) duration: Histogram,
    pub(super) outcomes: Family<OutcomeLabels, Counter>,
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
