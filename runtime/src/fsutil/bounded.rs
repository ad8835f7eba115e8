//! Bounded reads of regular files: a file the configuration or a store names is read
//! only when it is a regular file, and never past a size limit, so a FIFO, a device or
//! a huge file named by mistake cannot hang the runtime or fill its memory.

use std::path::{Path, PathBuf};

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
}
