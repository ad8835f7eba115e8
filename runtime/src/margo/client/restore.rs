//! Serving the desired state on disk: the accepted one at start and after the accepted
//! record reads again, or what was last applied while it cannot be read.

use super::{WfmClient, SOURCE_PREFIX};
use crate::deploy::{DesiredDeployment, Reconciler};
use crate::margo::types::{DeploymentId, Digest};

impl WfmClient {
    /// The accepted deployments whose YAML is held on disk.
    pub(super) async fn accepted_documents(&self) -> Vec<DesiredDeployment> {
        let Some(accepted) = self.state.accepted() else {
            return Vec::new();
        };
        let mut desired = Vec::new();
        for (id, digest) in &accepted.deployments {
            // Both were valid when accepted; a record that no longer parses is skipped
            // like a document that is gone, and the next manifest is fetched whole.
            let (Ok(id), Ok(digest)) = (DeploymentId::parse(id), Digest::parse(digest)) else {
                continue;
            };
            if let Some(yaml) = self.state.document(&digest).await {
                desired.push(self.desired(&id, yaml));
            }
        }
        desired
    }

    /// While the accepted record cannot be read: the WFM deployments as the reconciler
    /// last applied them (its own records), so the device keeps serving what was
    /// installed without knowing, or accepting, any manifest.
    async fn installed_documents(&self) -> Vec<DesiredDeployment> {
        let dir = self.device.state_dir.join("deployments");
        let records = tokio::task::spawn_blocking(move || {
            crate::deploy::store::AppliedStore::open(dir).map(|store| store.load_all())
        })
        .await;
        let records = match records {
            Ok(Ok(records)) => records,
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot read the applied deployments");
                return Vec::new();
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot read the applied deployments");
                return Vec::new();
            }
        };
        records
            .into_iter()
            .filter_map(|record| {
                let id = DeploymentId::parse(record.source.strip_prefix(SOURCE_PREFIX)?).ok()?;
                Some(self.desired(&id, record.yaml.into_bytes()))
            })
            .collect()
    }

    /// Status-board changes while nothing is accepted: they would carry an
    /// `adoptedManifestVersion` we cannot vouch for. The states are reported once the
    /// accepted record reads again ([`Self::restore`] reports what differs).
    pub(super) fn discard_events(&mut self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Applies the accepted desired state kept on disk, reporting only states that
    /// differ from what the WFM was last told.
    pub(super) async fn restore(&mut self, reconciler: &mut Reconciler) {
        let Some(accepted) = self.state.accepted().cloned() else {
            let desired = self.installed_documents().await;
            tracing::warn!(
                deployments = desired.len(),
                "accepted state unreadable: serving the deployments as last applied"
            );
            reconciler.apply(desired).await;
            self.discard_events();
            return;
        };
        if accepted.manifest_version.is_none() {
            return;
        }
        let desired = self.accepted_documents().await;
        if desired.len() != accepted.deployments.len() {
            // Force a full fetch on the next poll.
            self.state.forget_etag();
        }
        tracing::info!(
            manifest_version = %accepted.manifest_version,
            deployments = desired.len(),
            "restoring the accepted desired state"
        );
        reconciler.apply(desired).await;
        // Transitional states of the restore are not news to the WFM; final ones are
        // reported only when they differ from the last report.
        self.discard_events();
        let snapshot = reconciler.status().snapshot();
        for status in snapshot.deployments {
            if let Some(report) = self.report_for(&status) {
                if let Err(err) = self.outbox.push(report).await {
                    tracing::error!(error = %err, "cannot queue a status report");
                }
            }
        }
    }
}
