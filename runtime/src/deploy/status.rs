//! What the reconciler did with each deployment, for the admin endpoints (and, with a
//! WFM, for status reports). States and their names follow the Margo deployment status.

use crate::types::DeploymentId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::RwLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentState {
    Pending,
    Installing,
    Installed,
    Failed,
    Removing,
    Removed,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// Deployment id, when the document got far enough to have one.
    pub deployment_id: Option<DeploymentId>,
    pub name: Option<String>,
    /// The YAML file (local mode) the deployment came from.
    pub source: String,
    pub state: DeploymentState,
    /// Where it runs (`DEVICE/PARTITION`).
    pub device_id: Option<String>,
    pub error: Option<StatusError>,
    pub components: Vec<ComponentStatus>,
    /// Routes served, as `host` + path prefix.
    pub routes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusError {
    /// Margo reserved gateway codes (`101` unknown child, `103` no placement) or
    /// `wasmgate.*` codes for our own failures.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub state: DeploymentState,
    pub error: Option<StatusError>,
    /// `properties.revision` of the document, when it got far enough to be read.
    pub revision: Option<String>,
    /// `sha256:<hex>` of the component bytes, once installed.
    pub digest: Option<String>,
}

/// How the WFM client's exchange with the fleet manager stands, for `/status`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WfmSync {
    pub profile: String,
    /// Onboarded (rc.2) or configured (rc.3) and talking to the WFM.
    pub connected: bool,
    /// The last cycle that stopped early, and why.
    pub last_error: Option<String>,
    /// Unix seconds of the last complete sync round.
    pub last_sync: Option<u64>,
    pub accepted_manifest_version: crate::types::ManifestVersion,
    /// Status reports waiting for delivery.
    pub outbox_depth: usize,
    /// One entry per deployment target whose capabilities we report.
    pub targets: Vec<CapabilityReport>,
}

/// The state of one target's capabilities report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityReport {
    pub device_id: String,
    /// `accepted`, `refused` or `pending` (not sent yet on this run).
    pub state: &'static str,
    /// HTTP status and problem `type` of the last refusal.
    pub status: Option<u16>,
    pub problem_type: Option<String>,
    pub detail: Option<String>,
    /// Refusals in a row.
    pub failures: u32,
    /// Seconds until the next attempt (sooner when the document changes).
    pub retry_in_seconds: Option<u64>,
}

/// The latest status per source, plus whether the last desired state was fully applied.
#[derive(Debug, Default)]
pub struct StatusBoard {
    inner: RwLock<Board>,
    wfm: RwLock<Option<WfmSync>>,
    /// Receivers of every change (the WFM client turns them into status reports).
    subscribers: std::sync::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<DeploymentStatus>>>,
}

#[derive(Debug, Default)]
struct Board {
    entries: BTreeMap<String, DeploymentStatus>,
    reconciled: bool,
    generation: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    pub reconciled: bool,
    pub generation: u64,
    pub deployments: Vec<DeploymentStatus>,
}

impl StatusBoard {
    pub fn set(&self, key: &str, status: DeploymentStatus) {
        {
            let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            subscribers.retain(|s| s.send(status.clone()).is_ok());
        }
        let mut board = self.inner.write().unwrap_or_else(|e| e.into_inner());
        board.entries.insert(key.to_owned(), status);
    }

    /// Every later [`set`](Self::set), in order.
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<DeploymentStatus> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    pub fn remove(&self, key: &str) {
        let mut board = self.inner.write().unwrap_or_else(|e| e.into_inner());
        board.entries.remove(key);
    }

    /// The current status of one source, without copying the whole board.
    pub fn get(&self, key: &str) -> Option<DeploymentStatus> {
        let board = self.inner.read().unwrap_or_else(|e| e.into_inner());
        board.entries.get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        let board = self.inner.read().unwrap_or_else(|e| e.into_inner());
        board.entries.keys().cloned().collect()
    }

    /// Marks the start (`false`) or the end (`true`) of applying a desired state.
    pub fn set_reconciled(&self, done: bool) {
        let mut board = self.inner.write().unwrap_or_else(|e| e.into_inner());
        board.reconciled = done;
        if done {
            board.generation += 1;
        }
    }

    pub fn set_wfm(&self, sync: WfmSync) {
        *self.wfm.write().unwrap_or_else(|e| e.into_inner()) = Some(sync);
    }

    /// The WFM client's state; `None` in local mode.
    pub fn wfm(&self) -> Option<WfmSync> {
        self.wfm.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let board = self.inner.read().unwrap_or_else(|e| e.into_inner());
        StatusSnapshot {
            reconciled: board.reconciled,
            generation: board.generation,
            deployments: board.entries.values().cloned().collect(),
        }
    }
}
