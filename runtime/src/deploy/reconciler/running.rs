//! Keeping what depends on the running set in step with it: the published route table,
//! the garbage collector's holds, and a deployment's removal.

use super::Reconciler;
use crate::deploy::status::DeploymentState;
use crate::telemetry::ReconcileOutcome;
use crate::trigger::RouteTable;
use crate::types::DeploymentId;
use std::sync::Arc;

impl Reconciler {
    pub(super) fn remove(&mut self, id: &DeploymentId) {
        let Some(applied) = self.applied.remove(id) else {
            return;
        };
        tracing::info!(deployment = %applied.deployment.name, "removing deployment");
        self.metrics.reconcile.outcome(ReconcileOutcome::Removed);
        let partition = applied.partition.device_id.clone();
        let (source, deployment) = (applied.source.clone(), applied.deployment.clone());
        let state = |s| {
            self.reporter
                .state(&source, &deployment, s, Some(&partition))
        };
        state(DeploymentState::Removing);
        // Dropping `applied` stops its timers; in-flight requests keep their own
        // reference to the workload and finish.
        drop(applied);
        self.publish_routes();
        state(DeploymentState::Removed);
        self.status.remove(&source);
        self.records.remove(id);
        self.hold_running();
    }

    pub(super) fn publish_routes(&self) {
        let table = RouteTable::of(self.applied.values().flat_map(|a| {
            a.workloads
                .iter()
                .map(|(spec, workload)| (spec.extensions.http.as_ref(), workload.clone()))
        }));
        self.routes.store(Arc::new(table));
    }

    pub(super) fn hold_running(&self) {
        let applied = self.applied.values().flat_map(|a| a.pins.iter());
        self.installer
            .gc
            .set_running(applied.chain(self.records.all_pins()));
    }
}
