//! Compiled components on disk, so a restart or a redeploy of the same bytes skips
//! Cranelift (tens of milliseconds per component) and maps the machine code instead.
//!
//! An entry is named `<component sha256>-<engine fingerprint>-<entry sha256>.cwasm`:
//! - the component digest and the engine's compatibility fingerprint (wasmtime
//!   version, compiler flags, target) key it, so an upgraded binary never loads code
//!   compiled for another configuration;
//! - the sha256 of the entry's own bytes is checked before the file is mapped, so an
//!   entry damaged on disk (bit rot, a crash on a file system that lost the data but
//!   kept the rename) is discarded and recompiled, never executed.
//!
//! Entries are written atomically (temp file, fsync, rename), so a crash leaves either
//! a complete entry or none.

use crate::telemetry::AotMetrics;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};
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
    metrics: AotMetrics,
}

/// Where a component came from, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AotOutcome {
    Loaded,
    Compiled,
}

/// One file of the cache, as seen by garbage collection.
#[derive(Debug, Clone)]
pub struct AotEntry {
    pub path: PathBuf,
    /// Hex sha256 of the component the entry was compiled from; `None` for files that
    /// are not cache entries of this format.
    pub component: Option<String>,
    /// Whether it was compiled by an engine with this cache's fingerprint.
    pub current_engine: bool,
    pub size: u64,
    /// Last compile or load.
    pub used: SystemTime,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `(component hex, fingerprint, entry hex)` of a cache file name.
fn parse_name(name: &str) -> Option<(&str, &str, &str)> {
    let stem = name.strip_suffix(".cwasm")?;
    let mut parts = stem.splitn(3, '-');
    let component = parts.next()?;
    let fingerprint = parts.next()?;
    let entry = parts.next()?;
    (is_hex64(component) && !fingerprint.is_empty() && is_hex64(entry)).then_some((
        component,
        fingerprint,
        entry,
    ))
}

impl AotCache {
    pub fn new(engine: &Engine, dir: impl Into<PathBuf>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = dir.into();
        // Temp files of a write a crash interrupted; nothing else writes here yet.
        if let Err(err) = crate::fsutil::remove_stale_temps(&dir) {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot sweep the AOT cache");
        }
        Self {
            dir,
            fingerprint: format!("{:016x}", hasher.finish()),
            metrics: AotMetrics::default(),
        }
    }

    /// Counts hits and misses into `metrics` (the host's registry).
    pub fn with_metrics(mut self, metrics: AotMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Existing entries for a component compiled by this engine.
    fn candidates(&self, digest_hex: &str) -> Vec<(PathBuf, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let (component, fingerprint, sum) = parse_name(&name)?;
                (component == digest_hex && fingerprint == self.fingerprint)
                    .then(|| (entry.path(), sum.to_owned()))
            })
            .collect()
    }

    /// The compiled form of `bytes`, from the cache when present, intact and loadable,
    /// otherwise compiled now and stored for next time.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> Result<(Component, AotOutcome), AotError> {
        let digest = hex::encode(Sha256::digest(bytes));
        for (path, expected) in self.candidates(&digest) {
            match crate::fsutil::sha256_file(&path) {
                Ok(actual) if actual == expected => {}
                Ok(actual) => {
                    tracing::warn!(path = %path.display(), %expected, %actual,
                        "discarding corrupt AOT cache entry (checksum mismatch)");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err,
                        "discarding unreadable AOT cache entry");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            }
            // SAFETY: the file was written by `precompile_component` of an engine with
            // the same compatibility fingerprint (it is in the file name), its content
            // still has the checksum it was written with (checked just above), and only
            // this process writes the directory; wasmtime re-checks the header.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    touch(&path);
                    self.metrics.hit();
                    return Ok((component, AotOutcome::Loaded));
                }
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
        let started = Instant::now();
        let serialized = engine.precompile_component(bytes);
        self.metrics.miss(started.elapsed());
        let serialized = serialized.map_err(compile_err)?;
        if let Err(err) = self.store(&digest, &serialized) {
            // A read-only or full disk costs speed on the next start, not correctness.
            tracing::warn!(error = %err, "cannot write AOT cache entry");
        }
        // SAFETY: `serialized` was produced just now by this engine.
        let component =
            unsafe { Component::deserialize(engine, &serialized) }.map_err(compile_err)?;
        Ok((component, AotOutcome::Compiled))
    }

    fn store(&self, digest_hex: &str, bytes: &[u8]) -> Result<(), AotError> {
        let sum = hex::encode(Sha256::digest(bytes));
        let path = self
            .dir
            .join(format!("{digest_hex}-{}-{sum}.cwasm", self.fingerprint));
        let io = |source| AotError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        crate::fsutil::write_atomic(&path, bytes).map_err(io)
    }

    /// Every file in the cache directory (temp files excluded), for garbage collection.
    pub fn entries(&self) -> Vec<AotEntry> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(crate::fsutil::TEMP_PREFIX) {
                    return None;
                }
                let meta = entry.metadata().ok().filter(|m| m.is_file())?;
                let parsed = parse_name(&name);
                Some(AotEntry {
                    path: entry.path(),
                    component: parsed.map(|(c, _, _)| c.to_owned()),
                    current_engine: parsed.is_some_and(|(_, f, _)| f == self.fingerprint),
                    size: meta.len(),
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect()
    }
}

/// Records a use in the file's modification time (garbage collection keeps recently
/// used entries through its grace period).
fn touch(path: &Path) {
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_entries_are_discarded_and_recompiled() {
        let engine = Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let metrics = AotMetrics::default();
        let cache = AotCache::new(&engine, dir.path().join("aot")).with_metrics(metrics.clone());
        // The smallest component: the header alone.
        let bytes = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let (_, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, AotOutcome::Compiled);
        let (_, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, AotOutcome::Loaded);
        assert_eq!((metrics.hits(), metrics.misses()), (1, 1));
        let entries = cache.entries();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].current_engine);
        assert_eq!(
            entries[0].component.as_deref(),
            Some(hex::encode(Sha256::digest(bytes)).as_str())
        );

        // Flip a byte in the middle: the checksum catches it, the entry is replaced.
        let path = &entries[0].path;
        let mut raw = std::fs::read(path).unwrap();
        let mid = raw.len() / 2;
        raw[mid] ^= 0xff;
        std::fs::write(path, &raw).unwrap();
        let (_, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, AotOutcome::Compiled);
        let entries = cache.entries();
        assert_eq!(entries.len(), 1);
        let (_, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, AotOutcome::Loaded);
    }
}
