//! The command's view of the `/status` document: lenient, so a host of another version
//! still shows what it has.

use serde::Deserialize;

/// The parts of the `/status` document the command reads. Every field has a default,
/// so a host of another version still shows what it has.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StatusReport {
    pub version: Option<String>,
    pub device_id: String,
    pub reconciled: bool,
    pub generation: u64,
    pub deployments: Vec<DeploymentView>,
    pub partitions: Vec<PartitionView>,
    pub wfm: Option<WfmView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DeploymentView {
    pub deployment_id: Option<String>,
    pub name: Option<String>,
    pub source: String,
    pub state: String,
    pub device_id: Option<String>,
    pub error: Option<ErrorView>,
    pub components: Vec<ComponentView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ComponentView {
    pub name: String,
    pub state: String,
    pub error: Option<ErrorView>,
    pub revision: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PartitionView {
    pub device_id: String,
    pub cpu: f64,
    pub memory: MemoryView,
    pub storage: StorageView,
    pub concurrency: ConcurrencyView,
    pub throttled_seconds: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MemoryView {
    pub limit: u64,
    pub used: u64,
    pub instance_limit: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StorageView {
    pub quota: u64,
    pub used: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConcurrencyView {
    pub limit: u32,
    pub in_use: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WfmView {
    pub profile: String,
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_sync: Option<u64>,
    pub accepted_manifest_version: u64,
    pub outbox_depth: usize,
    pub targets: Vec<TargetView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TargetView {
    pub device_id: String,
    pub state: String,
    pub status: Option<u16>,
    pub problem_type: Option<String>,
    pub detail: Option<String>,
    pub failures: u32,
    pub retry_in_seconds: Option<u64>,
}

impl DeploymentView {
    pub(super) fn label(&self) -> &str {
        self.name
            .as_deref()
            .or(self.deployment_id.as_deref())
            .unwrap_or(&self.source)
    }
}
