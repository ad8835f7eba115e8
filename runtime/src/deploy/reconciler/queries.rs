//! What the reconciler's owners read between passes: its registries and status board,
//! when it wants another pass, which files to watch and what is served.

use super::Reconciler;
use crate::deploy::artifact::Artifacts;
use crate::deploy::status::StatusBoard;
use crate::telemetry::Metrics;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

impl Reconciler {
    /// The metrics registry `/metrics` renders (and the WFM client records into).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The artifact resolver (blob store, registry client and its counters).
    pub fn artifacts(&self) -> &Arc<Artifacts> {
        &self.installer.artifacts
    }

    pub fn status(&self) -> &Arc<StatusBoard> {
        &self.status
    }

    /// When the reconciler wants another pass over the same desired state: to retry
    /// pulls that failed, or to collect garbage once a grace period ended.
    pub fn next_pass_due(&self) -> Option<Instant> {
        if self.replace_due {
            return Some(Instant::now());
        }
        self.retries
            .values()
            .map(|r| r.next_at)
            .chain(self.next_gc)
            .min()
    }

    /// Whether [`Reconciler::next_pass_due`] has come.
    pub fn pass_due(&self) -> bool {
        self.next_pass_due().is_some_and(|t| t <= Instant::now())
    }

    /// Local files the running deployments were loaded from; a change to one of them
    /// is a change of desired state.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        self.applied
            .values()
            .flat_map(|a| a.files.iter().cloned())
            .chain(self.waiting_for.values().flatten().cloned())
            .collect()
    }

    /// `(route, deployment name, partition)` of everything served.
    pub fn served_routes(&self) -> Vec<(String, String, String)> {
        self.routes
            .load()
            .routes()
            .iter()
            .map(|r| {
                let host = r.host.clone().unwrap_or_default();
                (
                    format!("{host}{}", r.prefix),
                    r.workload.spec.deployment_name.clone(),
                    r.workload.spec.partition.device_id.to_string(),
                )
            })
            .collect()
    }

    /// Whether installs started by a pass are still fetching or compiling.
    pub fn installing(&self) -> bool {
        !self.in_flight.is_empty()
    }
}
