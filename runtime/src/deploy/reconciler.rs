//! The reconcile loop: compare the desired deployments with what runs, act, record the
//! outcome. Idempotent: applying the same desired state twice changes nothing. A
//! deployment that fails to apply never disturbs the others, and an update that fails
//! leaves the previous version serving.
//!
//! A pass plans ([`plan`]), starts an install per deployment ([`install`]: resolve,
//! fetch, compile, in parallel and bounded), and commits finished installs one at a
//! time in source order ([`activate`]: placement, limits, routes, workloads), so what
//! the README documents about ordering holds however long each install takes. A
//! deployment waits only for an earlier one that could change its outcome; an install
//! still running when the pass ends carries on and is committed by
//! [`Reconciler::advance`], or abandoned when its document leaves or changes.

mod activate;
mod flight;
mod gc;
mod install;
mod plan;
mod records;
mod report;

use crate::types::{DeploymentId, PartitionId};
use activate::Applied;
use flight::InFlight;
use gc::Gc;
use install::{Event, Installer};
use plan::Retry;
use records::Records;
use report::{Failure, Installed, Reporter};

use super::artifact::Artifacts;
use super::model::{Deployment, Outline};
use super::status::{DeploymentState, StatusBoard};
use super::store::{document_digest, AppliedStore, GcPolicy};
use crate::engine::{AotCache, WasmEngine};
use crate::sandbox::Partition;
use crate::telemetry::{Metrics, ReconcileOutcome};
use crate::trigger::{RouteTable, SharedRoutes};
use crate::workload::InstanceState;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use wasmtime::component::Linker;

/// How long [`Reconciler::apply_for`] callers in the host wait for installs before
/// they go on (deliver statuses, watch for changes): installs that take longer are
/// committed later by [`Reconciler::advance`].
pub const INSTALL_PATIENCE: Duration = Duration::from_secs(2);

/// One desired deployment document and where it came from.
#[derive(Debug, Clone)]
pub struct DesiredDeployment {
    /// Where the document came from (file path in local mode); the status key.
    pub source: String,
    /// Relative component paths resolve against this folder.
    pub base_dir: PathBuf,
    pub yaml: Vec<u8>,
    /// The `id` the document must declare, when its origin names it (a WFM manifest
    /// lists each YAML under a `deploymentId`). A different id fails this deployment.
    pub expected_id: Option<DeploymentId>,
    /// Set when the document was not read because reading it was refused (local mode:
    /// not a regular file, too large, a link out of the folder); `yaml` is then empty and
    /// the source fails with this code and message, like a document that does not parse.
    pub refused: Option<Refusal>,
}

/// Why a desired document was not read; never carries the document's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// A reloaded host configuration, handed to whoever owns the reconciler (the folder
/// watch, the WFM client): the partitions to place into and what they advertise.
pub struct Reconfiguration {
    pub partitions: Vec<Arc<Partition>>,
    /// Capabilities document per partition id, for `deviceConstraints`.
    pub capabilities: BTreeMap<PartitionId, serde_json::Value>,
}

pub struct Reconciler {
    linker: Linker<InstanceState>,
    device_id: String,
    partitions: Vec<Arc<Partition>>,
    routes: SharedRoutes,
    status: Arc<StatusBoard>,
    reporter: Reporter,
    applied: BTreeMap<DeploymentId, Applied>,
    /// Per source: component files that failed to load; when one appears or changes,
    /// the folder watch re-applies.
    waiting_for: BTreeMap<String, Vec<PathBuf>>,
    records: Records,
    restored: bool,
    next_gc: Option<Instant>,
    /// Per source: deployments waiting to retry a failed pull.
    retries: BTreeMap<String, Retry>,
    /// Capabilities document per partition id, for `deviceConstraints`.
    capabilities: BTreeMap<PartitionId, serde_json::Value>,
    /// The host's metrics registry; workloads, the AOT cache and pulls record here.
    metrics: Arc<Metrics>,
    installer: Installer,
    events: mpsc::UnboundedReceiver<(u64, Event)>,
    notify: Arc<Notify>,
    /// By source.
    in_flight: BTreeMap<String, InFlight>,
    /// Sources of the last pass in commit order.
    order: Vec<String>,
    next_install: u64,
    /// The partitions changed ([`Reconciler::reconfigure`]) and the next pass must
    /// place again what runs in a partition that changed or left.
    replace_due: bool,
}

impl Reconciler {
    pub fn new(
        engine: WasmEngine,
        aot: AotCache,
        device_id: String,
        partitions: Vec<Arc<Partition>>,
        routes: SharedRoutes,
        status: Arc<StatusBoard>,
    ) -> wasmtime::Result<Self> {
        let linker = crate::workload::linker(&engine.engine)?;
        let metrics = Arc::new(Metrics::new());
        let aot = aot.with_metrics(metrics.aot.clone());
        let artifacts = Arc::new(Artifacts::default());
        let gc = Arc::new(Gc::new(None, aot.clone(), GcPolicy::default()));
        let notify = Arc::new(Notify::new());
        let (installer, events) = Installer::new(artifacts, engine, aot, gc, notify.clone());
        Ok(Self {
            linker,
            device_id,
            partitions,
            routes,
            reporter: Reporter {
                status: status.clone(),
                metrics: metrics.clone(),
            },
            status,
            applied: BTreeMap::new(),
            waiting_for: BTreeMap::new(),
            records: Records::default(),
            restored: false,
            next_gc: None,
            retries: BTreeMap::new(),
            capabilities: BTreeMap::new(),
            metrics,
            installer,
            events,
            notify,
            in_flight: BTreeMap::new(),
            order: Vec::new(),
            next_install: 0,
            replace_due: false,
        })
    }

    /// The metrics registry `/metrics` renders (and the WFM client records into).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The capabilities each partition advertises; deployments' `deviceConstraints`
    /// (capacity and eligibility rules) are checked against them before deploying.
    pub fn set_capabilities(&mut self, capabilities: BTreeMap<PartitionId, serde_json::Value>) {
        self.capabilities = capabilities;
    }

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
    fn misplaced(&self, id: &DeploymentId) -> bool {
        self.applied
            .get(id)
            .is_some_and(|a| !activate::placed_in(&a.partition, &self.partitions))
    }

    /// Stops a deployment that runs in a partition that changed or left and could not
    /// be placed again: it may not keep the old limits. Its failure is reported by the
    /// caller.
    fn evict(&mut self, id: &DeploymentId) {
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

    /// Keeps state under `state_dir`: the artifact store (`artifacts/`), the applied
    /// deployments (`deployments/`), with garbage collection of the artifact store and
    /// the AOT cache, and registry access as `artifacts` and `registries` say.
    pub fn with_state(
        mut self,
        state_dir: &std::path::Path,
        artifacts: &super::ArtifactsSettings,
        registries: &super::Registries,
    ) -> std::io::Result<Self> {
        let settings = super::oci::OciSettings {
            max_size: artifacts.max_component_size(),
            timeout: artifacts.pull_timeout(),
            registries: registries.clone(),
            auth_file: artifacts.registry_auth_file.clone(),
            metrics: self.metrics.oci.clone(),
        };
        let policy = GcPolicy {
            quota: artifacts.cache_quota(),
            grace: artifacts.gc_grace(),
        };
        let artifacts = Arc::new(Artifacts::open(&state_dir.join("artifacts"), settings)?);
        self.records = Records::open(AppliedStore::open(state_dir.join("deployments"))?)?;
        let (engine, aot) = (self.installer.engine.clone(), self.installer.aot.clone());
        let gc = Arc::new(Gc::new(artifacts.blobs().cloned(), aot.clone(), policy));
        // Nothing is in flight before the first pass, so the old channel has nothing.
        let (installer, events) = Installer::new(artifacts, engine, aot, gc, self.notify.clone());
        self.installer = installer;
        self.events = events;
        Ok(self)
    }

    /// The artifact resolver (blob store, registry client and its counters).
    pub fn artifacts(&self) -> &Arc<Artifacts> {
        &self.installer.artifacts
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

    pub fn status(&self) -> &Arc<StatusBoard> {
        &self.status
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
        let plan = plan::plan(desired, &running);
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

    fn hold_running(&self) {
        let applied = self.applied.values().flat_map(|a| a.pins.iter());
        self.installer
            .gc
            .set_running(applied.chain(self.records.all_pins()));
    }

    fn schedule_retry(&mut self, source: &str, yaml_digest: &str) {
        let retry = Retry::after(self.retries.get(source), yaml_digest, Instant::now());
        tracing::info!(source, attempts = retry.attempts, retry_in = ?retry.next_at.saturating_duration_since(Instant::now()), "will retry the pull");
        self.retries.insert(source.to_owned(), retry);
    }

    fn remove(&mut self, id: &DeploymentId) {
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

    fn fail(&self, item: &DesiredDeployment, deployment: &Deployment, mut failure: Failure) {
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

    fn set_installed(&self, id: &DeploymentId) {
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

    fn publish_routes(&self) {
        let table = RouteTable::of(self.applied.values().flat_map(|a| {
            a.workloads
                .iter()
                .map(|(spec, workload)| (spec.extensions.http.as_ref(), workload.clone()))
        }));
        self.routes.store(Arc::new(table));
    }
}
