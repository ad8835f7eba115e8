//! What a [`StateDir`] does with files it cannot use as records: a damaged record is
//! moved aside for an operator to inspect, a file from before records existed is
//! converted into one, so neither is lost nor trusted as it is.

use super::atomic::sync_dir;
use super::bounded::{read_regular_bounded, BoundedReadError};
use super::state::{StateDir, StateError, MAX_RECORD};
use std::path::PathBuf;

impl StateDir {
    /// Moves the record under `key` aside as `KEY.corrupt-<unix seconds>` (durably), so
    /// that it no longer answers for `key` but stays for an operator to inspect. Returns
    /// the new path.
    pub fn quarantine(&self, key: &str) -> Result<PathBuf, StateError> {
        let path = self.path(key)?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut aside = PathBuf::from(format!("{}.corrupt-{secs}", path.display()));
        let mut n = 0;
        while aside.symlink_metadata().is_ok() {
            n += 1;
            aside = PathBuf::from(format!("{}.corrupt-{secs}-{n}", path.display()));
        }
        std::fs::rename(&path, &aside).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        if let Some(parent) = path.parent() {
            let _ = sync_dir(parent);
        }
        Ok(aside)
    }

    /// Converts a file written before records existed (bare content, no header) at
    /// `legacy` (relative to the root) into the record `key`, byte for byte, and removes
    /// the old file. Returns whether a legacy file was converted.
    ///
    /// The content is not judged here: if it was damaged, the record carries the same
    /// damage and its reader refuses it as it would have refused the old file, so
    /// nothing is lost or made to look sound. A crash after the record is written and
    /// before the old file is removed leaves both; the record wins and the old file is
    /// removed on the next call, so an older copy never comes back.
    pub fn migrate_legacy(&self, legacy: &str, key: &str) -> Result<bool, StateError> {
        let record = self.path(key)?;
        let old = self.root.join(legacy);
        let remove_old = || -> Result<(), StateError> {
            std::fs::remove_file(&old).map_err(|source| StateError::Io {
                path: old.clone(),
                source,
            })?;
            if let Some(parent) = old.parent() {
                let _ = sync_dir(parent);
            }
            Ok(())
        };
        if old.symlink_metadata().is_err() {
            return Ok(false);
        }
        if record.symlink_metadata().is_ok() {
            remove_old()?;
            return Ok(false);
        }
        let bytes = match read_regular_bounded(&old, MAX_RECORD) {
            Ok(bytes) => bytes,
            Err(err) if err.is_not_found() => return Ok(false),
            Err(BoundedReadError::Io { source, .. }) => {
                return Err(StateError::Io { path: old, source })
            }
            Err(source) => return Err(StateError::Unreadable { path: old, source }),
        };
        self.put(key, &bytes)?;
        remove_old()?;
        Ok(true)
    }
}
