//! Status board updates: every state a deployment passes through, and its failures
//! with the Margo error code.

use crate::deploy::model::{directed_target, Deployment, Outline};
use crate::deploy::placement::PlacementError;
use crate::deploy::status::{
    ComponentStatus, DeploymentState, DeploymentStatus, StatusBoard, StatusError,
};
use crate::telemetry::{Metrics, ReconcileOutcome};
use std::sync::Arc;

/// A failure to apply one deployment, with the Margo error code to report.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
    /// The component at fault, if one is.
    pub component: Option<String>,
}

impl Failure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            component: None,
        }
    }

    pub fn in_component(mut self, name: &str) -> Self {
        self.component = Some(name.to_owned());
        self
    }
}

impl From<PlacementError> for Failure {
    fn from(err: PlacementError) -> Self {
        Failure::new(err.code(), err.to_string())
    }
}

/// What an installed deployment shows.
pub struct Installed<'a> {
    pub source: &'a str,
    pub deployment: &'a Deployment,
    pub partition: &'a str,
    pub routes: Vec<String>,
    /// What each component resolved to, for the digests `/status` shows.
    pub pins: &'a [crate::deploy::store::Pin],
}

/// Writes deployment states to the status board (and counts outcomes).
pub struct Reporter {
    pub status: Arc<StatusBoard>,
    pub metrics: Arc<Metrics>,
}

impl Reporter {
    pub fn failed(
        &self,
        source: &str,
        outline: &Outline,
        partition: Option<&str>,
        failure: Failure,
    ) {
        tracing::error!(source, error = %failure.message, "deployment rejected");
        self.metrics.reconcile.outcome(ReconcileOutcome::Failed);
        let error = |f: &Failure| StatusError {
            code: f.code.into(),
            message: f.message.clone(),
        };
        self.status.set(
            source,
            DeploymentStatus {
                deployment_id: outline.id.clone(),
                name: outline.name.clone(),
                source: source.to_owned(),
                state: DeploymentState::Failed,
                device_id: partition
                    .map(str::to_owned)
                    .or_else(|| outline.directed_target()),
                components: outline
                    .components
                    .iter()
                    .map(|name| ComponentStatus {
                        name: name.clone(),
                        state: DeploymentState::Failed,
                        error: (failure.component.as_deref() == Some(name.as_str()))
                            .then(|| error(&failure)),
                        revision: None,
                        digest: None,
                    })
                    .collect(),
                error: Some(error(&failure)),
                routes: Vec::new(),
            },
        );
    }

    /// `deployment` at `source` is in `state` (no error); `partition` once placed.
    pub fn state(
        &self,
        source: &str,
        deployment: &Deployment,
        state: DeploymentState,
        partition: Option<&str>,
    ) {
        self.status.set(
            source,
            self.entry(source, deployment, state, partition, Vec::new(), &[]),
        );
    }

    pub fn installed(&self, installed: Installed<'_>) {
        let entry = self.entry(
            installed.source,
            installed.deployment,
            DeploymentState::Installed,
            Some(installed.partition),
            installed.routes,
            installed.pins,
        );
        self.status.set(installed.source, entry);
    }

    fn entry(
        &self,
        source: &str,
        deployment: &Deployment,
        state: DeploymentState,
        partition: Option<&str>,
        routes: Vec<String>,
        pins: &[crate::deploy::store::Pin],
    ) -> DeploymentStatus {
        DeploymentStatus {
            deployment_id: Some(deployment.id.clone()),
            name: Some(deployment.name.clone()),
            source: source.to_owned(),
            state,
            device_id: partition
                .map(str::to_owned)
                .or_else(|| directed_target(deployment.device_id.as_deref())),
            error: None,
            components: deployment
                .components
                .iter()
                .map(|c| ComponentStatus {
                    name: c.name.clone(),
                    state,
                    error: None,
                    revision: c.revision.clone(),
                    digest: pins
                        .iter()
                        .find(|p| p.component == c.name)
                        .map(|p| p.digest.clone()),
                })
                .collect(),
            routes,
        }
    }

    /// Sources that left the desired state: a deployment that never ran (it failed)
    /// is reported removed once, then its entry goes.
    pub fn forget_except(&self, sources: &std::collections::BTreeSet<String>) {
        for key in self.status.keys() {
            if sources.contains(&key) {
                continue;
            }
            let gone = self
                .status
                .get(&key)
                .filter(|d| d.deployment_id.is_some() && d.state != DeploymentState::Removed);
            if let Some(mut last) = gone {
                last.state = DeploymentState::Removed;
                last.error = None;
                for c in &mut last.components {
                    c.state = DeploymentState::Removed;
                    c.error = None;
                }
                self.status.set(&key, last);
            }
            self.status.remove(&key);
        }
    }
}
