//! Sandbox partitions: the slices of the device that deployments are placed into and
//! that the WFM sees as deployment targets. Each partition owns its budgets (CPU share,
//! memory for all live instances, concurrency, storage) and its data on disk.

mod cpu;
mod guests;
mod idle;
mod memory;
mod settings;

pub use cpu::CpuShare;
pub use guests::{workers_for, GuestRuntime, GuestRuntimeError};
pub use idle::{IdlePool, ParkedInstance};
pub use memory::{InstanceLimiter, MemoryBudget, MemoryDenial};
pub use settings::{
    PartitionSettings, DEFAULT_CONCURRENCY, DEFAULT_INSTANCE_MEMORY, DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_TIMEOUT,
};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    #[error(transparent)]
    Runtime(#[from] GuestRuntimeError),
}

/// Why a request or event could not get an instance slot.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmissionError {
    #[error("partition {partition} is at its concurrency limit ({limit} running instances); retry later")]
    Busy { partition: String, limit: u32 },
}

/// The partitions as they are now: the admin listener reads them, a reloaded host
/// configuration replaces them.
pub type SharedPartitions = Arc<arc_swap::ArcSwap<Vec<Arc<Partition>>>>;

/// A live partition.
pub struct Partition {
    pub id: crate::types::PartitionId,
    /// `DEVICE/PARTITION`, the id the WFM and deployment YAMLs use.
    pub device_id: crate::types::DeviceId,
    pub config: PartitionSettings,
    pub memory: Arc<MemoryBudget>,
    pub cpu: Arc<CpuShare>,
    slots: Arc<Semaphore>,
    pub kv: Arc<KvStore>,
    files_dir: PathBuf,
    storage: Arc<StorageSample>,
    /// Instances parked between requests by workloads that reuse them.
    idle: Arc<IdlePool>,
    /// Where this partition's guests run; last field, so it shuts down after the rest.
    guests: GuestRuntime,
}

/// How often the storage use of a partition in use is measured again.
const STORAGE_SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// The partition's last measured storage use. Measuring walks the data directory, so a
/// background task does it on the partition's blocking threads, never a request.
#[derive(Debug, Default)]
struct StorageSample {
    used: AtomicU64,
    /// An instance ended since the last measurement, so files or keys may have changed.
    dirty: AtomicBool,
}

/// An instance slot of a partition, held while the instance lives.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    storage: Arc<StorageSample>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.storage.dirty.store(true, Ordering::Relaxed);
    }
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
        device_id: &crate::types::DeviceId,
        config: &PartitionSettings,
        state_dir: &Path,
    ) -> Result<Arc<Self>, SandboxError> {
        let root = state_dir.join("partitions").join(&config.id);
        let files_dir = root.join("files");
        std::fs::create_dir_all(&files_dir).map_err(|source| SandboxError::Dir {
            partition: config.id.to_string(),
            path: files_dir.clone(),
            source,
        })?;
        let kv = KvStore::open(&root.join("kv.redb"), config.storage.0).map_err(|source| {
            SandboxError::Kv {
                partition: config.id.to_string(),
                source,
            }
        })?;
        let guests = GuestRuntime::new(&config.id, config.cpu)?;
        // Measured once here (start-up, not a request) so quotas hold from the first
        // instance on.
        let storage = Arc::new(StorageSample {
            used: AtomicU64::new(measure_storage(&kv, &files_dir)),
            dirty: AtomicBool::new(false),
        });
        let slots = Arc::new(Semaphore::new(config.concurrency() as usize));
        guests.spawn(sample_storage(
            storage.clone(),
            kv.clone(),
            files_dir.clone(),
            slots.clone(),
            config.concurrency(),
        ));
        let idle = Arc::new(IdlePool::default());
        guests.spawn(IdlePool::reap(idle.clone()));
        Ok(Arc::new(Self {
            id: config.id.clone(),
            device_id: device_id.child(&config.id),
            config: config.clone(),
            memory: Arc::new(MemoryBudget::new(config.memory.0)),
            cpu: Arc::new(CpuShare::new(config.cpu)),
            slots,
            kv,
            files_dir,
            storage,
            idle,
            guests,
        }))
    }

    /// The same partition under a changed configuration (a reloaded host config): the
    /// same data (key-value store and files; the caller sets the store's new quota when
    /// it commits to the change), new budgets, slots and guest threads. Instances already running keep the old budgets until they
    /// end, so for one request deadline both sets of limits are in use.
    pub fn resized(&self, config: &PartitionSettings) -> Result<Arc<Self>, SandboxError> {
        debug_assert_eq!(config.id, self.id);
        let guests = GuestRuntime::new(&config.id, config.cpu)?;
        let slots = Arc::new(Semaphore::new(config.concurrency() as usize));
        // One sample shared with the old partition: an instance of either marks it.
        guests.spawn(sample_storage(
            self.storage.clone(),
            self.kv.clone(),
            self.files_dir.clone(),
            slots.clone(),
            config.concurrency(),
        ));
        // Parked instances stay with the old partition and end with it.
        let idle = Arc::new(IdlePool::default());
        guests.spawn(IdlePool::reap(idle.clone()));
        Ok(Arc::new(Self {
            id: self.id.clone(),
            device_id: self.device_id.clone(),
            config: config.clone(),
            memory: Arc::new(MemoryBudget::new(config.memory.0)),
            cpu: Arc::new(CpuShare::new(config.cpu)),
            slots,
            kv: self.kv.clone(),
            files_dir: self.files_dir.clone(),
            storage: self.storage.clone(),
            idle,
            guests,
        }))
    }

    /// The runtime this partition's guests run on.
    pub fn guests(&self) -> &GuestRuntime {
        &self.guests
    }

    /// Waits up to the partition's queue timeout for an instance slot.
    pub async fn admit(&self) -> Result<Slot, AdmissionError> {
        self.admit_within(self.config.queue_timeout()).await
    }

    pub async fn admit_within(&self, wait: Duration) -> Result<Slot, AdmissionError> {
        let busy = || AdmissionError::Busy {
            partition: self.device_id.to_string(),
            limit: self.config.concurrency(),
        };
        let slot = |permit| Slot {
            _permit: permit,
            storage: self.storage.clone(),
        };
        // A free slot is the common case: take it without arming a queue timer.
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => return Ok(slot(permit)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(busy()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(slot(permit)),
            _ => Err(busy()),
        }
    }

    /// Instances parked between requests.
    pub fn idle(&self) -> &Arc<IdlePool> {
        &self.idle
    }

    /// Parks `instance` of `owner` for `idle`, if the partition has room: parked and
    /// running instances together stay within its concurrency (the caller still holds
    /// its slot, which it gives up next).
    pub fn park(&self, owner: u64, instance: ParkedInstance, idle: Duration) {
        let running_others = self.active_instances().saturating_sub(1);
        let room = self.config.concurrency().saturating_sub(running_others);
        self.idle.park(owner, instance, idle, room as usize);
    }

    /// Before an admitted request instantiates afresh: ends the oldest parked instances
    /// while parked and running ones would exceed the concurrency (the pool's size).
    pub fn make_room(&self) {
        if self.idle.is_empty() {
            return;
        }
        let keep = self
            .config
            .concurrency()
            .saturating_sub(self.active_instances());
        self.idle.trim(keep as usize);
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

    /// Bytes stored by the partition (key-value data plus files) at the last
    /// measurement, at most about [`STORAGE_SAMPLE_PERIOD`] old while the partition
    /// is in use.
    pub fn storage_used(&self) -> u64 {
        self.storage.used.load(Ordering::Relaxed)
    }

    /// Whether the partition's data is at or over its storage quota. Key-value writes
    /// are refused exactly at the quota; files, which guests write through WASI
    /// directly, are checked here before each instance starts, and an instance of a
    /// full partition gets `/data` read-only.
    pub fn storage_full(&self) -> bool {
        self.storage_used() >= self.config.storage.0
    }
}

fn measure_storage(kv: &KvStore, files_dir: &Path) -> u64 {
    kv.used_bytes().unwrap_or(0) + dir_size(files_dir)
}

/// Re-measures storage every period while instances run or after one ended; an idle
/// partition costs no directory walks. Ends with the partition's runtime.
async fn sample_storage(
    sample: Arc<StorageSample>,
    kv: Arc<KvStore>,
    files_dir: PathBuf,
    slots: Arc<Semaphore>,
    concurrency: u32,
) {
    let mut interval = tokio::time::interval(STORAGE_SAMPLE_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let active = slots.available_permits() < concurrency as usize;
        if !sample.dirty.swap(false, Ordering::Relaxed) && !active {
            continue;
        }
        let (kv, dir) = (kv.clone(), files_dir.clone());
        if let Ok(used) = tokio::task::spawn_blocking(move || measure_storage(&kv, &dir)).await {
            sample.used.store(used, Ordering::Relaxed);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DeviceId, PartitionId};

    #[tokio::test]
    async fn admission_takes_a_free_slot_at_once_and_queues_in_order_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings =
            PartitionSettings::new(PartitionId::parse("apps").unwrap(), 1.0, 64 << 20, 1 << 20);
        settings.concurrency = Some(1);
        let device = DeviceId::parse("edge-01").unwrap();
        let partition = Partition::open(&device, &settings, dir.path()).unwrap();

        let first = partition.admit_within(Duration::ZERO).await.unwrap();
        assert_eq!(partition.active_instances(), 1);
        let err = partition
            .admit_within(Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("edge-01/apps"), "{err}");

        // A queued request gets the slot when it frees; a later one cannot jump it.
        let queued = {
            let partition = partition.clone();
            tokio::spawn(async move { partition.admit_within(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(partition.admit_within(Duration::ZERO).await.is_err());
        let second = queued.await.unwrap().unwrap();
        assert_eq!(partition.active_instances(), 1);
        drop(second);
        assert_eq!(partition.active_instances(), 0);
        partition.admit_within(Duration::ZERO).await.unwrap();
    }
}
