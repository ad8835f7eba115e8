//! What the reconciler did with each deployment, for the admin endpoints (and, with a
//! WFM, for status reports). States and their names follow the Margo deployment status.

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
    pub deployment_id: Option<String>,
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
}

/// The latest status per source, plus whether the last desired state was fully applied.
#[derive(Debug, Default)]
pub struct StatusBoard {
    inner: RwLock<Board>,
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

    pub fn snapshot(&self) -> StatusSnapshot {
        let board = self.inner.read().unwrap_or_else(|e| e.into_inner());
        StatusSnapshot {
            reconciled: board.reconciled,
            generation: board.generation,
            deployments: board.entries.values().cloned().collect(),
        }
    }
}
