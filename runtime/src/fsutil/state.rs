//! The checksummed record store [`StateDir`]: small named records, each replaced
//! atomically and carrying a sha256 of its content, so damage on disk reads as an
//! error and never as wrong data.

use super::atomic::{remove_stale_temps, sync_dir, AtomicFile};
use super::bounded::{read_regular_bounded, BoundedReadError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// First line of every [`StateDir`] record: magic, sha256 and length of the payload.
const RECORD_MAGIC: &str = "wasmgate-record-v1";

/// Largest record [`StateDir::get`] reads; a bigger file is not one of ours.
pub const MAX_RECORD: u64 = 16 << 20;

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state record {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something other than a record is in its place (a directory, a device, a file
    /// larger than any record): it cannot be read, and it is not ours to remove.
    #[error("state record {path} cannot be read: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: BoundedReadError,
    },
    /// The record exists but its checksum, header or JSON does not hold: it was damaged
    /// on disk (or written by something else). Never trust it.
    #[error("state record {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state key {key:?} is not valid: use segments of letters, digits, '.', '_' and '-' joined by '/', none starting with '.'")]
    Key { key: String },
    /// The blocking thread that ran the operation died (a panic) or was cancelled.
    #[error("state directory {root}: the blocking task failed: {source}")]
    Task {
        root: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl StateError {
    /// Whether the record is there but its content cannot be trusted (checksum, header,
    /// length or JSON), as opposed to a file that cannot be read at all.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::Corrupt { .. })
    }
}

/// A directory of small named records, each replaced atomically and checksummed.
///
/// Keys are relative paths of `[A-Za-z0-9._-]` segments joined by `/`, no segment
/// starting with `.` (`manifest`, `outbox/00000000000000000042.json`). [`StateDir::keys`]
/// lists them sorted, so zero-padded sequence numbers give a durable FIFO queue.
///
/// Guarantees: after `put` returns, the record survives a crash or power cut; a crash
/// during `put` leaves the previous record (or none) readable; a record damaged on disk
/// reads as [`StateError::Corrupt`], never as wrong data.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub(super) root: PathBuf,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && !seg.starts_with('.')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

impl StateDir {
    /// Opens (creating it when needed) the store rooted at `root`, removing temporary
    /// files left by a crash anywhere below it. Blocking I/O.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        // A folder below the root that cannot be swept (a directory an operator or a
        // fault left where a record belongs, mode 000) must not stop the whole store:
        // its records answer for themselves when read.
        fn sweep(dir: &Path) {
            if let Err(err) = remove_stale_temps(dir) {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot sweep temporary files");
            }
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    sweep(&entry.path());
                }
            }
        }
        std::fs::read_dir(&root)?;
        sweep(&root);
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn path(&self, key: &str) -> Result<PathBuf, StateError> {
        if !valid_key(key) {
            return Err(StateError::Key { key: key.into() });
        }
        Ok(self.root.join(key))
    }

    /// Stores `bytes` under `key`, durably, replacing what was there.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StateError> {
        let path = self.path(key)?;
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                std::fs::create_dir_all(parent).map_err(io)?;
                if let Some(grand) = parent.parent() {
                    let _ = sync_dir(grand);
                }
            }
        }
        let header = format!(
            "{RECORD_MAGIC} sha256:{} {}\n",
            hex::encode(Sha256::digest(bytes)),
            bytes.len()
        );
        let mut file = AtomicFile::create(&path).map_err(io)?;
        file.write_all(header.as_bytes()).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.commit().map_err(io)
    }

    /// The record under `key`, `None` when there is none. Anything else in its place, or
    /// a record that fails its checks, is an error, never "none".
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.path(key)?;
        let raw = match read_regular_bounded(&path, MAX_RECORD) {
            Ok(raw) => raw,
            Err(err) if err.is_not_found() => return Ok(None),
            Err(BoundedReadError::Io { source, .. }) => {
                return Err(StateError::Io { path, source })
            }
            Err(source) => return Err(StateError::Unreadable { path, source }),
        };
        let corrupt = |reason: &str| StateError::Corrupt {
            path: path.clone(),
            reason: reason.into(),
        };
        let newline = raw
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("no header line"))?;
        let header =
            std::str::from_utf8(&raw[..newline]).map_err(|_| corrupt("header is not text"))?;
        let mut fields = header.split(' ');
        if fields.next() != Some(RECORD_MAGIC) {
            return Err(corrupt("unknown header"));
        }
        let digest = fields
            .next()
            .and_then(|d| d.strip_prefix("sha256:"))
            .ok_or_else(|| corrupt("header has no sha256"))?;
        let len: usize = fields
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| corrupt("header has no length"))?;
        let payload = &raw[newline + 1..];
        if payload.len() != len {
            return Err(corrupt(&format!(
                "{} bytes of payload, header says {len}",
                payload.len()
            )));
        }
        if hex::encode(Sha256::digest(payload)) != digest {
            return Err(corrupt("sha256 does not match the content"));
        }
        Ok(Some(payload.to_vec()))
    }

    /// Removes the record under `key` (durably); absent keys are fine.
    pub fn delete(&self, key: &str) -> Result<(), StateError> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StateError::Io { path, source }),
        }
        if let Some(parent) = path.parent() {
            let _ = sync_dir(parent);
        }
        Ok(())
    }

    /// Keys of the records directly inside folder `prefix` (`""` for the root), sorted,
    /// as full keys (`outbox/0001`). Folders are not keys; anything else that sits in the
    /// folder (a link, a device) is listed, so that reading it reports it.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let dir = if prefix.is_empty() {
            self.root.clone()
        } else {
            self.path(prefix)?
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Io { path: dir, source }),
        };
        let mut keys = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            keys.push(if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            });
        }
        keys.sort();
        Ok(keys)
    }

    /// [`StateDir::open`] and a first `op` on the store, on a blocking thread (opening
    /// sweeps the tree, and `op` usually reads records).
    pub async fn open_with<T, F>(root: &Path, op: F) -> Result<(Self, T), StateError>
    where
        T: Send + 'static,
        F: FnOnce(&StateDir) -> T + Send + 'static,
    {
        let path = root.to_owned();
        tokio::task::spawn_blocking(move || {
            let store = StateDir::open(&path).map_err(|source| StateError::Io {
                path: path.clone(),
                source,
            })?;
            let value = op(&store);
            Ok((store, value))
        })
        .await
        .map_err(|source| StateError::Task {
            root: root.to_owned(),
            source,
        })?
    }

    /// Runs `op` on this store on a blocking thread: every [`StateDir`] call may fsync,
    /// which must not hold an async worker. Awaiting each call before the next keeps
    /// writes in the order they were made.
    pub async fn blocking<T, F>(&self, op: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&StateDir) -> Result<T, StateError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || op(&store))
            .await
            .map_err(|source| StateError::Task {
                root: self.root.clone(),
                source,
            })?
    }

    /// Stores `value` as JSON under `key`.
    pub fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
            path: self.root.join(key),
            reason: format!("cannot encode: {e}"),
        })?;
        self.put(key, &bytes)
    }

    /// The JSON record under `key`; a record that does not decode as `T` is corrupt.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path: self.root.join(key),
                        reason: format!("not the expected JSON: {e}"),
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::TEMP_PREFIX;

    #[test]
    fn state_dir_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir::open(dir.path().join("state")).unwrap();
        assert_eq!(store.get("manifest").unwrap(), None);
        store.put("manifest", b"v1").unwrap();
        store.put("manifest", b"v2").unwrap();
        assert_eq!(store.get("manifest").unwrap().unwrap(), b"v2");
        store
            .put_json("outbox/0002", &serde_json::json!({"n": 2}))
            .unwrap();
        store
            .put_json("outbox/0001", &serde_json::json!({"n": 1}))
            .unwrap();
        assert_eq!(
            store.keys("outbox").unwrap(),
            vec!["outbox/0001".to_string(), "outbox/0002".to_string()]
        );
        let one: serde_json::Value = store.get_json("outbox/0001").unwrap().unwrap();
        assert_eq!(one["n"], 1);
        store.delete("outbox/0001").unwrap();
        store.delete("outbox/0001").unwrap();
        assert_eq!(store.keys("outbox").unwrap().len(), 1);
        assert_eq!(store.keys("").unwrap(), vec!["manifest".to_string()]);

        // Flip one payload byte: detected, not returned.
        let path = store.root().join("manifest");
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        assert!(matches!(
            store.get("manifest"),
            Err(StateError::Corrupt { .. })
        ));
        // Truncation too.
        std::fs::write(&path, &raw[..raw.len() - 1]).unwrap();
        assert!(matches!(
            store.get("manifest"),
            Err(StateError::Corrupt { .. })
        ));
        for bad in ["", "../x", "a//b", ".hidden", "a/.b", "a b"] {
            assert!(
                matches!(store.put(bad, b""), Err(StateError::Key { .. })),
                "{bad}"
            );
        }
        // Reopening sweeps crash leftovers in subfolders.
        std::fs::write(
            store
                .root()
                .join("outbox")
                .join(format!("{TEMP_PREFIX}9-9-x")),
            b"junk",
        )
        .unwrap();
        let store = StateDir::open(store.root().to_owned()).unwrap();
        assert_eq!(
            store.keys("outbox").unwrap(),
            vec!["outbox/0002".to_string()]
        );
        assert_eq!(
            std::fs::read_dir(store.root().join("outbox"))
                .unwrap()
                .count(),
            1
        );
    }
}
