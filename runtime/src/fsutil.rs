//! Crash-safe files: a reader sees the old content or the new, never a torn mix.
//!
//! Three layers, each built on the one before:
//! - [`write_atomic`] / [`AtomicFile`]: temp file next to the target, fsync, rename,
//!   fsync of the directory. A crash at any point leaves the old file or the new one,
//!   plus at worst a stray temp file that [`remove_stale_temps`] sweeps.
//! - [`StateDir`]: small named records (`key` -> bytes or JSON) under one directory,
//!   each written atomically and carrying a sha256 of its content, so a record damaged
//!   on disk is detected on read instead of being trusted. This is the store the Margo
//!   client keeps its accepted manifest version, ETag, reported capabilities and status
//!   outbox in, and the reconciler its applied deployments. A missing record ("first
//!   start") and one that cannot be trusted (unreadable, damaged) are different answers,
//!   so a caller can refuse to run on the second instead of starting empty.
//! - content-addressed blobs (`deploy::store`) use [`AtomicFile`] directly.
//!
//! Split by job: `atomic` (the first layer), `bounded` (reads of regular files of
//! bounded size, which records are read with), `state` (the record store) and
//! `recover` (quarantine of damaged records, conversion of legacy files).

mod atomic;
mod bounded;
mod recover;
mod state;

pub use atomic::{
    remove_stale_temps, sync_dir, write_atomic, write_atomic_private, AtomicFile, TEMP_PREFIX,
};
pub use bounded::{file_kind, open_regular, read_regular_bounded, BoundedReadError};
pub use state::{StateDir, StateError, MAX_RECORD};

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Runs the file I/O of `op` on a blocking thread: a read of a small file or an fsync
/// must not hold an async worker either (the ingress shares them).
pub async fn unblocked<T, F>(op: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(op)
        .await
        .map_err(std::io::Error::other)?
}

/// What identifies one version of a file without reading it: its size and times, and
/// (on Unix) device, inode and change time, which catch a replacement by rename and an
/// in-place rewrite that restores the mtime (`touch -r`, tar).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    unix: (u64, u64, i64, i64),
}

impl FileStamp {
    pub fn of_metadata(meta: &std::fs::Metadata) -> Self {
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            unix: {
                use std::os::unix::fs::MetadataExt;
                (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
            },
        }
    }

    /// Of the regular file `path` leads to (links followed); `None` for anything else.
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
        Some(Self::of_metadata(&meta))
    }
}

/// A regular file of a store directory, as garbage collection sees it.
pub struct StoredFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// Last write or use (stores touch what they serve).
    pub used: SystemTime,
}

/// The regular files of `dir` but the temp files of writes under way or interrupted;
/// nothing when `dir` cannot be listed (a store not created yet).
pub fn stored_files(dir: &Path) -> Vec<StoredFile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                return None;
            }
            let meta = entry.metadata().ok().filter(|m| m.is_file())?;
            Some(StoredFile {
                name,
                path: entry.path(),
                size: meta.len(),
                used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
        })
        .collect()
}

/// sha256 of a file's content as lowercase hex, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
