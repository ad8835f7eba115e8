//! Recording how an install ended: installed, failed (saying whether the previous
//! version keeps serving), and when a failed pull is tried again.

use super::plan::Retry;
use super::report::{Failure, Installed};
use super::{DesiredDeployment, Reconciler};
use crate::deploy::model::{Deployment, Outline};
use crate::types::DeploymentId;
use std::time::Instant;

impl Reconciler {
    pub(super) fn set_installed(&self, id: &DeploymentId) {
        let Some(applied) = self.applied.get(id) else {
            return;
        };
        self.reporter.installed(Installed {
            source: &applied.source,
            deployment: &applied.deployment,
            partition: &applied.partition.device_id,
            routes: applied.routes(),
            pins: &applied.pins,
        });
    }

    pub(super) fn fail(
        &self,
        item: &DesiredDeployment,
        deployment: &Deployment,
        mut failure: Failure,
    ) {
        let partition = self
            .applied
            .get(&deployment.id)
            .map(|a| a.partition.device_id.clone());
        if partition.is_some() {
            failure
                .message
                .push_str(" (the previous version keeps serving)");
        }
        self.reporter.failed(
            &item.source,
            &Outline::from(deployment),
            partition.as_deref(),
            failure,
        );
    }

    pub(super) fn schedule_retry(&mut self, source: &str, yaml_digest: &str) {
        let retry = Retry::after(self.retries.get(source), yaml_digest, Instant::now());
        tracing::info!(source, attempts = retry.attempts, retry_in = ?retry.next_at.saturating_duration_since(Instant::now()), "will retry the pull");
        self.retries.insert(source.to_owned(), retry);
    }
}
