//! Fetching a component's bytes from its `properties.repository`: a local file (path,
//! `file:` URL) or an OCI registry (`oci://`), always ending in the content-addressed
//! blob store under `state-dir/artifacts`, verified by sha256.
//!
//! Resolution and loading are separate steps, so the reconciler can tell from digests
//! alone whether anything changed before it reads or downloads a byte:
//! 1. [`Artifacts::resolve`]: repository + revision -> [`Pin`] (digest, size, manifest).
//!    A local file is read and hashed; an OCI tag costs one manifest request, unless the
//!    deployment was applied before with the same document, whose pins are then reused
//!    (a restart or an unrelated change asks no registry anything).
//! 2. [`Artifacts::load`]: the verified bytes, from the blob store when an intact copy
//!    is there, downloaded (and verified while streaming) otherwise.

use super::model::ComponentSpec;
use super::oci::{parse_reference, ComponentRef, OciError, OciErrorKind, OciFetcher, OciSettings};
use super::store::{BlobStore, Pin};
use crate::fsutil::{self, BoundedReadError};
use crate::types::sha256_hex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Components larger than this are refused before reading them into memory (unless
/// `[artifacts] max-component-size` says otherwise).
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// The header of a WebAssembly *component* (a core module has version 1, layer 0).
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

#[derive(Debug, Clone, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "repository {repository:?}: OCI registries need a state directory for the artifact store"
    )]
    OciUnsupported { repository: String },
    #[error("repository {repository:?}: unsupported scheme; expected oci://, file: or a path")]
    Scheme { repository: String },
    #[error("repository {repository:?}: cannot read {path}: {message}")]
    Read {
        repository: String,
        path: PathBuf,
        message: String,
    },
    /// `size` is the metadata's; `None` when the file held more than it said.
    #[error("repository {repository:?}: {path} is {}; the limit is {limit}", match size { Some(size) => format!("{size} bytes"), None => format!("more than {limit} bytes") })]
    TooLarge {
        repository: String,
        path: PathBuf,
        size: Option<u64>,
        limit: u64,
    },
    #[error("repository {repository:?}: {path} is {kind}; a component must be a regular file (or a symbolic link to one)")]
    NotRegular {
        repository: String,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("repository {repository:?}: {path} is not a WebAssembly component ({what}); build it for wasm32-wasip2 or wrap a core module with `wasm-tools component new`")]
    NotAComponent {
        repository: String,
        path: PathBuf,
        what: &'static str,
    },
    #[error("repository {repository:?}: the artifact store: {message}")]
    Store { repository: String, message: String },
    #[error("repository {repository:?}: the applied artifact {digest} is no longer stored and cannot be fetched again from a local file")]
    Missing { repository: String, digest: String },
    #[error(transparent)]
    Oci(#[from] OciError),
}

impl ArtifactError {
    /// The status error code to report.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Oci(e) => e.kind.code(),
            Self::TooLarge { .. } => "wasmgate.too-large",
            Self::NotRegular { .. } => "wasmgate.not-regular",
            _ => "wasmgate.artifact",
        }
    }

    /// Whether trying again later may succeed without a change of the deployment:
    /// registry failures (a registry may come back, a tag may be pushed, credentials
    /// or content fixed). Local files are watched, so their changes trigger a retry.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Oci(e) if e.kind != OciErrorKind::Config)
    }
}

/// Precompiled files may hold several times the code of their component (machine code,
/// relocations, unwind tables) but not without bound.
const PRECOMPILED_FACTOR: u64 = 8;

/// A precompiled form of a component, shipped next to it: `x.cwasm` beside `x.wasm`.
/// Only read here; the engine verifies it (`engine::precompiled`) before mapping it.
#[derive(Debug, Clone)]
pub struct ShippedCode {
    pub path: PathBuf,
    pub bytes: Arc<[u8]>,
}

/// A component's bytes and their digest.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub bytes: Arc<[u8]>,
    /// The sha256 of `bytes`: computed from them or checked against them when they
    /// were read, so whoever holds an `Artifact` need not hash it again.
    pub digest: crate::types::Digest,
    /// The local file it came from, or its place in the blob store.
    pub path: PathBuf,
    /// Whether `path` is a user's file whose changes are changes of desired state.
    pub watch: bool,
    /// The `.cwasm` beside a local component, if there is one.
    pub precompiled: Option<ShippedCode>,
}

/// Maps a local repository reference to a file; relative paths resolve against the
/// folder of the YAML that names them.
pub fn local_path(repository: &str, base_dir: &Path) -> Result<PathBuf, ArtifactError> {
    if repository.starts_with("oci://") {
        return Err(ArtifactError::OciUnsupported {
            repository: repository.into(),
        });
    }
    let path = if let Some(rest) = repository.strip_prefix("file://") {
        PathBuf::from(rest)
    } else if let Some(rest) = repository.strip_prefix("file:") {
        PathBuf::from(rest)
    } else if repository.contains("://") {
        return Err(ArtifactError::Scheme {
            repository: repository.into(),
        });
    } else {
        PathBuf::from(repository)
    };
    Ok(if path.is_absolute() {
        path
    } else {
        base_dir.join(path)
    })
}

fn check_component(bytes: &[u8]) -> Result<(), &'static str> {
    if bytes.starts_with(&COMPONENT_HEADER) {
        Ok(())
    } else if bytes.starts_with(b"\0asm\x01\0\0\0") {
        Err("it is a core module")
    } else if bytes.starts_with(b"\0asm") {
        Err("unknown WebAssembly version")
    } else {
        Err("no WebAssembly header")
    }
}

/// Reads and checks a local component file.
///
/// Only regular files are read (a symbolic link is followed when it resolves to one);
/// FIFOs, devices and sockets are refused without blocking, and at most the size limit
/// is read whatever the file's metadata claims.
pub fn load_local(repository: &str, base_dir: &Path) -> Result<Artifact, ArtifactError> {
    load_local_limited(repository, base_dir, MAX_COMPONENT_BYTES)
}

fn load_local_limited(
    repository: &str,
    base_dir: &Path,
    limit: u64,
) -> Result<Artifact, ArtifactError> {
    load_local_file(repository, local_path(repository, base_dir)?, limit)
}

/// [`load_local_limited`] of the file `repository` resolved to.
fn load_local_file(repository: &str, path: PathBuf, limit: u64) -> Result<Artifact, ArtifactError> {
    let bytes = read_bounded(repository, &path, limit)?;
    if let Err(what) = check_component(&bytes) {
        return Err(ArtifactError::NotAComponent {
            repository: repository.to_owned(),
            path,
            what,
        });
    }
    let precompiled = load_shipped(repository, &path, limit)?;
    let digest = crate::types::Digest::of(&bytes);
    Ok(Artifact {
        bytes: bytes.into(),
        digest,
        path,
        watch: true,
        precompiled,
    })
}

/// The precompiled file beside the component at `component`, when there is one.
fn load_shipped(
    repository: &str,
    component: &Path,
    limit: u64,
) -> Result<Option<ShippedCode>, ArtifactError> {
    let path = component.with_extension("cwasm");
    if path == component {
        return Ok(None);
    }
    match fsutil::read_regular_bounded(&path, limit.saturating_mul(PRECOMPILED_FACTOR)) {
        Ok(bytes) => Ok(Some(ShippedCode {
            path,
            bytes: bytes.into(),
        })),
        Err(BoundedReadError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(err) => Err(read_error(repository, err)),
    }
}

fn read_bounded(repository: &str, path: &Path, limit: u64) -> Result<Vec<u8>, ArtifactError> {
    fsutil::read_regular_bounded(path, limit).map_err(|err| read_error(repository, err))
}

fn read_error(repository: &str, err: BoundedReadError) -> ArtifactError {
    let repository = repository.to_owned();
    match err {
        BoundedReadError::TooLarge { path, size, limit } => ArtifactError::TooLarge {
            repository,
            path,
            size,
            limit,
        },
        BoundedReadError::NotRegular { path, kind } => ArtifactError::NotRegular {
            repository,
            path,
            kind,
        },
        BoundedReadError::Io { path, source } => ArtifactError::Read {
            repository,
            path,
            message: source.to_string(),
        },
    }
}

/// A component resolved to a digest, not necessarily loaded yet.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub pin: Pin,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// Read already (local files are hashed to resolve them).
    Local(Artifact),
    /// A local file unchanged since it was last hashed: read only if it is loaded.
    LocalUnchanged(PathBuf),
    /// In the blob store, or to be fetched from the registry.
    Oci(ComponentRef),
    /// In the blob store only (a restored local component).
    Stored,
}

impl Resolved {
    /// The local file to watch, if the component is one.
    pub fn watched_file(&self) -> Option<&Path> {
        match &self.source {
            Source::Local(a) => Some(&a.path),
            Source::LocalUnchanged(path) => Some(path),
            _ => None,
        }
    }
}

/// Resolves and loads components; owns the blob store and the registry client.
pub struct Artifacts {
    blobs: Option<BlobStore>,
    oci: OciFetcher,
    max_size: u64,
    /// Local component files as last hashed, so a pass over unchanged deployments
    /// stats them instead of reading and hashing every one.
    hashed: std::sync::Mutex<HashMap<PathBuf, Hashed>>,
}

#[derive(Debug, Clone)]
struct Hashed {
    component: fsutil::FileStamp,
    /// The `.cwasm` beside it (none: absent); a new one is a new deployment input too.
    precompiled: Option<fsutil::FileStamp>,
    digest: crate::types::Digest,
    size: u64,
}

/// Bounds the table of hashed files (one entry per distinct local component path).
const MAX_HASHED: usize = 16_384;

impl Default for Artifacts {
    /// Local files only, nothing stored: for embedders and benchmarks without a
    /// state directory.
    fn default() -> Self {
        Self {
            blobs: None,
            oci: OciFetcher::new(OciSettings::default()),
            max_size: MAX_COMPONENT_BYTES,
            hashed: Default::default(),
        }
    }
}

impl Artifacts {
    /// Opens the blob store under `dir` (`state-dir/artifacts`).
    pub fn open(dir: &Path, settings: OciSettings) -> std::io::Result<Self> {
        let max_size = settings.max_size;
        Ok(Self {
            blobs: Some(BlobStore::open(dir)?),
            oci: OciFetcher::new(settings),
            max_size,
            hashed: Default::default(),
        })
    }

    fn hashed(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Hashed>> {
        self.hashed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stamps of a local component and its `.cwasm`, `None` when it cannot be stat'ed.
    fn stamps(path: &Path) -> Option<(fsutil::FileStamp, Option<fsutil::FileStamp>)> {
        let component = fsutil::FileStamp::of(path)?;
        Some((
            component,
            fsutil::FileStamp::of(&path.with_extension("cwasm")),
        ))
    }

    /// Resolves a local component: by its stamps when it is unchanged since it was last
    /// hashed, else by reading and hashing it.
    async fn resolve_local(
        &self,
        component: &ComponentSpec,
        base_dir: &Path,
    ) -> Result<Resolved, ArtifactError> {
        let pin = |digest: String, size: u64| Pin {
            component: component.name.clone(),
            repository: component.repository.clone(),
            revision: component.revision.clone(),
            digest,
            manifest: None,
            size,
        };
        let path = local_path(&component.repository, base_dir)?;
        let probe = path.clone();
        let stamps = tokio::task::spawn_blocking(move || Self::stamps(&probe))
            .await
            .ok()
            .flatten();
        if let Some((stamp, shipped)) = &stamps {
            let known = self.hashed().get(&path).cloned();
            if let Some(known) =
                known.filter(|k| k.component == *stamp && k.precompiled == *shipped)
            {
                return Ok(Resolved {
                    pin: pin(known.digest.to_string(), known.size),
                    source: Source::LocalUnchanged(path),
                });
            }
        }
        let (repository, dir, limit) = (
            component.repository.clone(),
            base_dir.to_owned(),
            self.max_size,
        );
        let artifact =
            tokio::task::spawn_blocking(move || load_local_limited(&repository, &dir, limit))
                .await
                .map_err(|e| ArtifactError::Store {
                    repository: component.repository.clone(),
                    message: format!("reader task failed: {e}"),
                })??;
        // Stamps taken before the read: a write during it shows as a change next time.
        if let Some((component, precompiled)) = stamps {
            let mut hashed = self.hashed();
            if hashed.len() >= MAX_HASHED {
                hashed.clear();
            }
            hashed.insert(
                path,
                Hashed {
                    component,
                    precompiled,
                    digest: artifact.digest.clone(),
                    size: artifact.bytes.len() as u64,
                },
            );
        }
        Ok(Resolved {
            pin: pin(artifact.digest.to_string(), artifact.bytes.len() as u64),
            source: Source::Local(artifact),
        })
    }

    pub fn blobs(&self) -> Option<&BlobStore> {
        self.blobs.as_ref()
    }

    pub fn oci(&self) -> &OciFetcher {
        &self.oci
    }

    /// What `component` resolves to now. `pinned` (from a previous application of the
    /// same document) stands in for the registry lookup of an OCI component; local files
    /// are read and hashed when their stamps (size, times, inode) changed since they were
    /// last, since they are watched for changes.
    pub async fn resolve(
        &self,
        component: &ComponentSpec,
        base_dir: &Path,
        pinned: Option<&Pin>,
    ) -> Result<Resolved, ArtifactError> {
        let repository = &component.repository;
        if !repository.starts_with("oci://") {
            return self.resolve_local(component, base_dir).await;
        }
        if self.blobs.is_none() {
            return Err(ArtifactError::OciUnsupported {
                repository: repository.clone(),
            });
        }
        let reference = parse_reference(repository, component.revision.as_deref())?;
        if let Some(pin) = pinned
            .filter(|p| p.repository == component.repository && p.revision == component.revision)
        {
            return Ok(Resolved {
                pin: pin.clone(),
                source: Source::Oci(reference),
            });
        }
        let layer = self.oci.resolve(&reference).await?;
        tracing::debug!(reference = %reference.display, manifest = %layer.manifest, layer = %layer.digest, "resolved");
        Ok(Resolved {
            pin: Pin {
                component: component.name.clone(),
                repository: component.repository.clone(),
                revision: component.revision.clone(),
                digest: layer.digest,
                manifest: Some(layer.manifest),
                size: layer.size,
            },
            source: Source::Oci(reference),
        })
    }

    /// Exactly the bytes `pin` names, for restoring an applied deployment after a
    /// restart: from the blob store, or (OCI) downloaded by digest.
    pub fn resolve_pinned(&self, pin: &Pin) -> Result<Resolved, ArtifactError> {
        let source = if pin.repository.starts_with("oci://") {
            Source::Oci(parse_reference(&pin.repository, pin.revision.as_deref())?)
        } else {
            Source::Stored
        };
        Ok(Resolved {
            pin: pin.clone(),
            source,
        })
    }

    /// The verified bytes of a resolved component. Local files are copied into the
    /// blob store (so that a restart can serve exactly what was applied); OCI layers
    /// are downloaded only when no intact copy is stored.
    pub async fn load(&self, resolved: Resolved) -> Result<Artifact, ArtifactError> {
        let pin = resolved.pin;
        let store_err = |message: String| ArtifactError::Store {
            repository: pin.repository.clone(),
            message,
        };
        let hex = sha256_hex(&pin.digest)
            .ok_or_else(|| store_err(format!("{:?} is not a sha256 digest", pin.digest)))?
            .to_owned();
        match resolved.source {
            Source::LocalUnchanged(path) => {
                let (repository, limit) = (pin.repository.clone(), self.max_size);
                let artifact =
                    tokio::task::spawn_blocking(move || load_local_file(&repository, path, limit))
                        .await
                        .map_err(|e| store_err(format!("reader task failed: {e}")))??;
                if artifact.digest.as_str() != pin.digest {
                    // The next pass sees the new stamps and hashes it again.
                    return Err(store_err(format!(
                        "{} changed while it was being installed (now {})",
                        artifact.path.display(),
                        artifact.digest
                    )));
                }
                self.keep_local_copy(artifact).await.map_err(store_err)
            }
            Source::Local(artifact) => self.keep_local_copy(artifact).await.map_err(store_err),
            Source::Stored => {
                let blobs = self.blobs.as_ref().ok_or_else(|| ArtifactError::Missing {
                    repository: pin.repository.clone(),
                    digest: pin.digest.clone(),
                })?;
                match self.load_stored(blobs, &hex).await {
                    Ok(Some(artifact)) => Ok(artifact),
                    Ok(None) => Err(ArtifactError::Missing {
                        repository: pin.repository.clone(),
                        digest: pin.digest.clone(),
                    }),
                    Err(message) => Err(store_err(message)),
                }
            }
            Source::Oci(reference) => {
                let blobs = self
                    .blobs
                    .as_ref()
                    .ok_or_else(|| ArtifactError::OciUnsupported {
                        repository: pin.repository.clone(),
                    })?;
                if let Some(artifact) = self.load_stored(blobs, &hex).await.map_err(&store_err)? {
                    return self.check_layer(&reference, artifact);
                }
                tracing::info!(reference = %reference.display, layer = %pin.digest, bytes = pin.size, "pulling component");
                self.oci
                    .fetch(&reference, &pin.digest, pin.size, blobs)
                    .await?;
                match self.load_stored(blobs, &hex).await.map_err(&store_err)? {
                    Some(artifact) => self.check_layer(&reference, artifact),
                    None => Err(store_err(format!(
                        "{} vanished right after it was stored",
                        pin.digest
                    ))),
                }
            }
        }
    }

    /// Copies a local component into the blob store, so a restart serves exactly what was
    /// applied even if the file changes or goes.
    async fn keep_local_copy(&self, artifact: Artifact) -> Result<Artifact, String> {
        if let Some(blobs) = self.blobs.clone() {
            let bytes = artifact.bytes.clone();
            tokio::task::spawn_blocking(move || blobs.insert(&bytes))
                .await
                .map_err(|e| format!("writer task failed: {e}"))?
                .map_err(|e| format!("cannot store a copy: {e}"))?;
        }
        Ok(artifact)
    }

    async fn load_stored(&self, blobs: &BlobStore, hex: &str) -> Result<Option<Artifact>, String> {
        let blobs = blobs.clone();
        let hex = hex.to_owned();
        tokio::task::spawn_blocking(move || {
            let bytes = blobs.load(&hex).map_err(|e| e.to_string())?;
            // `load` checked the bytes against `hex`.
            let digest =
                crate::types::Digest::parse(&format!("sha256:{hex}")).map_err(|e| e.to_string())?;
            Ok(bytes.map(|bytes| Artifact {
                bytes: bytes.into(),
                digest,
                path: blobs.path(&hex),
                watch: false,
                precompiled: None,
            }))
        })
        .await
        .map_err(|e| format!("reader task failed: {e}"))?
    }

    fn check_layer(
        &self,
        reference: &ComponentRef,
        artifact: Artifact,
    ) -> Result<Artifact, ArtifactError> {
        match check_component(&artifact.bytes) {
            Ok(()) => Ok(artifact),
            Err(what) => Err(OciError {
                kind: OciErrorKind::MediaType,
                reference: reference.display.clone(),
                message: format!(
                    "layer {} is not a WebAssembly component ({what}); build it for wasm32-wasip2 or wrap a core module with `wasm-tools component new`",
                    artifact.digest
                ),
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        assert_eq!(
            local_path("file:x.wasm", base).unwrap(),
            base.join("x.wasm")
        );
        assert_eq!(local_path("x.wasm", base).unwrap(), base.join("x.wasm"));
        assert_eq!(
            local_path("file:///abs/x.wasm", base).unwrap(),
            PathBuf::from("/abs/x.wasm")
        );
        assert!(matches!(
            local_path("oci://r/x", base),
            Err(ArtifactError::OciUnsupported { .. })
        ));
        assert!(matches!(
            local_path("https://r/x", base),
            Err(ArtifactError::Scheme { .. })
        ));

        std::fs::write(base.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
        let err = load_local("core.wasm", base).unwrap_err();
        assert!(err.to_string().contains("core module"), "{err}");
        let err = load_local("missing.wasm", base).unwrap_err();
        assert!(err.to_string().contains("missing.wasm"), "{err}");
        std::fs::write(base.join("c.wasm"), COMPONENT_HEADER).unwrap();
        let artifact = load_local("c.wasm", base).unwrap();
        assert!(artifact.digest.matches(&artifact.bytes));
        let err = load_local_limited("c.wasm", base, 4).unwrap_err();
        assert!(err.to_string().contains("limit is 4"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_and_links_to_components_followed() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let err = load_local("/dev/zero", base).unwrap_err();
        assert_eq!(err.code(), "wasmgate.not-regular", "{err}");
        assert!(err.to_string().contains("character device"), "{err}");
        let err = load_local("file:///dev/zero", base).unwrap_err();
        assert_eq!(err.code(), "wasmgate.not-regular", "{err}");

        assert!(std::process::Command::new("mkfifo")
            .arg(base.join("pipe.wasm"))
            .status()
            .unwrap()
            .success());
        let err = load_local("pipe.wasm", base).unwrap_err();
        assert_eq!(err.code(), "wasmgate.not-regular", "{err}");
        assert!(err.to_string().contains("FIFO"), "{err}");

        std::fs::write(base.join("real.wasm"), COMPONENT_HEADER).unwrap();
        std::os::unix::fs::symlink(base.join("real.wasm"), base.join("link.wasm")).unwrap();
        assert!(load_local("link.wasm", base).unwrap().watch);
        std::os::unix::fs::symlink("/dev/zero", base.join("zero.wasm")).unwrap();
        let err = load_local("zero.wasm", base).unwrap_err();
        assert_eq!(err.code(), "wasmgate.not-regular", "{err}");

        // procfs files say 0 bytes and hold more: the limit still holds.
        let err = load_local_limited("/proc/self/maps", base, 64).unwrap_err();
        assert_eq!(err.code(), "wasmgate.too-large", "{err}");
        assert!(err.to_string().contains("more than 64 bytes"), "{err}");
    }

    fn component(repository: &str) -> ComponentSpec {
        ComponentSpec {
            name: "c".into(),
            repository: repository.into(),
            revision: Some("1.0.0".into()),
            install_timeout: None,
            config: Default::default(),
            extensions: Default::default(),
        }
    }

    #[tokio::test]
    async fn local_components_are_stored_and_restorable() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts =
            Artifacts::open(&dir.path().join("artifacts"), OciSettings::default()).unwrap();
        std::fs::write(dir.path().join("c.wasm"), COMPONENT_HEADER).unwrap();
        let resolved = artifacts
            .resolve(&component("c.wasm"), dir.path(), None)
            .await
            .unwrap();
        assert_eq!(
            resolved.watched_file(),
            Some(dir.path().join("c.wasm").as_path())
        );
        let pin = resolved.pin.clone();
        let artifact = artifacts.load(resolved).await.unwrap();
        assert!(artifact.watch);
        // The file changes; the pinned bytes are still there for a restore.
        std::fs::write(dir.path().join("c.wasm"), b"changed").unwrap();
        let restored = artifacts
            .load(artifacts.resolve_pinned(&pin).unwrap())
            .await
            .unwrap();
        assert_eq!(&*restored.bytes, &COMPONENT_HEADER);
        assert!(!restored.watch);
        // Without a state directory, OCI is refused with a clear message.
        let err = Artifacts::default()
            .resolve(&component("oci://r.io/x"), dir.path(), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("state directory"), "{err}");
    }

    #[tokio::test]
    async fn an_unchanged_local_file_is_not_read_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::default();
        let path = dir.path().join("c.wasm");
        let first = [&COMPONENT_HEADER[..], b"one"].concat();
        std::fs::write(&path, &first).unwrap();
        let spec = component("c.wasm");
        let resolved = artifacts.resolve(&spec, dir.path(), None).await.unwrap();
        assert!(
            matches!(resolved.source, Source::Local(_)),
            "read the first time"
        );
        let digest = resolved.pin.digest.clone();

        let again = artifacts.resolve(&spec, dir.path(), None).await.unwrap();
        assert!(
            matches!(again.source, Source::LocalUnchanged(_)),
            "not read again"
        );
        assert_eq!(again.pin.digest, digest);
        assert_eq!(again.watched_file(), Some(path.as_path()));
        // Loading it reads it, checked against the digest it resolved to.
        let loaded = artifacts.load(again.clone()).await.unwrap();
        assert!(loaded.digest.matches(&first));

        // Same length, new bytes, maybe the same mtime tick: the ctime still moves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = [&COMPONENT_HEADER[..], b"two"].concat();
        std::fs::write(&path, &second).unwrap();
        // A load of what resolved before the change is refused, not mislabelled.
        let err = artifacts.load(again).await.unwrap_err();
        assert!(err.to_string().contains("changed while"), "{err}");
        let changed = artifacts.resolve(&spec, dir.path(), None).await.unwrap();
        assert!(matches!(changed.source, Source::Local(_)));
        assert_ne!(changed.pin.digest, digest);
        // A new precompiled file beside it is a change too.
        std::fs::write(dir.path().join("c.cwasm"), b"code").unwrap();
        let shipped = artifacts.resolve(&spec, dir.path(), None).await.unwrap();
        assert!(matches!(shipped.source, Source::Local(_)));
    }
}
