//! What the client must remember across restarts: the accepted manifest (version,
//! ETag, which deployment digests it named), the capabilities the WFM accepted, and a
//! content-addressed copy of every deployment YAML it accepted, so a restart serves the
//! last desired state without the WFM and never downloads unchanged content again.
//!
//! Records live in a [`StateDir`] (checksummed, atomically replaced, fsynced), and every
//! call that touches the disk runs on a blocking thread.
//!
//! The accepted record is the replay guard: `manifestVersion` must only go up. So it is
//! never read as empty unless it is absent. When it is there but cannot be read or
//! fails its checks, [`SyncState::accepted`] is `None` until a re-read succeeds; the
//! client then accepts nothing. It is not moved aside automatically: the next start
//! would find it absent and accept any version, which is exactly the replay the guard
//! exists to refuse. Removing it is the operator's decision.

use super::types::{Digest, ManifestVersion};
use crate::fsutil::StateDir;
pub use crate::fsutil::StateError;
use crate::telemetry::WfmMetrics;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Key of the accepted-manifest record.
pub const ACCEPTED: &str = "accepted";
/// Key of the record of the capabilities documents the WFM accepted.
pub const REPORTED: &str = "capabilities-reported";
/// Where the YAMLs are kept, by digest (their digest is their checksum).
const DOCUMENTS: &str = "documents";
/// Largest stored YAML read back; the client accepts at most 1 MiB per document.
const MAX_STORED_DOCUMENT: u64 = 4 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub manifest_version: ManifestVersion,
    pub etag: Option<String>,
    /// deploymentId -> digest of its YAML.
    pub deployments: BTreeMap<String, String>,
}

pub struct SyncState {
    store: StateDir,
    /// `Err` holds why the record on disk cannot be trusted; nothing may be accepted then.
    accepted: Result<Accepted, String>,
    metrics: WfmMetrics,
}

/// The accepted record, converting the bare `accepted.json` of earlier versions once.
/// Absent is a first start; anything else that is not a sound record is an error.
fn load_accepted(store: &StateDir) -> Result<Accepted, StateError> {
    if store.migrate_legacy("accepted.json", ACCEPTED)? {
        tracing::info!(
            record = %store.root().join(ACCEPTED).display(),
            "converted accepted.json into a checksummed record"
        );
    }
    Ok(store.get_json(ACCEPTED)?.unwrap_or_default())
}

/// Loads a record whose loss costs only a repeated message to the WFM (which
/// capabilities or statuses it was last told). Converted from its bare-JSON `legacy`
/// file once. When it cannot be read it is moved aside, logged and counted as
/// `label`, and the client starts from empty.
pub(super) fn load_advisory<T: DeserializeOwned + Default>(
    store: &StateDir,
    legacy: &str,
    key: &str,
    label: &'static str,
    metrics: &WfmMetrics,
) -> T {
    let loaded = store
        .migrate_legacy(legacy, key)
        .and_then(|_| store.get_json::<T>(key));
    match loaded {
        Ok(value) => value.unwrap_or_default(),
        Err(err) => {
            quarantine(store, key, label, &err, metrics);
            T::default()
        }
    }
}

/// Moves a record that failed to read out of the way, with a log line and a count.
/// Returns whether it is gone (else it is skipped and reported again next time).
pub(super) fn quarantine(
    store: &StateDir,
    key: &str,
    label: &'static str,
    err: &StateError,
    metrics: &WfmMetrics,
) -> bool {
    match store.quarantine(key) {
        Ok(aside) => {
            metrics.state_damaged(label);
            tracing::error!(error = %err, moved_to = %aside.display(),
                "state record cannot be read; moved it aside and continuing without it");
            true
        }
        Err(move_err) => {
            tracing::error!(error = %err, cannot_move = %move_err,
                "state record cannot be read and cannot be moved aside; skipping it");
            false
        }
    }
}

impl SyncState {
    /// Opens the store under `dir` (sweeping what a crash left) and reads the accepted
    /// record. Only a directory that cannot be opened at all is an error here; an
    /// unreadable record is reported by [`SyncState::unreadable`].
    pub async fn open(dir: &Path, metrics: WfmMetrics) -> Result<Self, StateError> {
        let (store, loaded) = StateDir::open_with(dir, |store| {
            let documents = store.root().join(DOCUMENTS);
            std::fs::create_dir_all(&documents).map_err(|source| StateError::Io {
                path: documents,
                source,
            })?;
            load_accepted(store)
        })
        .await?;
        let mut state = Self {
            store,
            accepted: Ok(Accepted::default()),
            metrics,
        };
        state.set_loaded(loaded);
        Ok(state)
    }

    fn set_loaded(&mut self, loaded: Result<Accepted, StateError>) {
        match loaded {
            Ok(accepted) => {
                if let Err(reason) = &self.accepted {
                    tracing::info!(previous_error = %reason, manifest_version = %accepted.manifest_version,
                        "the accepted-state record reads again; resuming the WFM sync");
                }
                self.accepted = Ok(accepted);
                self.metrics.accepted_state_unreadable(false);
            }
            Err(err) => {
                let reason = format!(
                    "{err}; not accepting any desired state until it reads again (restore it from a backup, or delete it to accept the WFM's current manifest whatever its version)"
                );
                if self.accepted.is_ok() {
                    self.metrics.state_damaged("accepted");
                    tracing::error!(error = %err, record = %self.store.root().join(ACCEPTED).display(),
                        "security: the accepted-state record (the manifestVersion replay guard) cannot be read; accepting no desired state, serving what is installed, retrying with back-off");
                }
                self.accepted = Err(reason);
                self.metrics.accepted_state_unreadable(true);
            }
        }
    }

    /// The accepted manifest; `None` while its record cannot be read.
    pub fn accepted(&self) -> Option<&Accepted> {
        self.accepted.as_ref().ok()
    }

    /// The accepted manifest's version; [`ManifestVersion::NONE`] when nothing is
    /// accepted or the record cannot be read.
    pub fn accepted_version(&self) -> ManifestVersion {
        self.accepted()
            .map_or(ManifestVersion::NONE, |a| a.manifest_version)
    }

    /// Why the accepted record cannot be read (the message names the file).
    pub fn unreadable(&self) -> Option<&str> {
        self.accepted.as_ref().err().map(String::as_str)
    }

    /// Reads the accepted record again while it is unreadable. Returns `true` when it
    /// just became readable.
    pub async fn reload(&mut self) -> bool {
        if self.accepted.is_ok() {
            return false;
        }
        let loaded = self.store.blocking(load_accepted).await;
        self.set_loaded(loaded);
        self.accepted.is_ok()
    }

    /// Forces a full fetch on the next poll.
    pub fn forget_etag(&mut self) {
        if let Ok(accepted) = &mut self.accepted {
            accepted.etag = None;
        }
    }

    fn document_key(digest: &Digest) -> String {
        format!("{DOCUMENTS}/{}.yaml", digest.hex())
    }

    /// A stored YAML, re-verified against its digest (a damaged copy is dropped).
    pub async fn document(&self, digest: &Digest) -> Option<Vec<u8>> {
        let digest = digest.clone();
        let read = self.store.blocking(move |store| {
            let path = store.root().join(Self::document_key(&digest));
            let bytes = match crate::fsutil::read_regular_bounded(&path, MAX_STORED_DOCUMENT) {
                Ok(bytes) => bytes,
                Err(err) if err.is_not_found() => return Ok(None),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read a stored deployment YAML; fetching it again");
                    return Ok(None);
                }
            };
            if digest.matches(&bytes) {
                Ok(Some(bytes))
            } else {
                tracing::warn!(path = %path.display(), "stored deployment YAML does not match its digest; discarding it");
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
        });
        read.await.ok().flatten()
    }

    pub async fn store_document(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StateError> {
        let key = Self::document_key(digest);
        let bytes = bytes.to_vec();
        self.store
            .blocking(move |store| {
                let path = store.root().join(key);
                crate::fsutil::write_atomic(&path, &bytes)
                    .map_err(|source| StateError::Io { path, source })
            })
            .await
    }

    /// Records a manifest as accepted (after it was applied). Refused while the record
    /// on disk is unreadable: overwriting it would decide what the operator must.
    pub async fn accept(&mut self, accepted: Accepted) -> Result<(), StateError> {
        if self.accepted.is_err() {
            return Err(StateError::Corrupt {
                path: self.store.root().join(ACCEPTED),
                reason: "unreadable; not replaced by a newer manifest".into(),
            });
        }
        let record = accepted.clone();
        self.store
            .blocking(move |store| {
                store.put_json(ACCEPTED, &record)?;
                collect_garbage(store, &record);
                Ok(())
            })
            .await?;
        self.accepted = Ok(accepted);
        Ok(())
    }

    /// deviceId -> capabilities document the WFM last accepted.
    pub async fn reported(&self) -> BTreeMap<String, serde_json::Value> {
        let metrics = self.metrics.clone();
        self.store
            .blocking(move |store| {
                Ok(load_advisory(
                    store,
                    "capabilities-reported.json",
                    REPORTED,
                    "capabilities-reported",
                    &metrics,
                ))
            })
            .await
            .unwrap_or_default()
    }

    pub async fn save_reported(
        &self,
        reported: BTreeMap<String, serde_json::Value>,
    ) -> Result<(), StateError> {
        self.store
            .blocking(move |store| store.put_json(REPORTED, &reported))
            .await
    }
}

/// Drops stored YAMLs the accepted manifest no longer names.
fn collect_garbage(store: &StateDir, accepted: &Accepted) {
    let keep: std::collections::BTreeSet<String> = accepted
        .deployments
        .values()
        .filter_map(|d| Digest::parse(d).ok())
        .map(|d| format!("{}.yaml", d.hex()))
        .collect();
    if let Ok(entries) = std::fs::read_dir(store.root().join(DOCUMENTS)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(version: u64) -> Accepted {
        let mut accepted = Accepted {
            manifest_version: ManifestVersion::of_manifest(version).unwrap(),
            etag: Some("\"e\"".into()),
            ..Default::default()
        };
        accepted
            .deployments
            .insert("a".into(), Digest::of(b"yaml").to_string());
        accepted
    }

    #[tokio::test]
    async fn documents_are_verified_and_collected() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SyncState::open(dir.path(), WfmMetrics::default())
            .await
            .unwrap();
        let d = Digest::of(b"yaml");
        state.store_document(&d, b"yaml").await.unwrap();
        assert_eq!(state.document(&d).await.unwrap(), b"yaml");
        let path = dir.path().join(SyncState::document_key(&d));
        std::fs::write(&path, b"tampered").unwrap();
        assert!(state.document(&d).await.is_none());
        state.store_document(&d, b"yaml").await.unwrap();
        let other = Digest::of(b"old");
        state.store_document(&other, b"old").await.unwrap();
        state.accept(accepted(7)).await.unwrap();
        assert!(state.document(&other).await.is_none());
        let reopened = SyncState::open(dir.path(), WfmMetrics::default())
            .await
            .unwrap();
        assert_eq!(reopened.accepted(), Some(&accepted(7)));
        assert!(reopened.document(&d).await.is_some());
    }

    #[tokio::test]
    async fn absent_is_empty_but_damaged_or_unreadable_accepts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = WfmMetrics::default();
        let state = SyncState::open(dir.path(), metrics.clone()).await.unwrap();
        assert_eq!(state.accepted(), Some(&Accepted::default()));
        assert_eq!(state.unreadable(), None);
        let mut state = state;
        state.accept(accepted(9)).await.unwrap();
        let record = dir.path().join(ACCEPTED);
        let good = std::fs::read(&record).unwrap();

        // One flipped payload byte: refused, never read as version 0.
        let mut raw = good.clone();
        let at = raw.len() - 3;
        raw[at] ^= 0x20;
        std::fs::write(&record, &raw).unwrap();
        let mut state = SyncState::open(dir.path(), metrics.clone()).await.unwrap();
        assert_eq!(state.accepted(), None);
        let reason = state.unreadable().unwrap().to_owned();
        assert!(
            reason.contains(&record.display().to_string()) && reason.contains("corrupt"),
            "{reason}"
        );
        assert!(state.accept(accepted(10)).await.is_err());
        assert_eq!(
            std::fs::read(&record).unwrap(),
            raw,
            "left for the operator"
        );
        assert_eq!(metrics.damaged("accepted"), 1);
        assert!(!state.reload().await);
        assert_eq!(
            metrics.damaged("accepted"),
            1,
            "counted once, not per retry"
        );

        // The operator restores it: the next re-read resumes.
        std::fs::write(&record, &good).unwrap();
        assert!(state.reload().await);
        assert_eq!(state.accepted(), Some(&accepted(9)));

        // A directory in its place (unreadable to root as well): an error, not empty.
        std::fs::remove_file(&record).unwrap();
        std::fs::create_dir(&record).unwrap();
        let state = SyncState::open(dir.path(), metrics.clone()).await.unwrap();
        assert_eq!(state.accepted(), None);
        assert!(
            state.unreadable().unwrap().contains("directory"),
            "{:?}",
            state.unreadable()
        );

        // A bare-JSON record where a checksummed one belongs (not the legacy name): corrupt.
        std::fs::remove_dir(&record).unwrap();
        std::fs::write(
            &record,
            br#"{"manifestVersion":1,"etag":null,"deployments":{}}"#,
        )
        .unwrap();
        let state = SyncState::open(dir.path(), metrics.clone()).await.unwrap();
        assert_eq!(state.accepted(), None);

        // A sound record of the wrong schema: corrupt as well.
        let store = StateDir::open(dir.path()).unwrap();
        store
            .put_json(ACCEPTED, &serde_json::json!({"manifestVersion": "nine"}))
            .unwrap();
        let state = SyncState::open(dir.path(), metrics).await.unwrap();
        assert!(
            state
                .unreadable()
                .unwrap()
                .contains("not the expected JSON"),
            "{:?}",
            state.unreadable()
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn an_io_error_is_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SyncState::open(dir.path(), WfmMetrics::default())
            .await
            .unwrap();
        state.accept(accepted(3)).await.unwrap();
        let record = dir.path().join(ACCEPTED);
        // A link to itself: every open fails with ELOOP, for root too (mode 000 would
        // not stop root).
        std::fs::remove_file(&record).unwrap();
        std::os::unix::fs::symlink(ACCEPTED, &record).unwrap();
        let mut state = SyncState::open(dir.path(), WfmMetrics::default())
            .await
            .unwrap();
        assert_eq!(state.accepted(), None);
        let reason = state.unreadable().unwrap().to_owned();
        assert!(reason.contains("symbolic links"), "{reason}");
        assert!(!state.reload().await);
        // The operator removes it: absent, a first start.
        std::fs::remove_file(&record).unwrap();
        assert!(state.reload().await);
        assert_eq!(state.accepted(), Some(&Accepted::default()));
    }

    #[tokio::test]
    async fn bare_json_files_of_earlier_versions_are_converted_once() {
        let dir = tempfile::tempdir().unwrap();
        // Written exactly as the bare-JSON version wrote them.
        let old = serde_json::to_vec_pretty(&accepted(42)).unwrap();
        std::fs::write(dir.path().join("accepted.json"), &old).unwrap();
        std::fs::write(
            dir.path().join("capabilities-reported.json"),
            br#"{"edge-01":{"properties":{"id":"edge-01"}}}"#,
        )
        .unwrap();
        let state = SyncState::open(dir.path(), WfmMetrics::default())
            .await
            .unwrap();
        assert_eq!(state.accepted(), Some(&accepted(42)));
        let reported = state.reported().await;
        assert_eq!(reported["edge-01"]["properties"]["id"], "edge-01");
        assert!(!dir.path().join("accepted.json").exists());
        assert!(!dir.path().join("capabilities-reported.json").exists());
        // Now a checksummed record.
        let raw = std::fs::read(dir.path().join(ACCEPTED)).unwrap();
        assert!(raw.starts_with(b"wasmgate-record-v1 sha256:"));
        drop(state);

        // A crash after the record was written but before the old file was removed:
        // the record wins, the stale old file (here an older version) goes.
        let older = serde_json::to_vec(&accepted(5)).unwrap();
        std::fs::write(dir.path().join("accepted.json"), older).unwrap();
        let state = SyncState::open(dir.path(), WfmMetrics::default())
            .await
            .unwrap();
        assert_eq!(state.accepted(), Some(&accepted(42)));
        assert!(!dir.path().join("accepted.json").exists());
        drop(state);

        // A damaged old file stays an error after conversion (not an empty state).
        std::fs::remove_file(dir.path().join(ACCEPTED)).unwrap();
        std::fs::write(dir.path().join("accepted.json"), &old[..old.len() / 2]).unwrap();
        let state = SyncState::open(dir.path(), WfmMetrics::default())
            .await
            .unwrap();
        assert_eq!(state.accepted(), None);
    }

    #[tokio::test]
    async fn a_damaged_capabilities_record_is_moved_aside_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = WfmMetrics::default();
        let state = SyncState::open(dir.path(), metrics.clone()).await.unwrap();
        let mut map = BTreeMap::new();
        map.insert("edge-01".to_string(), serde_json::json!({"a": 1}));
        state.save_reported(map.clone()).await.unwrap();
        assert_eq!(state.reported().await, map);
        std::fs::write(dir.path().join(REPORTED), b"garbage").unwrap();
        assert!(state.reported().await.is_empty());
        assert_eq!(metrics.damaged("capabilities-reported"), 1);
        assert!(!dir.path().join(REPORTED).exists());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("capabilities-reported.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
    }
}
