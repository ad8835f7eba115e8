//! Fetching a component's bytes from its `properties.repository`.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Components larger than this are refused before reading them into memory.
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// The header of a WebAssembly *component* (a core module has version 1, layer 0).
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

#[derive(Debug, Clone, thiserror::Error)]
pub enum ArtifactError {
    #[error("repository {repository:?}: OCI registries are not supported by this build yet; use a local path or file: URL")]
    OciUnsupported { repository: String },
    #[error("repository {repository:?}: unsupported scheme; expected oci://, file: or a path")]
    Scheme { repository: String },
    #[error("repository {repository:?}: cannot read {path}: {message}")]
    Read {
        repository: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "repository {repository:?}: {path} is {size} bytes; the limit is {MAX_COMPONENT_BYTES}"
    )]
    TooLarge {
        repository: String,
        path: PathBuf,
        size: u64,
    },
    #[error("repository {repository:?}: {path} is not a WebAssembly component ({what}); build it for wasm32-wasip2 or wrap a core module with `wasm-tools component new`")]
    NotAComponent {
        repository: String,
        path: PathBuf,
        what: &'static str,
    },
}

/// A component's bytes and their digest.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub bytes: std::sync::Arc<[u8]>,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    pub path: PathBuf,
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

/// Reads and checks a local component file.
pub fn load_local(repository: &str, base_dir: &Path) -> Result<Artifact, ArtifactError> {
    let path = local_path(repository, base_dir)?;
    let read_err = |e: std::io::Error| ArtifactError::Read {
        repository: repository.into(),
        path: path.clone(),
        message: e.to_string(),
    };
    let size = std::fs::metadata(&path).map_err(read_err)?.len();
    if size > MAX_COMPONENT_BYTES {
        return Err(ArtifactError::TooLarge {
            repository: repository.into(),
            path,
            size,
        });
    }
    let bytes = std::fs::read(&path).map_err(read_err)?;
    if !bytes.starts_with(&COMPONENT_HEADER) {
        let what = if bytes.starts_with(b"\0asm\x01\0\0\0") {
            "it is a core module"
        } else if bytes.starts_with(b"\0asm") {
            "unknown WebAssembly version"
        } else {
            "no WebAssembly header"
        };
        return Err(ArtifactError::NotAComponent {
            repository: repository.into(),
            path,
            what,
        });
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    Ok(Artifact {
        bytes: bytes.into(),
        digest,
        path,
    })
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
        assert!(artifact.digest.starts_with("sha256:"));
    }
}
