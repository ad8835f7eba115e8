//! Sandbox partitions: the slices of the device that deployments are placed into and
//! that the WFM sees as deployment targets. Each partition owns its budgets (CPU share,
//! memory for all live instances, concurrency, storage) and its data on disk.

mod cpu;
mod memory;

pub use cpu::CpuShare;
pub use memory::{InstanceLimiter, MemoryBudget, MemoryDenial};

use crate::config::PartitionConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmgate_host_api::{KvStore, KvStoreError};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("partition {partition}: {source}")]
    Kv {
        partition: String,
        #[source]
        source: KvStoreError,
    },
    #[error("partition {partition}: cannot create {path}: {source}")]
    Dir {
        partition: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a request or event could not get an instance slot.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmissionError {
    #[error("partition {partition} is at its concurrency limit ({limit} running instances); retry later")]
    Busy { partition: String, limit: u32 },
}

/// A live partition.
pub struct Partition {
    pub id: String,
    /// `DEVICE/PARTITION`, the id the WFM and deployment YAMLs use.
    pub device_id: String,
    pub config: PartitionConfig,
    pub memory: Arc<MemoryBudget>,
    pub cpu: Arc<CpuShare>,
    slots: Arc<Semaphore>,
    pub kv: Arc<KvStore>,
    files_dir: PathBuf,
    /// Last measured storage use and when, so requests do not walk the data
    /// directory every time.
    storage_sample: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("device_id", &self.device_id)
            .finish()
    }
}

impl Partition {
    /// Opens the partition's state under `state_dir/partitions/<id>`.
    pub fn open(
        device_id: &str,
        config: &PartitionConfig,
        state_dir: &Path,
    ) -> Result<Arc<Self>, SandboxError> {
        let root = state_dir.join("partitions").join(&config.id);
        let files_dir = root.join("files");
        std::fs::create_dir_all(&files_dir).map_err(|source| SandboxError::Dir {
            partition: config.id.clone(),
            path: files_dir.clone(),
            source,
        })?;
        let kv = KvStore::open(&root.join("kv.redb"), config.storage.0).map_err(|source| {
            SandboxError::Kv {
                partition: config.id.clone(),
                source,
            }
        })?;
        Ok(Arc::new(Self {
            id: config.id.clone(),
            device_id: format!("{device_id}/{}", config.id),
            config: config.clone(),
            memory: Arc::new(MemoryBudget::new(config.memory.0)),
            cpu: Arc::new(CpuShare::new(config.cpu)),
            slots: Arc::new(Semaphore::new(config.concurrency() as usize)),
            kv,
            files_dir,
            storage_sample: std::sync::Mutex::new(None),
        }))
    }

    /// Waits up to the partition's queue timeout for an instance slot.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, AdmissionError> {
        self.admit_within(self.config.queue_timeout()).await
    }

    pub async fn admit_within(
        &self,
        wait: Duration,
    ) -> Result<OwnedSemaphorePermit, AdmissionError> {
        let busy = || AdmissionError::Busy {
            partition: self.device_id.clone(),
            limit: self.config.concurrency(),
        };
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy()),
        }
    }

    /// Instances running right now.
    pub fn active_instances(&self) -> u32 {
        self.config.concurrency() - self.slots.available_permits() as u32
    }

    /// The private directory of one deployment, preopened as `/data` when asked for.
    pub fn data_dir(&self, deployment: &str) -> std::io::Result<PathBuf> {
        let dir = self.files_dir.join(deployment);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Bytes stored by the partition: key-value data plus files.
    pub fn storage_used(&self) -> u64 {
        self.kv.used_bytes().unwrap_or(0) + dir_size(&self.files_dir)
    }

    /// Whether the partition's data is at or over its storage quota, measured at most
    /// once per second. Key-value writes are refused exactly at the quota; files,
    /// which guests write through WASI directly, are checked here before each
    /// instance starts, and an instance of a full partition gets `/data` read-only.
    pub fn storage_full(&self) -> bool {
        let mut sample = self
            .storage_sample
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let used = match *sample {
            Some((at, used)) if now.duration_since(at) < Duration::from_secs(1) => used,
            _ => {
                let used = self.storage_used();
                *sample = Some((now, used));
                used
            }
        };
        used >= self.config.storage.0
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_size(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
