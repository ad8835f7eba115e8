//! Compiled components on disk, so a restart or a redeploy of the same bytes skips
//! Cranelift (tens of milliseconds per component) and maps the machine code instead.
//!
//! Entries are keyed by the sha256 of the component bytes and the engine's
//! compatibility fingerprint (wasmtime version, compiler flags, target), so an upgraded
//! binary never loads code compiled for another configuration.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

#[derive(Debug, thiserror::Error)]
pub enum AotError {
    #[error("cannot compile component ({digest}): {message}")]
    Compile { digest: String, message: String },
    #[error("AOT cache I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct AotCache {
    dir: PathBuf,
    fingerprint: String,
}

/// Where a component came from, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AotOutcome {
    Loaded,
    Compiled,
}

impl AotCache {
    pub fn new(engine: &Engine, dir: impl Into<PathBuf>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir: dir.into(),
            fingerprint: format!("{:016x}", hasher.finish()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, digest_hex: &str) -> PathBuf {
        self.dir
            .join(format!("{digest_hex}-{}.cwasm", self.fingerprint))
    }

    /// The compiled form of `bytes`, from the cache when present and loadable,
    /// otherwise compiled now and stored for next time.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> Result<(Component, AotOutcome), AotError> {
        let digest = hex::encode(Sha256::digest(bytes));
        let path = self.entry_path(&digest);
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an engine with
            // the same compatibility fingerprint (it is in the file name), into a
            // directory only this process writes; wasmtime re-checks the header.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, AotOutcome::Loaded)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %format!("{err:#}"),
                        "discarding unusable AOT cache entry");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compile_err = |err: wasmtime::Error| AotError::Compile {
            digest: format!("sha256:{digest}"),
            message: format!("{err:#}"),
        };
        let serialized = engine.precompile_component(bytes).map_err(compile_err)?;
        if let Err(err) = self.store(&path, &serialized) {
            // A read-only or full disk costs speed on the next start, not correctness.
            tracing::warn!(error = %err, "cannot write AOT cache entry");
        }
        // SAFETY: `serialized` was produced just now by this engine.
        let component =
            unsafe { Component::deserialize(engine, &serialized) }.map_err(compile_err)?;
        Ok((component, AotOutcome::Compiled))
    }

    fn store(&self, path: &Path, bytes: &[u8]) -> Result<(), AotError> {
        let io = |source| AotError::Io {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        crate::fsutil::write_atomic(path, bytes).map_err(io)
    }
}
