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
//!
//! Split by job: `setup` (building the reconciler and its state), `pass` (a pass and
//! the restore before the first), `plan` (what a pass does, without I/O), `install`
//! (resolve, fetch, compile), `flight` (installs in flight and their commit order),
//! `activate` (the commit-time checks), `reconfigure` (partitions changing under
//! running deployments), `running` (routes, GC holds and removal following the running
//! set), `outcome` (installed, failed, retried), `report` (status board updates),
//! `records` (applied deployments on disk), `gc` (garbage collection and the cache
//! quota) and `queries` (what the owners read between passes).

mod activate;
mod flight;
mod gc;
mod install;
mod outcome;
mod pass;
mod plan;
mod queries;
mod reconfigure;
mod records;
mod report;
mod running;
mod setup;

use crate::types::{DeploymentId, PartitionId};
use activate::Applied;
use flight::InFlight;
use install::{Event, Installer};
use plan::Retry;
use records::Records;
use report::Reporter;

use super::status::StatusBoard;
use crate::sandbox::Partition;
use crate::telemetry::Metrics;
use crate::trigger::SharedRoutes;
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
    /// The last pass's valid documents, not parsed again while unchanged.
    parsed: plan::Parsed,
    next_install: u64,
    /// The partitions changed ([`Reconciler::reconfigure`]) and the next pass must
    /// place again what runs in a partition that changed or left.
    replace_due: bool,
}
