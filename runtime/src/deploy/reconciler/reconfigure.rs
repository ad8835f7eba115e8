//! A reloaded host configuration under running deployments: which now run in a
//! partition that changed or left, and stopping those that no longer fit anywhere.

use super::activate;
use super::{Reconciler, Reconfiguration};
use crate::telemetry::ReconcileOutcome;
use crate::types::DeploymentId;

impl Reconciler {
    /// A reloaded host configuration: the partitions now are `partitions` (kept ones
    /// are the same `Arc`s; resized ones are new) and advertise `capabilities`. What
    /// runs in a partition that changed or left keeps serving there until the next pass
    /// places it again, in source order, as an update would: into the resized or
    /// another partition, or, when it no longer fits anywhere, it stops and fails with
    /// the placement error. [`Reconciler::pass_due`] asks for that pass, which also
    /// tries again what failed for want of a partition.
    pub fn reconfigure(&mut self, change: &Reconfiguration) {
        self.partitions = change.partitions.clone();
        self.capabilities = change.capabilities.clone();
        let mut moving = 0;
        for applied in self.applied.values_mut() {
            if !activate::placed_in(&applied.partition, &self.partitions) {
                // No install compares equal to what runs now: the next pass builds
                // (from the pinned artifacts and the AOT cache) and places it again.
                applied.fingerprint.clear();
                moving += 1;
            }
        }
        tracing::info!(
            partitions = self.partitions.len(),
            deployments_to_place_again = moving,
            "partitions reconfigured"
        );
        // Also without anything to move: a deployment that failed for want of a
        // partition (one directed at a partition added now, one that did not fit) is
        // tried again.
        self.replace_due = true;
    }

    /// Whether `id` runs in a partition that changed or left since it was placed.
    pub(super) fn misplaced(&self, id: &DeploymentId) -> bool {
        self.applied
            .get(id)
            .is_some_and(|a| !activate::placed_in(&a.partition, &self.partitions))
    }

    /// Stops a deployment that runs in a partition that changed or left and could not
    /// be placed again: it may not keep the old limits. Its failure is reported by the
    /// caller.
    pub(super) fn evict(&mut self, id: &DeploymentId) {
        let Some(applied) = self.applied.remove(id) else {
            return;
        };
        tracing::warn!(deployment = %applied.deployment.name, partition = %applied.partition.device_id,
            "stopping a deployment its changed partition no longer holds");
        self.metrics.reconcile.outcome(ReconcileOutcome::Removed);
        drop(applied);
        self.publish_routes();
        self.records.remove(id);
        self.hold_running();
    }
}
