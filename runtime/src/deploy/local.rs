//! Local mode's desired state: a folder of ApplicationDeployment YAMLs, re-read when it
//! or a component file it names changes.
//!
//! The folder is input an unattended device cannot trust, so what is read is bounded:
//! - Only `*.yaml` / `*.yml` directly in the folder, not hidden ones (editor swap files).
//! - Only regular files. A FIFO, device, socket or directory with such a name fails that
//!   source with `wasmgate.not-regular` without being opened.
//! - Symbolic links: a YAML that is a link is followed only when its target, with every
//!   link resolved, is a regular file *inside* the deployments folder (the layout of
//!   Kubernetes ConfigMap mounts and of atomic `ln -sfn` swaps). A link that leads out
//!   of the folder fails with `wasmgate.symlink` and is never opened; a dangling one
//!   with `wasmgate.unreadable`.
//! - At most [`MAX_YAML_BYTES`] per YAML, checked on the metadata before opening and
//!   again while reading (a file may grow or understate its size): `wasmgate.too-large`.
//! - A file is read and hashed again only when its metadata (size, mtime, ctime, inode,
//!   device, the resolved target of a link) changed, so a tick over an unchanged folder
//!   costs a `readdir` and a `stat` per entry, whatever the files' sizes.
//!
//! A refused source fails alone; when it held a running deployment before, that one
//! keeps serving, as for a document that does not parse. Messages name the file and
//! the reason, never its content.

use super::reconciler::{DesiredDeployment, Refusal};
use crate::fsutil::{self, BoundedReadError};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest deployment YAML read from the folder. Real documents are a few KiB; a
/// bound keeps a stray log or disk image dropped into the folder from costing memory.
pub const MAX_YAML_BYTES: u64 = 1 << 20;

/// A scan of the folder: the documents plus a digest that changes whenever any of
/// them, or any watched component file, changes.
pub struct Scan {
    pub documents: Vec<DesiredDeployment>,
    pub digest: [u8; 32],
}

/// Reads every deployment file in `dir` once (see the module documentation for what is
/// read). A missing folder is an empty desired state. Blocking.
pub fn scan(dir: &Path, watched_files: &[PathBuf]) -> std::io::Result<Scan> {
    let mut watch = FolderWatch::new(dir);
    let digest = watch.poll(watched_files)?;
    Ok(Scan {
        documents: watch.documents(),
        digest,
    })
}

/// What identifies one version of a deployment file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    file: crate::fsutil::FileStamp,
    /// Where a symbolic link led, resolved; `None` for a plain file.
    target: Option<PathBuf>,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata, target: Option<PathBuf>) -> Self {
        Self {
            file: crate::fsutil::FileStamp::of_metadata(meta),
            target,
        }
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    Document { yaml: Arc<[u8]>, sha256: [u8; 32] },
    Refused(Refusal),
}

#[derive(Debug)]
struct Entry {
    stamp: Stamp,
    outcome: Outcome,
}

/// The deployments folder as last seen, so that a poll re-reads only what changed.
pub struct FolderWatch {
    dir: PathBuf,
    max_yaml: u64,
    entries: BTreeMap<PathBuf, Entry>,
}

fn is_deployment_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    );
    !hidden && yaml
}

fn refusal(code: &'static str, message: String) -> Outcome {
    Outcome::Refused(Refusal { code, message })
}

impl FolderWatch {
    pub fn new(dir: &Path) -> Self {
        Self::with_limit(dir, MAX_YAML_BYTES)
    }

    /// A watch with another YAML size limit.
    pub fn with_limit(dir: &Path, max_yaml: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            max_yaml,
            entries: BTreeMap::new(),
        }
    }

    /// Looks at the folder, reading only files whose metadata changed since the last
    /// poll, and returns the digest of the desired state (documents, refusals and the
    /// metadata of `watched_files`). Blocking: run it off the async workers.
    pub fn poll(&mut self, watched_files: &[PathBuf]) -> std::io::Result<[u8; 32]> {
        let listing = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_deployment_name(p))
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err),
        };
        // Resolved once per poll: links are judged against the real folder.
        let real_dir = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let mut seen = BTreeMap::new();
        for path in listing {
            let previous = self.entries.remove(&path);
            if let Some(entry) = self.look(&path, &real_dir, previous) {
                seen.insert(path, entry);
            }
        }
        self.entries = seen;
        Ok(self.digest(watched_files))
    }

    /// One file: its stamp, and its outcome (reused when the stamp did not change).
    /// `None` when it is no longer there, or not a file to consider (a directory).
    fn look(&self, path: &Path, real_dir: &Path, previous: Option<Entry>) -> Option<Entry> {
        let link = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                return Some(Entry {
                    stamp: Stamp {
                        file: Default::default(),
                        target: None,
                    },
                    outcome: refusal(
                        "wasmgate.unreadable",
                        format!("cannot read {}: {err}", path.display()),
                    ),
                })
            }
        };
        // A directory named `x.yaml` is not a document (nor was it before).
        if link.is_dir() {
            return None;
        }
        let (meta, target) = if link.file_type().is_symlink() {
            match std::fs::canonicalize(path) {
                Ok(target) => match std::fs::metadata(&target) {
                    Ok(meta) => (meta, Some(target)),
                    Err(_) => (link, Some(target)),
                },
                // Dangling (or a loop): stamped by the link itself.
                Err(_) => (link, None),
            }
        } else {
            (link, None)
        };
        let stamp = Stamp::of(&meta, target);
        if let Some(previous) = previous.filter(|p| p.stamp == stamp) {
            return Some(previous);
        }
        let outcome = self.read(path, real_dir, &meta, stamp.target.as_deref())?;
        Some(Entry { stamp, outcome })
    }

    fn read(
        &self,
        path: &Path,
        real_dir: &Path,
        meta: &std::fs::Metadata,
        target: Option<&Path>,
    ) -> Option<Outcome> {
        let shown = path.display();
        if meta.file_type().is_symlink() {
            return Some(refusal(
                "wasmgate.unreadable",
                format!("{shown} is a symbolic link whose target does not exist"),
            ));
        }
        if let Some(target) = target {
            if !target.starts_with(real_dir) {
                return Some(refusal(
                    "wasmgate.symlink",
                    format!("{shown} is a symbolic link that leads out of the deployments folder; only links to files inside it are followed"),
                ));
            }
        }
        let open = target.unwrap_or(path);
        if !meta.is_file() {
            return Some(refusal(
                "wasmgate.not-regular",
                format!(
                    "{shown} is {}; deployment documents must be regular files",
                    fsutil::file_kind(meta.file_type())
                ),
            ));
        }
        // Refused on the metadata first: a huge file is never opened.
        if meta.len() > self.max_yaml {
            return Some(self.too_large(path, Some(meta.len())));
        }
        match fsutil::read_regular_bounded(open, self.max_yaml) {
            Ok(yaml) => Some(Outcome::Document {
                sha256: Sha256::digest(&yaml).into(),
                yaml: yaml.into(),
            }),
            Err(err) if err.is_not_found() => None,
            Err(BoundedReadError::TooLarge { size, .. }) => Some(self.too_large(path, size)),
            Err(BoundedReadError::NotRegular { kind, .. }) => Some(refusal(
                "wasmgate.not-regular",
                format!("{shown} is {kind}; deployment documents must be regular files"),
            )),
            Err(BoundedReadError::Io { source, .. }) => Some(refusal(
                "wasmgate.unreadable",
                format!("cannot read {shown}: {source}"),
            )),
        }
    }

    fn too_large(&self, path: &Path, size: Option<u64>) -> Outcome {
        let size = match size {
            Some(size) => format!("{size} bytes"),
            None => format!("more than {} bytes", self.max_yaml),
        };
        refusal(
            "wasmgate.too-large",
            format!(
                "{} is {size}; deployment documents are limited to {} bytes",
                path.display(),
                self.max_yaml
            ),
        )
    }

    fn digest(&self, watched_files: &[PathBuf]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for (path, entry) in &self.entries {
            hasher.update(path.as_os_str().as_encoded_bytes());
            match &entry.outcome {
                Outcome::Document { sha256, .. } => {
                    hasher.update([0]);
                    hasher.update(sha256);
                }
                Outcome::Refused(r) => {
                    hasher.update([1]);
                    hasher.update(r.code.as_bytes());
                    hasher.update(r.message.as_bytes());
                }
            }
        }
        for file in watched_files {
            hasher.update(file.as_os_str().as_encoded_bytes());
            if let Ok(meta) = std::fs::metadata(file) {
                hasher.update(format!("{:?}", Stamp::of(&meta, None)).as_bytes());
            }
        }
        hasher.finalize().into()
    }

    /// The desired state as of the last poll, sorted by file name.
    pub fn documents(&self) -> Vec<DesiredDeployment> {
        self.entries
            .iter()
            .map(|(path, entry)| {
                let (yaml, refused) = match &entry.outcome {
                    Outcome::Document { yaml, .. } => (yaml.to_vec(), None),
                    Outcome::Refused(r) => (Vec::new(), Some(r.clone())),
                };
                DesiredDeployment {
                    source: path.display().to_string(),
                    base_dir: path.parent().map(Path::to_owned).unwrap_or_default(),
                    yaml,
                    refused,
                    expected_id: None,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_tracks_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "x").unwrap();
        std::fs::write(dir.path().join(".a.yaml.swp"), "junk").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "junk").unwrap();
        let first = scan(dir.path(), &[]).unwrap();
        assert_eq!(first.documents.len(), 1);
        assert_eq!(scan(dir.path(), &[]).unwrap().digest, first.digest);
        std::fs::write(dir.path().join("a.yaml"), "y").unwrap();
        let second = scan(dir.path(), &[]).unwrap();
        assert_ne!(second.digest, first.digest);
        std::fs::write(dir.path().join("w.wasm"), "1").unwrap();
        let watched = [dir.path().join("w.wasm")];
        let third = scan(dir.path(), &watched).unwrap();
        std::fs::write(dir.path().join("w.wasm"), "12").unwrap();
        assert_ne!(scan(dir.path(), &watched).unwrap().digest, third.digest);
        assert!(scan(&dir.path().join("missing"), &[])
            .unwrap()
            .documents
            .is_empty());
    }

    fn refused(watch: &FolderWatch, name: &str) -> Option<Refusal> {
        watch
            .documents()
            .into_iter()
            .find(|d| d.source.ends_with(name))
            .and_then(|d| d.refused)
    }

    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, "one").unwrap();
        let mut watch = FolderWatch::new(dir.path());
        let first = watch.poll(&[]).unwrap();
        let held = |watch: &FolderWatch| match &watch.entries[&path].outcome {
            Outcome::Document { yaml, .. } => yaml.clone(),
            Outcome::Refused(r) => panic!("{r:?}"),
        };
        let before = held(&watch);
        assert_eq!(watch.poll(&[]).unwrap(), first);
        // The very same buffer: the file was not read again.
        assert!(Arc::ptr_eq(&before, &held(&watch)));
        // Same size, new content: mtime / ctime differ, so it is read.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "two").unwrap();
        assert_ne!(watch.poll(&[]).unwrap(), first);
        assert_eq!(&*watch.documents()[0].yaml, b"two");
        std::fs::remove_file(&path).unwrap();
        watch.poll(&[]).unwrap();
        assert!(watch.documents().is_empty());
    }

    #[test]
    fn oversized_yaml_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; 101]).unwrap();
        std::fs::write(dir.path().join("ok.yaml"), "x").unwrap();
        let mut watch = FolderWatch::with_limit(dir.path(), 100);
        watch.poll(&[]).unwrap();
        let r = refused(&watch, "big.yaml").unwrap();
        assert_eq!(r.code, "wasmgate.too-large");
        assert!(r.message.contains("101 bytes"), "{}", r.message);
        assert!(refused(&watch, "ok.yaml").is_none());
        // Back under the limit: read again.
        std::fs::write(&big, "small").unwrap();
        watch.poll(&[]).unwrap();
        assert!(refused(&watch, "big.yaml").is_none());
    }

    #[cfg(unix)]
    #[test]
    fn special_files_and_links_follow_the_policy() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(std::process::Command::new("mkfifo")
            .arg(d.join("pipe.yaml"))
            .status()
            .unwrap()
            .success());
        symlink("/dev/zero", d.join("zero.yaml")).unwrap();
        symlink("/etc/passwd", d.join("passwd.yaml")).unwrap();
        symlink(d.join("nowhere"), d.join("dangling.yaml")).unwrap();
        std::fs::create_dir(d.join("real")).unwrap();
        std::fs::write(d.join("real").join("inner.yml"), "kept").unwrap();
        symlink("real/inner.yml", d.join("inside.yaml")).unwrap();
        std::fs::create_dir(d.join("dir.yaml")).unwrap();

        let (tx, rx) = std::sync::mpsc::channel();
        let path = d.to_owned();
        std::thread::spawn(move || {
            let mut watch = FolderWatch::new(&path);
            watch.poll(&[]).unwrap();
            tx.send(watch).unwrap();
        });
        let watch = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("a FIFO in the folder must not block the poll");
        assert_eq!(
            refused(&watch, "pipe.yaml").unwrap().code,
            "wasmgate.not-regular"
        );
        assert_eq!(
            refused(&watch, "zero.yaml").unwrap().code,
            "wasmgate.symlink"
        );
        let passwd = refused(&watch, "passwd.yaml").unwrap();
        assert_eq!(passwd.code, "wasmgate.symlink");
        assert!(!passwd.message.contains("root"), "{}", passwd.message);
        assert_eq!(
            refused(&watch, "dangling.yaml").unwrap().code,
            "wasmgate.unreadable"
        );
        let docs = watch.documents();
        let inside = docs.iter().find(|d| d.source.ends_with("inside.yaml"));
        assert_eq!(inside.map(|d| &d.yaml[..]), Some(&b"kept"[..]));
        assert!(!docs.iter().any(|d| d.source.ends_with("dir.yaml")));
        assert_eq!(docs.len(), 5);
    }
}
