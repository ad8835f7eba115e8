//! The reconcile loop: compare the desired deployments with what runs, act, record the
//! outcome. Idempotent: applying the same desired state twice changes nothing. A
//! deployment that fails to apply never disturbs the others, and an update that fails
//! leaves the previous version serving.

use super::artifact::{load_local, Artifact};
use super::model::{ComponentSpec, Deployment};
use super::placement::{place, PlacementError, Requirement};
use super::status::{ComponentStatus, DeploymentState, DeploymentStatus, StatusBoard, StatusError};
use crate::engine::{AotCache, WasmEngine};
use crate::ingress::{Route, RouteTable, SharedRoutes};
use crate::sandbox::Partition;
use crate::units::ByteSize;
use crate::workload::{Exports, InstanceState, Tick, Workload, WorkloadSpec};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wasmtime::component::Linker;

/// One desired deployment document and where it came from.
#[derive(Debug, Clone)]
pub struct DesiredDeployment {
    /// Where the document came from (file path in local mode); the status key.
    pub source: String,
    /// Relative component paths resolve against this folder.
    pub base_dir: PathBuf,
    pub yaml: Vec<u8>,
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
}

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
        Ok(Self {
            engine,
            linker,
            aot,
            device_id,
            partitions,
            routes,
            status,
            applied: BTreeMap::new(),
        })
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
    pub async fn apply(&mut self, desired: Vec<DesiredDeployment>) {
        self.status.set_reconciled(false);
        let mut wanted: BTreeMap<String, (DesiredDeployment, Deployment)> = BTreeMap::new();
        let mut sources = BTreeSet::new();
        let mut desired = desired;
        desired.sort_by(|a, b| a.source.cmp(&b.source));
        for item in desired {
            sources.insert(item.source.clone());
            match Deployment::from_yaml(&item.yaml) {
                Err(err) => {
                    self.report_invalid(
                        &item.source,
                        None,
                        None,
                        Failure::new("wasmgate.invalid", err.to_string()),
                    );
                }
                Ok(deployment) => {
                    if let Some((first, _)) = wanted.get(&deployment.id) {
                        let message =
                            format!("id {} is already used by {}", deployment.id, first.source);
                        self.report_invalid(
                            &item.source,
                            Some(&deployment),
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
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
        for key in self.status.keys() {
            if !sources.contains(&key) {
                self.status.remove(&key);
            }
        }

        let mut order: Vec<_> = wanted.into_values().collect();
        order.sort_by(|a, b| a.0.source.cmp(&b.0.source));
        for (item, deployment) in order {
            self.apply_one(item, deployment).await;
        }
        self.publish_routes();
        self.status.set_reconciled(true);
    }

    fn report_invalid(
        &self,
        source: &str,
        deployment: Option<&Deployment>,
        partition: Option<&str>,
        failure: Failure,
    ) {
        tracing::error!(source, error = %failure.message, "deployment rejected");
        self.status.set(
            source,
            DeploymentStatus {
                deployment_id: deployment.map(|d| d.id.clone()),
                name: deployment.map(|d| d.name.clone()),
                source: source.to_owned(),
                state: DeploymentState::Failed,
                device_id: partition.map(str::to_owned),
                components: deployment
                    .map(|d| {
                        d.components
                            .iter()
                            .map(|c| ComponentStatus {
                                name: c.name.clone(),
                                state: DeploymentState::Failed,
                                error: (failure.component.as_deref() == Some(c.name.as_str()))
                                    .then(|| StatusError {
                                        code: failure.code.into(),
                                        message: failure.message.clone(),
                                    }),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
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
            // Dropping `applied` stops its timers; in-flight requests keep their own
            // reference to the workload and finish.
            self.publish_routes();
            self.status.remove(&applied.source);
        }
    }

    async fn apply_one(&mut self, item: DesiredDeployment, deployment: Deployment) {
        let artifacts: Result<Vec<Artifact>, Failure> = deployment
            .components
            .iter()
            .map(|c| {
                load_local(&c.repository, &item.base_dir).map_err(|e| {
                    Failure::new("wasmgate.artifact", e.to_string()).in_component(&c.name)
                })
            })
            .collect();
        let artifacts = match artifacts {
            Ok(a) => a,
            Err(failure) => return self.fail(&item, &deployment, failure),
        };
        let fingerprint = {
            let mut h = Sha256::new();
            h.update(&item.yaml);
            for a in &artifacts {
                h.update(a.digest.as_bytes());
            }
            hex::encode(h.finalize())
        };
        if let Some(current) = self.applied.get_mut(&deployment.id) {
            if current.fingerprint == fingerprint {
                if current.source != item.source {
                    self.status.remove(&current.source);
                    current.source = item.source.clone();
                    self.set_installed(&deployment.id);
                }
                return;
            }
        }
        self.set_state(&item, &deployment, DeploymentState::Installing, None);
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
                    },
                );
                if let Some(previous) = previous {
                    if previous.source != item.source {
                        self.status.remove(&previous.source);
                    }
                }
                // Switch traffic now: the new revision is compiled and pre-instantiated.
                self.publish_routes();
                self.set_installed(&deployment.id);
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
            Some(deployment),
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
        self.status.set(
            &item.source,
            DeploymentStatus {
                deployment_id: Some(deployment.id.clone()),
                name: Some(deployment.name.clone()),
                source: item.source.clone(),
                state,
                device_id: partition.map(str::to_owned),
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
        let partition = place(
            deployment.device_id.as_deref(),
            &self.device_id,
            &self.partitions,
            requirement,
            &committed,
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
            let engine = self.engine.engine.clone();
            let aot = self.aot.clone();
            let bytes = artifact.bytes.clone();
            let compiled =
                tokio::task::spawn_blocking(move || aot.load_or_compile(&engine, &bytes))
                    .await
                    .map_err(|e| fail("wasmgate.compile", format!("compiler task failed: {e}")))?
                    .map_err(|e| {
                        fail(
                            "wasmgate.compile",
                            format!("component {}: {e}", component.name),
                        )
                    })?;
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
            let workload = Workload::new(spec, &self.linker, &compiled, needs)
                .map_err(|e| fail("wasmgate.component", e.to_string()))?;
            files.push(artifact.path.clone());
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
        self.routes.store(Arc::new(RouteTable::new(routes)));
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
