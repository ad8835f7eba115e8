//! A pass over the desired state: plan, start the installs, commit what finished, then
//! publish, persist and collect garbage; the first pass after a start restores what ran.

use super::plan;
use super::{DesiredDeployment, Reconciler};
use crate::deploy::model::{Deployment, Outline};
use crate::deploy::store::document_digest;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

impl Reconciler {
    /// Makes the running set equal to `desired`, waiting for every install.
    pub async fn apply(&mut self, desired: Vec<DesiredDeployment>) {
        self.pass(desired, None).await
    }

    /// Like [`Reconciler::apply`], but returns after `patience` even when installs are
    /// still running: they go on, [`Reconciler::install_progress`] resolves when one
    /// reports, and [`Reconciler::advance`] commits what finished. Deployments that
    /// finish within `patience` are committed (and serve) as soon as they are ready.
    pub async fn apply_for(&mut self, desired: Vec<DesiredDeployment>, patience: Duration) {
        self.pass(desired, Some(Instant::now() + patience)).await
    }

    /// Resolves when an install has something to report (pending forever when none
    /// runs); then call [`Reconciler::advance`].
    pub async fn install_progress(&self) {
        loop {
            let notified = self.notify.notified();
            if !self.events.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Commits the installs that finished since the last pass, without a new pass
    /// over the desired state.
    pub async fn advance(&mut self) {
        let started = Instant::now();
        self.settle(Some(started)).await;
        self.finish(started).await;
    }

    #[tracing::instrument(name = "wasmgate.reconcile", skip_all, fields(wasmgate.deployments = desired.len()))]
    async fn pass(&mut self, desired: Vec<DesiredDeployment>, deadline: Option<Instant>) {
        let started = Instant::now();
        self.status.set_reconciled(false);
        self.replace_due = false;
        if !self.restored {
            self.restored = true;
            self.restore(&desired).await;
        }
        let running: Vec<plan::Running> = self
            .applied
            .iter()
            .map(|(id, a)| plan::Running {
                id: id.clone(),
                source: a.source.clone(),
                outline: Outline::from(&a.deployment),
                partition: a.partition.device_id.to_string(),
            })
            .collect();
        let plan = plan::plan_with(desired, &running, &mut self.parsed);
        for r in &plan.rejected {
            self.reporter.failed(
                &r.source,
                &r.outline,
                r.partition.as_deref(),
                r.failure.clone(),
            );
        }
        // An install whose document left or changed is abandoned.
        let digests: BTreeMap<&str, String> = plan
            .wanted
            .iter()
            .map(|(item, _)| (item.source.as_str(), document_digest(&item.yaml)))
            .collect();
        self.in_flight
            .retain(|source, f| digests.get(source.as_str()) == Some(&f.yaml_digest));
        for id in plan.gone(self.applied.keys()) {
            self.remove(&id);
        }
        self.reporter.forget_except(&plan.sources);
        self.waiting_for.retain(|s, _| plan.sources.contains(s));
        self.retries.retain(|s, _| plan.sources.contains(s));

        self.order = plan.wanted.iter().map(|(i, _)| i.source.clone()).collect();
        let now = Instant::now();
        for (item, deployment) in plan.wanted {
            if self.in_flight.contains_key(&item.source) {
                // The same document is still installing.
                continue;
            }
            let yaml_digest = document_digest(&item.yaml);
            if self
                .retries
                .get(&item.source)
                .is_some_and(|r| r.holds(&yaml_digest, now))
            {
                // Backing off after a failed pull; its failed status stands.
                continue;
            }
            self.start(item, deployment, yaml_digest, false);
        }
        self.settle(deadline).await;
        self.finish(started).await;
    }

    async fn finish(&mut self, started: Instant) {
        self.publish_routes();
        let applied = &self.applied;
        self.records.sync(|id| applied.contains_key(id));
        self.records.flush().await;
        self.hold_running();
        self.next_gc = self.installer.gc.collect().await;
        self.status.set_reconciled(self.in_flight.is_empty());
        self.metrics.reconcile.pass(started.elapsed());
    }

    /// At the first pass after a start: a deployment whose document changed while the
    /// host was down is first brought back exactly as it was last applied (from the
    /// stored record and artifacts, without asking a registry), so that a new version
    /// that fails leaves the old one serving, as it would without the restart. Records
    /// whose document is unchanged need nothing: their pins make the normal pass skip
    /// the registry lookup.
    async fn restore(&mut self, desired: &[DesiredDeployment]) {
        self.records.load().await;
        self.hold_running();
        let mut order = Vec::new();
        for record in self.records.stale(desired) {
            let Ok(deployment) = Deployment::from_yaml(record.yaml.as_bytes()) else {
                continue;
            };
            tracing::info!(deployment = %deployment.name, source = %record.source,
                "restoring the last applied version before applying its changed document");
            let item = DesiredDeployment {
                source: record.source.clone(),
                base_dir: record.base_dir.clone(),
                yaml: record.yaml.clone().into_bytes(),
                expected_id: None,
                refused: None,
            };
            order.push(item.source.clone());
            self.start(item, deployment, record.yaml_digest, true);
        }
        order.sort();
        self.order = order;
        self.settle(None).await;
    }
}
