//! The reconcile loop: compare the desired deployments with what runs, act, record the
//! outcome. Idempotent: applying the same desired state twice changes nothing. A
//! deployment that fails to apply never disturbs the others, and an update that fails
//! leaves the previous version serving.

use super::artifact::{Artifact, ArtifactError, Artifacts, Resolved};
use super::model::{ComponentSpec, Deployment, Outline};
use super::placement::{place, PlacementError, Requirement};
use super::status::{ComponentStatus, DeploymentState, DeploymentStatus, StatusBoard, StatusError};
use super::store::{collect_garbage, document_digest, AppliedRecord, AppliedStore, GcPolicy, Pin};
use crate::engine::{AotCache, Shipped, WasmEngine};
use crate::ingress::{Route, RouteTable, SharedRoutes};
use crate::sandbox::Partition;
use crate::telemetry::{Metrics, ReconcileOutcome};
use crate::units::ByteSize;
use crate::workload::{Exports, InstanceState, Tick, Workload, WorkloadSpec};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use wasmtime::component::Linker;

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
    pub expected_id: Option<String>,
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

/// A failure to apply one deployment, with the Margo error code to report.
#[derive(Debug, Clone)]
struct Failure {
    code: &'static str,
    message: String,
    /// The component at fault, if one is.
    component: Option<String>,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            component: None,
        }
    }

    fn in_component(mut self, name: &str) -> Self {
        self.component = Some(name.to_owned());
        self
    }
}

impl From<PlacementError> for Failure {
    fn from(err: PlacementError) -> Self {
        Failure::new(err.code(), err.to_string())
    }
}

/// A running timer; stops when dropped.
struct TimerHandle {
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for TimerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Applied {
    source: String,
    fingerprint: String,
    deployment: Deployment,
    partition: Arc<Partition>,
    memory: u64,
    workloads: Vec<(ComponentSpec, Arc<Workload>)>,
    _timers: Vec<TimerHandle>,
    files: Vec<PathBuf>,
    /// What each component resolved to, and the digest of the document applied.
    pins: Vec<Pin>,
    yaml_digest: String,
}

/// Back-off for a deployment whose artifacts could not be fetched.
struct Retry {
    yaml_digest: String,
    attempts: u32,
    next_at: Instant,
}

const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(120);

/// A deployment built and ready to take traffic.
struct Prepared {
    partition: Arc<Partition>,
    memory: u64,
    workloads: Vec<(ComponentSpec, Arc<Workload>)>,
    files: Vec<PathBuf>,
}

pub struct Reconciler {
    engine: WasmEngine,
    linker: Linker<InstanceState>,
    aot: AotCache,
    device_id: String,
    partitions: Vec<Arc<Partition>>,
    routes: SharedRoutes,
    status: Arc<StatusBoard>,
    applied: BTreeMap<String, Applied>,
    /// Component files that failed to load in the last pass: when one appears or
    /// changes, the folder watch re-applies.
    waiting_for: Vec<PathBuf>,
    /// Artifact resolution, the blob store and the registry client.
    artifacts: Arc<Artifacts>,
    /// Applied deployments on disk (`state-dir/deployments`); `None` keeps nothing.
    records: Option<AppliedStore>,
    /// The records as last written (or read at start-up).
    persisted: BTreeMap<String, AppliedRecord>,
    restored: bool,
    gc: GcPolicy,
    next_gc: Option<Instant>,
    /// Per source: deployments waiting to retry a failed pull.
    retries: BTreeMap<String, Retry>,
    /// Capabilities document per partition id, for `deviceConstraints`.
    capabilities: BTreeMap<String, serde_json::Value>,
    /// The host's metrics registry; workloads, the AOT cache and pulls record here.
    metrics: Arc<Metrics>,
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
        Ok(Self {
            engine,
            linker,
            aot: aot.with_metrics(metrics.aot.clone()),
            device_id,
            partitions,
            routes,
            status,
            applied: BTreeMap::new(),
            waiting_for: Vec::new(),
            artifacts: Arc::new(Artifacts::default()),
            records: None,
            persisted: BTreeMap::new(),
            restored: false,
            gc: GcPolicy::default(),
            next_gc: None,
            retries: BTreeMap::new(),
            capabilities: BTreeMap::new(),
            metrics,
        })
    }

    /// The metrics registry `/metrics` renders (and the WFM client records into).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The capabilities each partition advertises; deployments' `deviceConstraints`
    /// (capacity and eligibility rules) are checked against them before deploying.
    pub fn set_capabilities(&mut self, capabilities: BTreeMap<String, serde_json::Value>) {
        self.capabilities = capabilities;
    }

    /// Keeps state under `state_dir`: the artifact store (`artifacts/`), the applied
    /// deployments (`deployments/`), with garbage collection of the artifact store and
    /// the AOT cache, and registry access as `config` says.
    pub fn with_state(
        mut self,
        state_dir: &std::path::Path,
        config: &crate::config::Config,
    ) -> std::io::Result<Self> {
        let settings = super::oci::OciSettings {
            max_size: config.artifacts.max_component_size(),
            timeout: config.artifacts.pull_timeout(),
            registries: config.registries.clone(),
            auth_file: config.artifacts.registry_auth_file.clone(),
            metrics: self.metrics.oci.clone(),
        };
        self.artifacts = Arc::new(Artifacts::open(&state_dir.join("artifacts"), settings)?);
        self.records = Some(AppliedStore::open(state_dir.join("deployments"))?);
        self.gc = GcPolicy {
            quota: config.artifacts.cache_quota(),
            grace: config.artifacts.gc_grace(),
        };
        Ok(self)
    }

    /// The artifact resolver (blob store, registry client and its counters).
    pub fn artifacts(&self) -> &Arc<Artifacts> {
        &self.artifacts
    }

    /// When the reconciler wants another pass over the same desired state: to retry
    /// pulls that failed, or to collect garbage once a grace period ended.
    pub fn next_pass_due(&self) -> Option<Instant> {
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
            .chain(self.waiting_for.iter().cloned())
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
                    r.workload.spec.partition.device_id.clone(),
                )
            })
            .collect()
    }

    /// Makes the running set equal to `desired`.
    #[tracing::instrument(name = "wasmgate.reconcile", skip_all, fields(wasmgate.deployments = desired.len()))]
    pub async fn apply(&mut self, desired: Vec<DesiredDeployment>) {
        let started = Instant::now();
        self.status.set_reconciled(false);
        if !self.restored {
            self.restored = true;
            self.restore(&desired).await;
        }
        let mut wanted: BTreeMap<String, (DesiredDeployment, Deployment)> = BTreeMap::new();
        let mut sources = BTreeSet::new();
        let mut kept = BTreeSet::new();
        self.waiting_for.clear();
        let mut desired = desired;
        desired.sort_by(|a, b| a.source.cmp(&b.source));
        for item in desired {
            sources.insert(item.source.clone());
            let parsed = match &item.refused {
                Some(refusal) => Err(Failure::new(refusal.code, refusal.message.clone())),
                None => Deployment::from_yaml(&item.yaml)
                    .map_err(|err| Failure::new(err.code(), err.to_string())),
            };
            match parsed {
                Err(mut failure) => {
                    // A broken edit of a running deployment's file must not take it
                    // down: keep what was applied from that file.
                    let running = self.applied.iter().find(|(_, a)| a.source == item.source);
                    if let Some((id, applied)) = running {
                        kept.insert(id.clone());
                        failure
                            .message
                            .push_str(" (the previous version keeps serving)");
                        let deployment = applied.deployment.clone();
                        let partition = applied.partition.device_id.clone();
                        self.report_invalid(
                            &item.source,
                            &Outline::from(&deployment),
                            Some(&partition),
                            failure,
                        );
                    } else {
                        let outline = Outline::of_yaml(&item.yaml);
                        self.report_invalid(&item.source, &outline, None, failure);
                    }
                }
                Ok(deployment) => {
                    if let Some(expected) =
                        item.expected_id.as_deref().filter(|e| *e != deployment.id)
                    {
                        let message = format!(
                            "id: the document declares {}, but it is listed as deployment {expected}",
                            deployment.id
                        );
                        self.report_invalid(
                            &item.source,
                            &Outline::from(&deployment),
                            None,
                            Failure::new("wasmgate.id-mismatch", message),
                        );
                        continue;
                    }
                    if let Some((first, _)) = wanted.get(&deployment.id) {
                        let message =
                            format!("id {} is already used by {}", deployment.id, first.source);
                        self.report_invalid(
                            &item.source,
                            &Outline::from(&deployment),
                            None,
                            Failure::new("wasmgate.duplicate-id", message),
                        );
                        continue;
                    }
                    wanted.insert(deployment.id.clone(), (item, deployment));
                }
            }
        }

        let gone: Vec<String> = self
            .applied
            .keys()
            .filter(|id| !wanted.contains_key(*id) && !kept.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
        for key in self.status.keys() {
            if !sources.contains(&key) {
                // A deployment that never ran (it failed) leaves too: say so once.
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

        let mut order: Vec<_> = wanted.into_values().collect();
        order.sort_by(|a, b| a.0.source.cmp(&b.0.source));
        for (item, deployment) in order {
            self.apply_one(item, deployment).await;
        }
        self.publish_routes();
        self.retries.retain(|source, _| sources.contains(source));
        self.sync_records();
        self.collect_garbage().await;
        self.status.set_reconciled(true);
        self.metrics.reconcile.pass(started.elapsed());
    }

    /// At the first pass after a start: a deployment whose document changed while the
    /// host was down is first brought back exactly as it was last applied (from the
    /// stored record and artifacts, without asking a registry), so that a new version
    /// that fails leaves the old one serving, as it would without the restart. Records
    /// whose document is unchanged need nothing: their pins make the normal pass skip
    /// the registry lookup.
    async fn restore(&mut self, desired: &[DesiredDeployment]) {
        let Some(records) = &self.records else {
            return;
        };
        for record in records.load_all() {
            self.persisted.insert(record.id.clone(), record);
        }
        let mut stale = Vec::new();
        for record in self.persisted.values() {
            let Some(item) = desired.iter().find(|d| d.source == record.source) else {
                continue;
            };
            if document_digest(&item.yaml) == record.yaml_digest {
                continue;
            }
            // The same deployment, or a file that no longer parses (its previous
            // version keeps serving); not a file that now holds another deployment.
            if Deployment::from_yaml(&item.yaml).is_ok_and(|d| d.id != record.id) {
                continue;
            }
            stale.push(record.clone());
        }
        for record in stale {
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
            self.apply_document(item, deployment, true).await;
        }
    }

    /// Writes the record of an installed deployment (its document and pins).
    fn save_record(&mut self, item: &DesiredDeployment, id: &str) {
        let (Some(records), Some(applied)) = (&self.records, self.applied.get(id)) else {
            return;
        };
        let Ok(yaml) = String::from_utf8(item.yaml.clone()) else {
            return;
        };
        let record = AppliedRecord {
            id: id.to_owned(),
            source: item.source.clone(),
            base_dir: item.base_dir.clone(),
            yaml,
            yaml_digest: applied.yaml_digest.clone(),
            pins: applied.pins.clone(),
            applied_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        match records.save(&record) {
            Ok(()) => {
                self.persisted.insert(id.to_owned(), record);
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot record the applied deployment; a restart re-applies it from its document")
            }
        }
    }

    /// Drops records of deployments that no longer run.
    fn sync_records(&mut self) {
        let Some(records) = &self.records else {
            return;
        };
        let gone: Vec<String> = self
            .persisted
            .keys()
            .filter(|id| !self.applied.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            match records.remove(&id) {
                Ok(()) => {
                    self.persisted.remove(&id);
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot remove an applied-deployment record")
                }
            }
        }
    }

    fn schedule_retry(&mut self, source: &str, yaml_digest: &str) {
        let attempts = self
            .retries
            .get(source)
            .filter(|r| r.yaml_digest == yaml_digest)
            .map_or(0, |r| r.attempts)
            + 1;
        let delay = RETRY_FIRST
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(RETRY_MAX);
        tracing::info!(source, attempts, retry_in = ?delay, "will retry the pull");
        self.retries.insert(
            source.to_owned(),
            Retry {
                yaml_digest: yaml_digest.to_owned(),
                attempts,
                next_at: Instant::now() + delay,
            },
        );
    }

    /// Digests (hex) of every artifact an applied deployment uses.
    fn referenced(&self) -> BTreeSet<String> {
        self.applied
            .values()
            .flat_map(|a| a.pins.iter())
            .chain(self.persisted.values().flat_map(|r| r.pins.iter()))
            .filter_map(|p| super::store::sha256_hex(&p.digest).map(str::to_owned))
            .collect()
    }

    /// Before storing new artifacts: evicts unreferenced entries (whatever their age) as
    /// far as needed for `pins` to fit in the cache quota, and refuses the deployment
    /// when the artifacts of running deployments leave no room for them.
    async fn make_room(&self, pins: &[Pin]) -> Result<(), Failure> {
        let Some(blobs) = self.artifacts.blobs().cloned() else {
            return Ok(());
        };
        let mut needed = 0u64;
        let mut referenced = self.referenced();
        for pin in pins {
            if let Some(hex) = super::store::sha256_hex(&pin.digest) {
                if blobs.size(hex).is_none() && referenced.insert(hex.to_owned()) {
                    needed += pin.size;
                }
            }
        }
        if needed == 0 {
            return Ok(());
        }
        let quota = self.gc.quota;
        let policy = GcPolicy {
            quota: quota.saturating_sub(needed),
            grace: self.gc.grace,
        };
        let aot = self.aot.clone();
        let used = tokio::task::spawn_blocking(move || {
            collect_garbage(&blobs, &aot, &referenced, policy, SystemTime::now()).used
        })
        .await
        .unwrap_or(0);
        if used.saturating_add(needed) > quota {
            let component = pins.first().map(|p| p.component.as_str()).unwrap_or("");
            return Err(Failure::new(
                "wasmgate.storage",
                format!(
                    "component {component}: {} more bytes of artifacts do not fit in the cache quota ([artifacts] cache-quota = {}); running deployments use {}",
                    ByteSize(needed),
                    ByteSize(quota),
                    ByteSize(used)
                ),
            ));
        }
        Ok(())
    }

    /// Removes artifacts and compiled code that no applied deployment references,
    /// once unused for the grace period (sooner when over the quota).
    async fn collect_garbage(&mut self) {
        let Some(blobs) = self.artifacts.blobs().cloned() else {
            return;
        };
        let referenced = self.referenced();
        let (aot, policy) = (self.aot.clone(), self.gc);
        let report = tokio::task::spawn_blocking(move || {
            collect_garbage(&blobs, &aot, &referenced, policy, SystemTime::now())
        })
        .await;
        self.next_gc = match report {
            Ok(report) if report.kept_unreferenced > 0 => {
                let every =
                    (self.gc.grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
                Some(Instant::now() + every)
            }
            _ => None,
        };
    }

    fn report_invalid(
        &self,
        source: &str,
        outline: &Outline,
        partition: Option<&str>,
        failure: Failure,
    ) {
        tracing::error!(source, error = %failure.message, "deployment rejected");
        self.metrics.reconcile.outcome(ReconcileOutcome::Failed);
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
                        error: (failure.component.as_deref() == Some(name.as_str())).then(|| {
                            StatusError {
                                code: failure.code.into(),
                                message: failure.message.clone(),
                            }
                        }),
                    })
                    .collect(),
                error: Some(StatusError {
                    code: failure.code.into(),
                    message: failure.message,
                }),
                routes: Vec::new(),
            },
        );
    }

    fn remove(&mut self, id: &str) {
        if let Some(applied) = self.applied.remove(id) {
            tracing::info!(deployment = %applied.deployment.name, "removing deployment");
            self.metrics.reconcile.outcome(ReconcileOutcome::Removed);
            let partition = applied.partition.device_id.clone();
            let (source, deployment) = (applied.source.clone(), applied.deployment.clone());
            self.set_state_at(
                &source,
                &deployment,
                DeploymentState::Removing,
                Some(&partition),
            );
            // Dropping `applied` stops its timers; in-flight requests keep their own
            // reference to the workload and finish.
            drop(applied);
            self.publish_routes();
            self.set_state_at(
                &source,
                &deployment,
                DeploymentState::Removed,
                Some(&partition),
            );
            self.status.remove(&source);
            if let Some(records) = &self.records {
                match records.remove(id) {
                    Ok(()) => {
                        self.persisted.remove(id);
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "cannot remove an applied-deployment record")
                    }
                }
            }
        }
    }

    async fn apply_one(&mut self, item: DesiredDeployment, deployment: Deployment) {
        self.apply_document(item, deployment, false).await
    }

    /// Resolves every component of `deployment` to a digest. With `restore`, exactly
    /// the pins of its applied record (bytes from the blob store, or the registry by
    /// digest); otherwise local files are read and OCI tags looked up, except that an
    /// OCI component of a document applied before reuses that application's pins.
    async fn resolve_components(
        &self,
        item: &DesiredDeployment,
        deployment: &Deployment,
        yaml_digest: &str,
        restore: bool,
    ) -> Result<Vec<Resolved>, (Failure, bool)> {
        let failure = |c: &ComponentSpec, e: ArtifactError| {
            let retry = e.retryable();
            (
                Failure::new(e.code(), e.to_string()).in_component(&c.name),
                retry,
            )
        };
        let pins: Option<&[Pin]> = self
            .applied
            .get(&deployment.id)
            .filter(|a| a.yaml_digest == yaml_digest)
            .map(|a| a.pins.as_slice())
            .or_else(|| {
                self.persisted
                    .get(&deployment.id)
                    .filter(|r| r.yaml_digest == yaml_digest)
                    .map(|r| r.pins.as_slice())
            });
        let mut resolved = Vec::new();
        for c in &deployment.components {
            let pin = pins.and_then(|p| p.iter().find(|p| p.component == c.name));
            let result = match (restore, pin) {
                (true, Some(pin)) => self.artifacts.resolve_pinned(pin),
                _ => self.artifacts.resolve(c, &item.base_dir, pin).await,
            };
            resolved.push(result.map_err(|e| failure(c, e))?);
        }
        Ok(resolved)
    }

    /// Applies one document: resolve, skip when nothing changed, load, build, switch.
    async fn apply_document(
        &mut self,
        item: DesiredDeployment,
        deployment: Deployment,
        restore: bool,
    ) {
        let yaml_digest = document_digest(&item.yaml);
        if let Some(retry) = self.retries.get(&item.source) {
            if retry.yaml_digest == yaml_digest && retry.next_at > Instant::now() && !restore {
                // Backing off after a failed pull; its failed status stands.
                return;
            }
        }
        let resolved = match self
            .resolve_components(&item, &deployment, &yaml_digest, restore)
            .await
        {
            Ok(resolved) => resolved,
            Err((failure, retry)) => {
                self.waiting_for
                    .extend(deployment.components.iter().filter_map(|c| {
                        super::artifact::local_path(&c.repository, &item.base_dir).ok()
                    }));
                if retry {
                    self.schedule_retry(&item.source, &yaml_digest);
                }
                return self.fail(&item, &deployment, failure);
            }
        };
        let fingerprint = {
            let mut h = Sha256::new();
            h.update(&item.yaml);
            for r in &resolved {
                h.update(r.pin.digest.as_bytes());
            }
            hex::encode(h.finalize())
        };
        if let Some(current) = self.applied.get_mut(&deployment.id) {
            if current.fingerprint == fingerprint {
                self.retries.remove(&item.source);
                if current.source != item.source {
                    self.status.remove(&current.source);
                    current.source = item.source.clone();
                    self.set_installed(&deployment.id);
                } else if self
                    .status
                    .get(&item.source)
                    .is_some_and(|d| d.state != DeploymentState::Installed)
                {
                    // Back to what runs after a failed update: report it installed again.
                    self.set_installed(&deployment.id);
                }
                return;
            }
        }
        self.set_state(&item, &deployment, DeploymentState::Pending, None);
        self.set_state(&item, &deployment, DeploymentState::Installing, None);
        let pins: Vec<Pin> = resolved.iter().map(|r| r.pin.clone()).collect();
        if let Err(failure) = self.make_room(&pins).await {
            return self.fail(&item, &deployment, failure);
        }
        let mut artifacts: Vec<Artifact> = Vec::new();
        for (c, r) in deployment.components.iter().zip(resolved) {
            match self.artifacts.load(r).await {
                Ok(artifact) => artifacts.push(artifact),
                Err(e) => {
                    if e.retryable() {
                        self.schedule_retry(&item.source, &yaml_digest);
                    }
                    let failure = Failure::new(e.code(), e.to_string()).in_component(&c.name);
                    return self.fail(&item, &deployment, failure);
                }
            }
        }
        self.retries.remove(&item.source);
        match self.prepare(&deployment, artifacts).await {
            Err(failure) => self.fail(&item, &deployment, failure),
            Ok(prepared) => {
                let timers = prepared
                    .workloads
                    .iter()
                    .filter_map(|(spec, w)| {
                        spec.extensions
                            .timer
                            .as_ref()
                            .map(|t| start_timer(w.clone(), t.every))
                    })
                    .collect();
                let previous = self.applied.insert(
                    deployment.id.clone(),
                    Applied {
                        source: item.source.clone(),
                        fingerprint,
                        deployment: deployment.clone(),
                        partition: prepared.partition,
                        memory: prepared.memory,
                        workloads: prepared.workloads,
                        _timers: timers,
                        files: prepared.files,
                        pins,
                        yaml_digest,
                    },
                );
                if let Some(previous) = previous {
                    if previous.source != item.source {
                        self.status.remove(&previous.source);
                    }
                }
                // Switch traffic now: the new revision is compiled and pre-instantiated.
                self.publish_routes();
                self.save_record(&item, &deployment.id);
                self.set_installed(&deployment.id);
                self.metrics.reconcile.outcome(ReconcileOutcome::Installed);
                tracing::info!(deployment = %deployment.name, "deployment installed");
            }
        }
    }

    fn fail(&self, item: &DesiredDeployment, deployment: &Deployment, mut failure: Failure) {
        let partition = self
            .applied
            .get(&deployment.id)
            .map(|a| a.partition.device_id.clone());
        if self.applied.contains_key(&deployment.id) {
            failure
                .message
                .push_str(" (the previous version keeps serving)");
        }
        self.report_invalid(
            &item.source,
            &Outline::from(deployment),
            partition.as_deref(),
            failure,
        );
    }

    fn set_state(
        &self,
        item: &DesiredDeployment,
        deployment: &Deployment,
        state: DeploymentState,
        partition: Option<&str>,
    ) {
        self.set_state_at(&item.source, deployment, state, partition)
    }

    fn set_state_at(
        &self,
        source: &str,
        deployment: &Deployment,
        state: DeploymentState,
        partition: Option<&str>,
    ) {
        self.status.set(
            source,
            DeploymentStatus {
                deployment_id: Some(deployment.id.clone()),
                name: Some(deployment.name.clone()),
                source: source.to_owned(),
                state,
                device_id: partition
                    .map(str::to_owned)
                    .or_else(|| directed_target(deployment)),
                error: None,
                components: deployment
                    .components
                    .iter()
                    .map(|c| ComponentStatus {
                        name: c.name.clone(),
                        state,
                        error: None,
                    })
                    .collect(),
                routes: Vec::new(),
            },
        );
    }

    fn set_installed(&self, id: &str) {
        let Some(applied) = self.applied.get(id) else {
            return;
        };
        let item_source = applied.source.clone();
        let routes = applied
            .workloads
            .iter()
            .filter_map(|(spec, _)| spec.extensions.http.as_ref())
            .map(|h| format!("{}{}", h.host.clone().unwrap_or_default(), h.route))
            .collect();
        self.status.set(
            &item_source,
            DeploymentStatus {
                deployment_id: Some(applied.deployment.id.clone()),
                name: Some(applied.deployment.name.clone()),
                source: item_source.clone(),
                state: DeploymentState::Installed,
                device_id: Some(applied.partition.device_id.clone()),
                error: None,
                components: applied
                    .deployment
                    .components
                    .iter()
                    .map(|c| ComponentStatus {
                        name: c.name.clone(),
                        state: DeploymentState::Installed,
                        error: None,
                    })
                    .collect(),
                routes,
            },
        );
    }

    fn requirement(&self, deployment: &Deployment) -> Requirement {
        let constraints = deployment
            .device_constraints
            .as_ref()
            .and_then(|c| c.get("capacityRequirements"));
        let memory = constraints
            .and_then(|c| c.get("memory"))
            .and_then(|m| m.as_str())
            .and_then(|m| m.parse::<ByteSize>().ok())
            .map(|b| b.0)
            .unwrap_or_else(|| {
                deployment
                    .components
                    .iter()
                    .filter_map(|c| c.extensions.memory)
                    .sum()
            });
        let cores = constraints
            .and_then(|c| c.get("cpu"))
            .and_then(|c| c.get("cores"))
            .and_then(|c| c.as_f64());
        Requirement { memory, cores }
    }

    async fn prepare(
        &self,
        deployment: &Deployment,
        artifacts: Vec<Artifact>,
    ) -> Result<Prepared, Failure> {
        let requirement = self.requirement(deployment);
        let mut committed: BTreeMap<String, u64> = BTreeMap::new();
        for (id, applied) in &self.applied {
            if id != &deployment.id {
                *committed.entry(applied.partition.id.clone()).or_default() += applied.memory;
            }
        }
        let eligible = |p: &Partition| match self.capabilities.get(&p.id) {
            Some(doc) => super::eligibility::check(deployment.device_constraints.as_ref(), doc)
                .map_err(|e| e.0),
            None => Ok(()),
        };
        let partition = place(
            deployment.device_id.as_deref(),
            &self.device_id,
            &self.partitions,
            requirement,
            &committed,
            &eligible,
        )?;

        // Routes held by the other deployments; this one's own old routes are free.
        let mut taken: BTreeMap<(Option<String>, String), String> = BTreeMap::new();
        for (id, applied) in &self.applied {
            if id == &deployment.id {
                continue;
            }
            for (spec, _) in &applied.workloads {
                if let Some(http) = &spec.extensions.http {
                    taken.insert(
                        (http.host.clone(), http.route.clone()),
                        format!(
                            "deployment {} component {}",
                            applied.deployment.name, spec.name
                        ),
                    );
                }
            }
        }

        let mut workloads = Vec::new();
        let mut files = Vec::new();
        for (component, artifact) in deployment.components.iter().zip(artifacts) {
            let fail = |code: &'static str, message: String| {
                Failure::new(code, message).in_component(&component.name)
            };
            let ext = &component.extensions;
            if let Some(http) = &ext.http {
                let key = (http.host.clone(), http.route.clone());
                if let Some(owner) = taken.get(&key) {
                    return Err(fail(
                        "wasmgate.route-conflict",
                        format!(
                            "component {}: route {} is already served by {owner}",
                            component.name, http.route
                        ),
                    ));
                }
                taken.insert(
                    key,
                    format!(
                        "deployment {} component {}",
                        deployment.name, component.name
                    ),
                );
            }
            let max_memory = partition.config.instance_memory();
            let memory_limit = ext.memory.unwrap_or(max_memory);
            if memory_limit > max_memory {
                return Err(fail(
                    "wasmgate.limits",
                    format!(
                        "component {}: limits.memory {} exceeds partition {}'s per-instance limit of {}",
                        component.name,
                        ByteSize(memory_limit),
                        partition.device_id,
                        ByteSize(max_memory)
                    ),
                ));
            }
            let max_timeout = partition.config.timeout();
            let timeout = ext.timeout.unwrap_or(max_timeout);
            if timeout > max_timeout {
                return Err(fail(
                    "wasmgate.limits",
                    format!(
                        "component {}: limits.timeout {timeout:?} exceeds partition {}'s maximum of {max_timeout:?}",
                        component.name, partition.device_id
                    ),
                ));
            }
            let engine = self.engine.clone();
            let aot = self.aot.clone();
            let bytes = artifact.bytes.clone();
            let shipped = artifact.precompiled.clone();
            let compiled = tokio::task::spawn_blocking(move || {
                let shipped = shipped.as_ref().map(|s| Shipped {
                    path: &s.path,
                    bytes: &s.bytes,
                });
                aot.load_component(&engine, &bytes, shipped)
            })
            .await
            .map_err(|e| fail("wasmgate.compile", format!("compiler task failed: {e}")))?
            .map_err(|e| fail(e.code(), format!("component {}: {e}", component.name)))?;
            let (compiled, outcome) = compiled;
            tracing::debug!(component = %component.name, digest = %artifact.digest, ?outcome, "component ready");
            let spec = WorkloadSpec {
                deployment_id: deployment.id.clone(),
                deployment_name: deployment.name.clone(),
                component: component.name.clone(),
                partition: partition.clone(),
                config: Arc::new(
                    component
                        .config
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                memory_limit,
                timeout,
                data_dir: ext.data_dir,
                outbound: ext.outbound.clone().into(),
            };
            let needs = Exports {
                http: ext.http.is_some(),
                event: ext.timer.is_some(),
            };
            let metrics =
                self.metrics
                    .workload(&deployment.name, &component.name, &partition.device_id);
            let workload = Workload::new(spec, &self.linker, &compiled, needs)
                .map_err(|e| fail("wasmgate.component", e.to_string()))?
                .with_metrics(metrics);
            if artifact.watch {
                files.push(artifact.path.clone());
            }
            workloads.push((component.clone(), Arc::new(workload)));
        }
        Ok(Prepared {
            partition,
            memory: requirement.memory,
            workloads,
            files,
        })
    }

    fn publish_routes(&self) {
        let routes = self
            .applied
            .values()
            .flat_map(|a| {
                a.workloads.iter().filter_map(|(spec, workload)| {
                    spec.extensions.http.as_ref().map(|http| Route {
                        host: http.host.clone(),
                        prefix: http.route.clone(),
                        workload: workload.clone(),
                    })
                })
            })
            .collect();
        let workloads = self
            .applied
            .values()
            .flat_map(|a| a.workloads.iter().map(|(_, w)| w.clone()))
            .collect();
        self.routes
            .store(Arc::new(RouteTable::new(routes, workloads)));
    }
}

/// Runs `workload` every `every`, one event at a time; a slow handler skips ticks
/// rather than piling them up.
fn start_timer(workload: Arc<Workload>, every: Duration) -> TimerHandle {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sequence = 0u64;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopped.changed() => break,
            }
            let scheduled_at_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let tick = Tick {
                sequence,
                scheduled_at_ms,
                period_ms: every.as_millis() as u64,
            };
            // Failures are logged and counted by the workload; the timer keeps going.
            let _ = workload.invoke_tick(tick).await;
            sequence += 1;
        }
    });
    TimerHandle { stop }
}

/// The device a deployment names when it names one (`DEVICE/PARTITION`), so status
/// reports made before placement still say which target they are about.
fn directed_target(deployment: &Deployment) -> Option<String> {
    super::model::directed_target(deployment.device_id.as_deref())
}
