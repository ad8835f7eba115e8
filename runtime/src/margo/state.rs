//! What the client must remember across restarts: the accepted manifest (version,
//! ETag, which deployment digests it named) and a content-addressed copy of every
//! deployment YAML it accepted, so a restart serves the last desired state without the
//! WFM and never downloads unchanged content again.

use super::types::{Digest, ManifestVersion};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub manifest_version: ManifestVersion,
    pub etag: Option<String>,
    /// deploymentId -> digest of its YAML.
    pub deployments: BTreeMap<String, String>,
}

pub struct SyncState {
    dir: PathBuf,
    pub accepted: Accepted,
}

#[derive(Debug, thiserror::Error)]
#[error("sync state {path}: {message}")]
pub struct StateError {
    path: PathBuf,
    message: String,
}

impl SyncState {
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let err = |message: String| StateError {
            path: dir.to_owned(),
            message,
        };
        std::fs::create_dir_all(dir.join("documents")).map_err(|e| err(e.to_string()))?;
        let accepted = match std::fs::read(dir.join("accepted.json")) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| err(format!("accepted.json: {e}")))?
            }
            Err(_) => Accepted::default(),
        };
        Ok(Self {
            dir: dir.to_owned(),
            accepted,
        })
    }

    fn error(&self, message: String) -> StateError {
        StateError {
            path: self.dir.clone(),
            message,
        }
    }

    fn document_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("documents")
            .join(format!("{}.yaml", digest.hex()))
    }

    /// A stored YAML, re-verified against its digest (a damaged copy is dropped).
    pub fn document(&self, digest: &Digest) -> Option<Vec<u8>> {
        let path = self.document_path(digest);
        let bytes = std::fs::read(&path).ok()?;
        if digest.matches(&bytes) {
            Some(bytes)
        } else {
            tracing::warn!(path = %path.display(), "stored deployment YAML does not match its digest; discarding it");
            let _ = std::fs::remove_file(&path);
            None
        }
    }

    pub fn store_document(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StateError> {
        crate::fsutil::write_atomic(&self.document_path(digest), bytes)
            .map_err(|e| self.error(e.to_string()))
    }

    /// Records a manifest as accepted (after it was applied).
    pub fn accept(&mut self, accepted: Accepted) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(&accepted).map_err(|e| self.error(e.to_string()))?;
        crate::fsutil::write_atomic(&self.dir.join("accepted.json"), &bytes)
            .map_err(|e| self.error(e.to_string()))?;
        self.accepted = accepted;
        self.collect_garbage();
        Ok(())
    }

    /// Drops stored YAMLs the accepted manifest no longer names.
    fn collect_garbage(&self) {
        let keep: std::collections::BTreeSet<String> = self
            .accepted
            .deployments
            .values()
            .filter_map(|d| Digest::parse(d).ok())
            .map(|d| format!("{}.yaml", d.hex()))
            .collect();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("documents")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_verified_and_collected() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SyncState::open(dir.path()).unwrap();
        let d = Digest::of(b"yaml");
        state.store_document(&d, b"yaml").unwrap();
        assert_eq!(state.document(&d).unwrap(), b"yaml");
        std::fs::write(state.document_path(&d), b"tampered").unwrap();
        assert!(state.document(&d).is_none());
        state.store_document(&d, b"yaml").unwrap();
        let other = Digest::of(b"old");
        state.store_document(&other, b"old").unwrap();
        let mut accepted = Accepted {
            manifest_version: 7,
            etag: Some("\"e\"".into()),
            ..Default::default()
        };
        accepted.deployments.insert("a".into(), d.to_string());
        state.accept(accepted.clone()).unwrap();
        assert!(state.document(&other).is_none());
        let reopened = SyncState::open(dir.path()).unwrap();
        assert_eq!(reopened.accepted, accepted);
        assert!(reopened.document(&d).is_some());
    }
}
