//! The commit-time checks of an installed deployment, in the documented order:
//! placement against what the deployments before it committed, limits against the
//! partition, route ownership, then the workloads built from the compiled components.

use super::install::Built;
use super::plan::requirement;
use super::report::Failure;
use crate::deploy::eligibility;
use crate::deploy::model::{ComponentSpec, Deployment};
use crate::deploy::placement::place_keeping;
use crate::deploy::store::Pin;
use crate::sandbox::Partition;
use crate::telemetry::Metrics;
use crate::trigger::TimerHandle;
use crate::types::{DeploymentId, PartitionId};
use crate::units::ByteSize;
use crate::workload::{Exports, InstanceState, Workload, WorkloadSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use wasmtime::component::Linker;

/// A deployment that runs.
pub struct Applied {
    pub source: String,
    pub fingerprint: String,
    pub deployment: Deployment,
    pub partition: Arc<Partition>,
    pub memory: u64,
    pub workloads: Vec<(ComponentSpec, Arc<Workload>)>,
    pub _timers: Vec<TimerHandle>,
    pub files: Vec<PathBuf>,
    /// What each component resolved to, and the digest of the document applied.
    pub pins: Vec<Pin>,
    pub yaml_digest: String,
}

impl Applied {
    pub fn routes(&self) -> Vec<String> {
        self.workloads
            .iter()
            .filter_map(|(spec, _)| spec.extensions.http.as_ref())
            .map(|h| format!("{}{}", h.host.clone().unwrap_or_default(), h.route))
            .collect()
    }
}

/// A deployment built and ready to take traffic.
pub struct Prepared {
    pub partition: Arc<Partition>,
    pub memory: u64,
    pub workloads: Vec<(ComponentSpec, Arc<Workload>)>,
    pub files: Vec<PathBuf>,
}

/// What activation checks against.
pub struct Host<'a> {
    pub device_id: &'a str,
    pub partitions: &'a [Arc<Partition>],
    /// Capabilities document per partition id, for `deviceConstraints`.
    pub capabilities: &'a BTreeMap<PartitionId, serde_json::Value>,
    pub applied: &'a BTreeMap<DeploymentId, Applied>,
    pub linker: &'a Linker<InstanceState>,
    pub metrics: &'a Metrics,
}

/// Whether `partition` is one of `partitions` as they are now (not a version a
/// reloaded configuration resized or removed).
pub fn placed_in(partition: &Arc<Partition>, partitions: &[Arc<Partition>]) -> bool {
    partitions.iter().any(|p| Arc::ptr_eq(p, partition))
}

pub fn activate(
    host: &Host<'_>,
    deployment: &Deployment,
    built: &Built,
) -> Result<Prepared, Failure> {
    let requirement = requirement(deployment);
    let mut committed: BTreeMap<PartitionId, u64> = BTreeMap::new();
    for (id, applied) in host.applied {
        // What runs in a partition that changed or left is placed again after this, in
        // source order; it holds no room in the new partitions yet.
        if id != &deployment.id && placed_in(&applied.partition, host.partitions) {
            *committed.entry(applied.partition.id.clone()).or_default() += applied.memory;
        }
    }
    let eligible = |p: &Partition| match host.capabilities.get(&p.id) {
        Some(doc) => {
            eligibility::check(deployment.device_constraints.as_ref(), doc).map_err(|e| e.0)
        }
        None => Ok(()),
    };
    let current = host.applied.get(&deployment.id).map(|a| &a.partition.id);
    let partition = place_keeping(
        current,
        deployment.device_id.as_deref(),
        host.device_id,
        host.partitions,
        requirement,
        &committed,
        &eligible,
    )?;

    // Routes held by the other deployments; this one's own old routes are free.
    let mut taken: BTreeMap<(Option<String>, String), String> = BTreeMap::new();
    for (id, applied) in host.applied {
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
    for (component, ready) in deployment.components.iter().zip(&built.components) {
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
        let ready = ready.as_ref().map_err(Clone::clone)?;
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
            reuse: ext.reuse,
        };
        let needs = Exports {
            http: ext.http.is_some(),
            event: ext.timer.is_some(),
        };
        let metrics =
            host.metrics
                .workload(&deployment.name, &component.name, &partition.device_id);
        let workload = Workload::new(spec, host.linker, &ready.component, needs)
            .map_err(|e| fail("wasmgate.component", e.to_string()))?
            .with_metrics(metrics);
        tracing::debug!(component = %component.name, digest = %ready.digest, "workload built");
        files.extend(ready.watch.clone());
        workloads.push((component.clone(), Arc::new(workload)));
    }
    Ok(Prepared {
        partition,
        memory: requirement.memory,
        workloads,
        files,
    })
}
