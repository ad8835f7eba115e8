//! What the reconciler keeps on disk under `state-dir`:
//!
//! - `artifacts/sha256/<hex>`: component bytes, content-addressed ([`BlobStore`]).
//!   Written by streaming into a temp file that is renamed into place only after its
//!   sha256 matched; re-verified on every load, a damaged blob is removed (and fetched
//!   again by the caller), never handed to the compiler.
//! - `deployments/<id>`: the applied deployments ([`AppliedStore`]): the exact YAML,
//!   where it came from and what each component resolved to (tag -> manifest and
//!   layer digests). A restart serves exactly these bytes again without asking a
//!   registry, and garbage collection treats them as roots.
//! - the AOT cache (`engine::AotCache`, in `aot/`) is collected together with the blobs.
//!
//! All writes are atomic (temp file + fsync + rename + directory fsync), so SIGKILL or
//! a power cut at any point leaves the previous or the next consistent state.

use crate::engine::AotCache;
use crate::fsutil::{AtomicFile, StateDir, StateError};
use crate::types::{sha256_of, DeploymentId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Content-addressed component bytes.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

/// A blob on disk, as garbage collection sees it.
#[derive(Debug, Clone)]
pub struct BlobEntry {
    pub hex: String,
    pub path: PathBuf,
    pub size: u64,
    pub used: SystemTime,
}

impl BlobStore {
    /// Opens `root/sha256`, removing what a crash left half-written.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let dir = root.join("sha256");
        std::fs::create_dir_all(&dir)?;
        let swept = crate::fsutil::remove_stale_temps(&dir)?;
        if swept > 0 {
            tracing::info!(dir = %dir.display(), swept, "removed partial downloads left by a crash");
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, hex: &str) -> PathBuf {
        self.dir.join(hex)
    }

    /// The verified bytes of blob `hex`; `None` when absent or damaged (a damaged blob
    /// is removed so that it is fetched again).
    pub fn load(&self, hex: &str) -> std::io::Result<Option<Vec<u8>>> {
        let path = self.path(hex);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let actual = sha256_of(&bytes);
        if actual != hex {
            tracing::warn!(path = %path.display(), expected = %hex, %actual,
                "discarding corrupt artifact (sha256 mismatch); it will be fetched again");
            std::fs::remove_file(&path)?;
            let _ = crate::fsutil::sync_dir(&self.dir);
            return Ok(None);
        }
        touch(&path);
        Ok(Some(bytes))
    }

    /// Size of blob `hex` when present (not verified).
    pub fn size(&self, hex: &str) -> Option<u64> {
        std::fs::metadata(self.path(hex)).ok().map(|m| m.len())
    }

    /// Stores `bytes` (already in memory) unless an intact copy is there.
    pub fn insert(&self, bytes: &[u8]) -> std::io::Result<String> {
        let hex = sha256_of(bytes);
        let path = self.path(&hex);
        if crate::fsutil::sha256_file(&path).is_ok_and(|actual| actual == hex) {
            touch(&path);
            return Ok(hex);
        }
        crate::fsutil::write_atomic(&path, bytes)?;
        Ok(hex)
    }

    /// Starts streaming blob `hex` into the store.
    pub fn writer(&self, hex: &str) -> std::io::Result<BlobWriter> {
        Ok(BlobWriter {
            file: AtomicFile::create(&self.path(hex))?,
            hasher: Sha256::new(),
            expected: hex.to_owned(),
            written: 0,
        })
    }

    pub fn remove(&self, hex: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(hex)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// Every file of the store (temp files excluded).
    pub fn entries(&self) -> Vec<BlobEntry> {
        crate::fsutil::stored_files(&self.dir)
            .into_iter()
            .map(|file| BlobEntry {
                hex: file.name,
                path: file.path,
                size: file.size,
                used: file.used,
            })
            .collect()
    }
}

/// A blob being written: hashes what passes through and lands under its name only if
/// the hash matches.
pub struct BlobWriter {
    file: AtomicFile,
    hasher: Sha256,
    expected: String,
    written: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobWriteError {
    #[error("sha256 mismatch: expected sha256:{expected}, got sha256:{actual}")]
    Digest { expected: String, actual: String },
    #[error("cannot write to the artifact store: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobWriter {
    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        self.file.write_all(chunk)
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks the digest and moves the blob into place (durably). On a mismatch
    /// nothing is stored.
    pub fn finish(self) -> Result<(), BlobWriteError> {
        let actual = hex::encode(self.hasher.finalize());
        if actual != self.expected {
            return Err(BlobWriteError::Digest {
                expected: self.expected,
                actual,
            });
        }
        self.file.commit()?;
        Ok(())
    }
}

fn touch(path: &Path) {
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// What one component of an applied deployment resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    pub component: String,
    pub repository: String,
    pub revision: Option<String>,
    /// `sha256:<hex>` of the component bytes (the OCI layer digest).
    pub digest: String,
    /// `sha256:<hex>` of the OCI manifest the tag pointed to, for OCI components.
    pub manifest: Option<String>,
    pub size: u64,
}

/// A deployment as it was last applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedRecord {
    pub id: DeploymentId,
    /// Where the document came from (file path in local mode).
    pub source: String,
    pub base_dir: PathBuf,
    /// The exact document.
    pub yaml: String,
    /// `sha256:<hex>` of `yaml`.
    pub yaml_digest: String,
    pub pins: Vec<Pin>,
    /// Unix milliseconds.
    pub applied_at: u64,
}

/// `sha256:<hex>` of a deployment document's bytes.
pub fn document_digest(yaml: &[u8]) -> String {
    crate::types::Digest::of(yaml).to_string()
}

/// The applied deployments, one record per deployment id.
#[derive(Debug, Clone)]
pub struct AppliedStore {
    dir: StateDir,
}

impl AppliedStore {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        Ok(Self {
            dir: StateDir::open(dir)?,
        })
    }

    /// All readable records; a damaged one is logged, removed and skipped (the
    /// deployment is then applied from its desired document as if new).
    pub fn load_all(&self) -> Vec<AppliedRecord> {
        let keys = match self.dir.keys("") {
            Ok(keys) => keys,
            Err(err) => {
                tracing::error!(error = %err, "cannot list applied deployments");
                return Vec::new();
            }
        };
        let mut records = Vec::new();
        for key in keys {
            match self.dir.get_json::<AppliedRecord>(&key) {
                Ok(Some(record)) if record.id == key.as_str() => records.push(record),
                Ok(Some(_)) | Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "discarding an unreadable applied-deployment record");
                    let _ = self.dir.delete(&key);
                }
            }
        }
        records
    }

    pub fn save(&self, record: &AppliedRecord) -> Result<(), StateError> {
        self.dir.put_json(&record.id, record)
    }

    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        self.dir.delete(id)
    }

    pub fn ids(&self) -> Vec<String> {
        self.dir.keys("").unwrap_or_default()
    }
}

/// When unreferenced artifacts and compiled code are removed.
#[derive(Debug, Clone, Copy)]
pub struct GcPolicy {
    /// Most bytes blobs and AOT entries may take together; unreferenced entries are
    /// evicted (oldest use first) to stay below it, whatever their age.
    pub quota: u64,
    /// Unreferenced entries used within this period are kept (a rollback to the
    /// previous revision is then instant).
    pub grace: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            quota: 2 << 30,
            grace: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub removed: usize,
    pub freed: u64,
    /// Bytes still used after collection.
    pub used: u64,
    /// Unreferenced entries kept because their grace period has not ended.
    pub kept_unreferenced: usize,
}

/// Removes blobs and AOT entries whose component digest (hex) is not in `referenced`
/// and that were not used within the grace period; then, while above the quota, the
/// remaining unreferenced ones, least recently used first.
pub fn collect_garbage(
    blobs: &BlobStore,
    aot: &AotCache,
    referenced: &BTreeSet<String>,
    policy: GcPolicy,
    now: SystemTime,
) -> GcReport {
    struct Candidate {
        path: PathBuf,
        size: u64,
        used: SystemTime,
    }
    let mut used = 0u64;
    let mut candidates = Vec::new();
    for blob in blobs.entries() {
        used += blob.size;
        if !referenced.contains(&blob.hex) {
            candidates.push(Candidate {
                path: blob.path,
                size: blob.size,
                used: blob.used,
            });
        }
    }
    for entry in aot.entries() {
        used += entry.size;
        let live = entry.current_engine
            && entry
                .component
                .as_ref()
                .is_some_and(|c| referenced.contains(c));
        if !live {
            candidates.push(Candidate {
                path: entry.path,
                size: entry.size,
                used: entry.used,
            });
        }
    }
    candidates.sort_by_key(|c| c.used);
    let mut report = GcReport::default();
    for candidate in candidates {
        let expired = now
            .duration_since(candidate.used)
            .is_ok_and(|age| age >= policy.grace);
        if !expired && used <= policy.quota {
            report.kept_unreferenced += 1;
            continue;
        }
        match std::fs::remove_file(&candidate.path) {
            Ok(()) => {
                tracing::info!(path = %candidate.path.display(), bytes = candidate.size,
                    reason = if expired { "unused past the grace period" } else { "over the cache quota" },
                    "garbage-collected");
                used -= candidate.size;
                report.removed += 1;
                report.freed += candidate.size;
            }
            Err(err) => {
                tracing::warn!(path = %candidate.path.display(), error = %err, "cannot remove")
            }
        }
    }
    if report.removed > 0 {
        let _ = crate::fsutil::sync_dir(blobs.dir());
        let _ = crate::fsutil::sync_dir(aot.dir());
    }
    if used > policy.quota {
        tracing::warn!(
            used,
            quota = policy.quota,
            "artifacts of running deployments exceed the cache quota"
        );
    }
    report.used = used;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_on_write_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let hex = sha256_of(b"component");

        let mut w = store.writer(&hex).unwrap();
        w.write(b"compo").unwrap();
        w.write(b"nent").unwrap();
        w.finish().unwrap();
        assert_eq!(store.load(&hex).unwrap().unwrap(), b"component");

        // A writer fed the wrong bytes stores nothing.
        let other = sha256_of(b"other");
        let mut w = store.writer(&other).unwrap();
        w.write(b"not other").unwrap();
        assert!(matches!(w.finish(), Err(BlobWriteError::Digest { .. })));
        assert!(store.load(&other).unwrap().is_none());
        assert_eq!(store.entries().len(), 1);

        // Damage on disk: discarded on load.
        std::fs::write(store.path(&hex), b"componenT").unwrap();
        assert!(store.load(&hex).unwrap().is_none());
        assert!(!store.path(&hex).exists());

        assert_eq!(store.insert(b"component").unwrap(), hex);
        assert_eq!(store.insert(b"component").unwrap(), hex);
        assert_eq!(store.load(&hex).unwrap().unwrap(), b"component");
    }

    #[test]
    fn gc_keeps_referenced_and_recent_and_respects_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let aot = AotCache::with_fingerprint(dir.path().join("aot"), "0123456789abcdef".into());
        let keep = blobs.insert(&[1u8; 100]).unwrap();
        let old = blobs.insert(&[2u8; 100]).unwrap();
        let recent = blobs.insert(&[3u8; 100]).unwrap();
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for hex in [&keep, &old] {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(blobs.path(hex))
                .unwrap();
            file.set_modified(hour_ago).unwrap();
        }
        let referenced: BTreeSet<String> = [keep.clone()].into();
        let policy = GcPolicy {
            quota: 1 << 20,
            grace: Duration::from_secs(600),
        };
        let report = collect_garbage(&blobs, &aot, &referenced, policy, SystemTime::now());
        assert_eq!(report.removed, 1);
        assert!(blobs.path(&keep).exists());
        assert!(!blobs.path(&old).exists());
        assert!(blobs.path(&recent).exists());

        // Over quota: the recent unreferenced one goes too, the referenced one stays.
        let tight = GcPolicy {
            quota: 150,
            grace: Duration::from_secs(600),
        };
        let report = collect_garbage(&blobs, &aot, &referenced, tight, SystemTime::now());
        assert_eq!(report.removed, 1);
        assert_eq!(report.used, 100);
        assert!(blobs.path(&keep).exists());
        assert!(!blobs.path(&recent).exists());
    }

    #[test]
    fn applied_records_round_trip_and_damage_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = AppliedStore::open(dir.path().join("deployments")).unwrap();
        let record = AppliedRecord {
            id: DeploymentId::parse("11111111-1111-4111-8111-111111111111").unwrap(),
            source: "/d/a.yaml".into(),
            base_dir: "/d".into(),
            yaml: "id: x".into(),
            yaml_digest: document_digest(b"id: x"),
            pins: vec![Pin {
                component: "hello".into(),
                repository: "oci://r/hello".into(),
                revision: Some("1.0.0".into()),
                digest: format!("sha256:{}", "a".repeat(64)),
                manifest: None,
                size: 1,
            }],
            applied_at: 1,
        };
        store.save(&record).unwrap();
        let loaded = store.load_all();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].pins, record.pins);
        let path = dir.path().join("deployments").join(record.id.as_str());
        let mut raw = std::fs::read(&path).unwrap();
        let n = raw.len();
        raw[n - 3] ^= 1;
        std::fs::write(&path, raw).unwrap();
        assert!(store.load_all().is_empty());
        assert!(store.ids().is_empty());
    }
}
