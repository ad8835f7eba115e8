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

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temporary file this module creates; never a valid record or blob name.
pub const TEMP_PREFIX: &str = ".tmp-";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(dir: &Path, name: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}-{n}-{name}", std::process::id()))
}

/// fsyncs a directory so that renames and removals inside it survive a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

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

/// Writes `bytes` to a temporary file next to `path`, fsyncs it, renames it over
/// `path` and fsyncs the directory so the rename itself survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// [`write_atomic`] for content other local users must not see: the file is created
/// 0600, never briefly wider, and keeps that mode under its final name.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = AtomicFile::create_with_mode(path, 0o600)?;
    file.write_all(bytes)?;
    file.commit()
}

/// A file being written in place of `target`: invisible under its final name until
/// [`AtomicFile::commit`]; dropped uncommitted, it leaves nothing behind.
pub struct AtomicFile {
    file: Option<std::fs::File>,
    tmp: PathBuf,
    target: PathBuf,
}

impl AtomicFile {
    /// Starts writing; the parent directory must exist.
    pub fn create(target: &Path) -> std::io::Result<Self> {
        Self::create_with_mode(target, 0o666)
    }

    /// [`AtomicFile::create`] with the permission bits the file is created with (the
    /// umask still applies).
    pub fn create_with_mode(target: &Path, mode: u32) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = target.parent().unwrap_or_else(|| Path::new("."));
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = temp_path(dir, &name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        Ok(Self {
            file: Some(file),
            tmp,
            target: target.to_owned(),
        })
    }

    /// fsyncs the content, renames it to the target and fsyncs the directory.
    pub fn commit(mut self) -> std::io::Result<()> {
        let file = self.file.take().expect("file present until commit");
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.target)?;
        let dir = self.target.parent().unwrap_or_else(|| Path::new("."));
        sync_dir(dir)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("file present").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("file present").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Removes temporary files a crash left in `dir` (not recursive). Call it only while
/// no writer is active in `dir`, i.e. when opening a store at start-up.
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(TEMP_PREFIX) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        let _ = sync_dir(dir);
    }
    Ok(removed)
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

/// Why [`read_regular_bounded`] refused or failed to read a file.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    /// `size` is what the metadata said, `None` when the metadata understated it and
    /// the read itself ran past the limit.
    #[error("{path} is {}; the limit is {limit} bytes", match size { Some(size) => format!("{size} bytes"), None => format!("more than {limit} bytes") })]
    TooLarge {
        path: PathBuf,
        size: Option<u64>,
        limit: u64,
    },
}

impl BoundedReadError {
    /// The status error code for a refused deployment input.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "wasmgate.unreadable",
            Self::NotRegular { .. } => "wasmgate.not-regular",
            Self::TooLarge { .. } => "wasmgate.too-large",
        }
    }

    /// Whether the file vanished (deleted between listing and reading).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What kind of file `file_type` is, for messages.
pub fn file_kind(file_type: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Opens `path` (following symbolic links) only when it is a regular file.
///
/// Special files are refused on `stat` before `open`, since opening some devices has
/// effects of its own (a watchdog starts, a tape rewinds). The open is non-blocking, so
/// a FIFO swapped in after the `stat` cannot hang it (`open` of a FIFO for reading
/// otherwise waits for a writer), and the opened handle is checked again with `fstat`.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), BoundedReadError> {
    let io = |source| BoundedReadError::Io {
        path: path.to_owned(),
        source,
    };
    let not_regular = |meta: &std::fs::Metadata| BoundedReadError::NotRegular {
        path: path.to_owned(),
        kind: file_kind(meta.file_type()),
    };
    let before = std::fs::metadata(path).map_err(io)?;
    if !before.is_file() {
        return Err(not_regular(&before));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NOCTTY: a terminal swapped in never becomes our controlling terminal.
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok((file, meta))
}

/// The content of the regular file `path`, at most `limit` bytes.
///
/// The limit holds whatever the metadata says: files that understate their size
/// (`/proc` and `/sys` entries report 0, a file may grow while it is read) are cut off
/// at `limit + 1` bytes and refused, so memory use is bounded by `limit`. Blocking I/O:
/// call it from a blocking thread, not an async worker.
pub fn read_regular_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    use std::io::Read;
    let (file, meta) = open_regular(path)?;
    let too_large = |size| BoundedReadError::TooLarge {
        path: path.to_owned(),
        size,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large(Some(meta.len())));
    }
    // The metadata is a hint for the allocation only, never a promise about the read.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| BoundedReadError::Io {
            path: path.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(too_large(None));
    }
    Ok(bytes)
}

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
    root: PathBuf,
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

    fn path(&self, key: &str) -> Result<PathBuf, StateError> {
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

    #[test]
    fn bounded_reads_refuse_special_and_oversized_files() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, b"12345").unwrap();
        assert_eq!(read_regular_bounded(&small, 5).unwrap(), b"12345");
        let err = read_regular_bounded(&small, 4).unwrap_err();
        assert_eq!(err.code(), "wasmgate.too-large");
        assert!(err.to_string().contains("5 bytes; the limit is 4"), "{err}");

        // A device that reports size 0 and never ends: refused before it is opened.
        let err = read_regular_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(err.code(), "wasmgate.not-regular", "{err}");
        assert!(err.to_string().contains("character device"), "{err}");
        let err = read_regular_bounded(dir.path(), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");

        // A regular file that understates its size (procfs says 0 bytes): cut at the limit.
        let proc_file = Path::new("/proc/self/maps");
        if proc_file.exists() {
            let err = read_regular_bounded(proc_file, 16).unwrap_err();
            assert!(
                matches!(err, BoundedReadError::TooLarge { size: None, .. }),
                "{err}"
            );
            assert!(err.to_string().contains("more than 16 bytes"), "{err}");
        }

        let err = read_regular_bounded(&dir.path().join("missing"), 1).unwrap_err();
        assert!(err.is_not_found() && err.code() == "wasmgate.unreadable");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(read_regular_bounded(&path, 1 << 20)).unwrap());
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("reading a FIFO must not block")
            .unwrap_err();
        assert_eq!(err.code(), "wasmgate.not-regular");
        assert!(err.to_string().contains("FIFO"), "{err}");
        // Even past the stat check (a FIFO swapped in), open does not wait for a writer.
        let mut options = std::fs::OpenOptions::new();
        std::os::unix::fs::OpenOptionsExt::custom_flags(
            options.read(true),
            libc::O_NONBLOCK | libc::O_NOCTTY,
        );
        let file = options.open(&fifo).unwrap();
        assert!(!file.metadata().unwrap().is_file());
    }

    #[test]
    fn replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn uncommitted_file_leaves_nothing_and_stale_temps_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        {
            let mut file = AtomicFile::create(&path).unwrap();
            file.write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // What a crash leaves behind.
        std::fs::write(dir.path().join(format!("{TEMP_PREFIX}1-2-f")), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

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
