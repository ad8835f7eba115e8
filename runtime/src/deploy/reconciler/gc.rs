//! Garbage collection of the artifact store, the AOT cache and the table of loaded
//! components, and the cache quota
//! checked before new artifacts are stored. Installs run concurrently, so what they
//! are about to use counts as referenced until they finish or are abandoned.

use super::report::Failure;
use crate::deploy::store::{collect_garbage, BlobStore, GcPolicy, Pin};
use crate::engine::AotCache;
use crate::types::sha256_hex;
use crate::units::ByteSize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub struct Gc {
    blobs: Option<BlobStore>,
    aot: AotCache,
    policy: GcPolicy,
    /// One eviction at a time: two installs making room together could each evict
    /// what the other just counted on.
    sweeping: tokio::sync::Mutex<()>,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Digests (hex) of applied deployments and their records.
    running: BTreeSet<String>,
    /// Digests each install in flight is fetching or compiling.
    installing: BTreeMap<u64, BTreeSet<String>>,
}

/// What an install holds; released when dropped (also when the install is aborted).
pub struct Hold {
    gc: Arc<Gc>,
    install: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.gc.held().installing.remove(&self.install);
    }
}

fn hexes<'a>(pins: impl IntoIterator<Item = &'a Pin>) -> BTreeSet<String> {
    pins.into_iter()
        .filter_map(|p| sha256_hex(&p.digest).map(str::to_owned))
        .collect()
}

impl Gc {
    pub fn new(blobs: Option<BlobStore>, aot: AotCache, policy: GcPolicy) -> Self {
        Self {
            blobs,
            aot,
            policy,
            sweeping: tokio::sync::Mutex::new(()),
            held: Mutex::new(Held::default()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What running deployments (and their records) reference now.
    pub fn set_running<'a>(&self, pins: impl IntoIterator<Item = &'a Pin>) {
        self.held().running = hexes(pins);
    }

    pub fn hold(self: &Arc<Self>, install: u64, pins: &[Pin]) -> Hold {
        self.held().installing.insert(install, hexes(pins));
        Hold {
            gc: self.clone(),
            install,
        }
    }

    fn referenced(&self) -> BTreeSet<String> {
        let held = self.held();
        held.running
            .iter()
            .chain(held.installing.values().flatten())
            .cloned()
            .collect()
    }

    /// Before storing new artifacts: evicts unreferenced entries (whatever their age) as
    /// far as needed for `pins` to fit in the cache quota, and refuses the deployment
    /// when what is referenced leaves no room for them.
    pub async fn make_room(&self, pins: &[Pin]) -> Result<(), Failure> {
        let Some(blobs) = self.blobs.clone() else {
            return Ok(());
        };
        let _sweeping = self.sweeping.lock().await;
        let mut seen = BTreeSet::new();
        let needed: u64 = pins
            .iter()
            .filter_map(|p| sha256_hex(&p.digest).map(|hex| (hex, p.size)))
            .filter(|(hex, _)| blobs.size(hex).is_none() && seen.insert(hex.to_owned()))
            .map(|(_, size)| size)
            .sum();
        if needed == 0 {
            return Ok(());
        }
        let quota = self.policy.quota;
        let policy = GcPolicy {
            quota: quota.saturating_sub(needed),
            grace: self.policy.grace,
        };
        let (aot, referenced) = (self.aot.clone(), self.referenced());
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

    /// Removes artifacts and compiled code nothing references, once unused for the
    /// grace period (sooner when over the quota). Returns when to look again, if
    /// unreferenced entries were kept for their grace period.
    pub async fn collect(&self) -> Option<Instant> {
        // Loaded code nothing references is unmapped at once; files get a grace period.
        self.aot.retain_loaded(&self.referenced());
        let blobs = self.blobs.clone()?;
        let _sweeping = self.sweeping.lock().await;
        let (aot, policy, referenced) = (self.aot.clone(), self.policy, self.referenced());
        let report = tokio::task::spawn_blocking(move || {
            collect_garbage(&blobs, &aot, &referenced, policy, SystemTime::now())
        })
        .await;
        match report {
            Ok(report) if report.kept_unreferenced > 0 => {
                let every =
                    (self.policy.grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
                Some(Instant::now() + every)
            }
            _ => None,
        }
    }
}
