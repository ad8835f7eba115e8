//! Building the reconciler: its linker, metrics and installer, the state it keeps
//! under `state-dir` (artifact store, applied records, garbage collection) and the
//! capabilities the partitions advertise.

use super::gc::Gc;
use super::install::Installer;
use super::records::Records;
use super::report::Reporter;
use super::Reconciler;
use crate::deploy::artifact::Artifacts;
use crate::deploy::status::StatusBoard;
use crate::deploy::store::{AppliedStore, GcPolicy};
use crate::engine::{AotCache, WasmEngine};
use crate::sandbox::Partition;
use crate::telemetry::Metrics;
use crate::trigger::SharedRoutes;
use crate::types::PartitionId;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;

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
            parsed: Default::default(),
            next_install: 0,
            replace_due: false,
        })
    }

    /// The capabilities each partition advertises; deployments' `deviceConstraints`
    /// (capacity and eligibility rules) are checked against them before deploying.
    pub fn set_capabilities(&mut self, capabilities: BTreeMap<PartitionId, serde_json::Value>) {
        self.capabilities = capabilities;
    }

    /// Keeps state under `state_dir`: the artifact store (`artifacts/`), the applied
    /// deployments (`deployments/`), with garbage collection of the artifact store and
    /// the AOT cache, and registry access as `artifacts` and `registries` say.
    pub fn with_state(
        mut self,
        state_dir: &std::path::Path,
        artifacts: &crate::deploy::ArtifactsSettings,
        registries: &crate::deploy::Registries,
    ) -> std::io::Result<Self> {
        let settings = crate::deploy::oci::OciSettings {
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
}
