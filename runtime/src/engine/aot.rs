//! Compiled components on disk, so a restart or a redeploy of the same bytes skips
//! Cranelift (tens of milliseconds per component) and maps the machine code instead.
//!
//! An entry is named `<component sha256>-<engine fingerprint>-<entry sha256>.cwasm`:
//! - the component digest and the engine's compatibility fingerprint (the host's:
//!   `CodeProfile::fingerprint`, wasmtime version, target and code settings) key it, so
//!   an upgraded binary never loads code compiled for another configuration (wasmtime
//!   also re-checks version and CPU features; an entry it refuses is recompiled);
//! - the sha256 of the entry's own bytes is checked before the file is mapped, so an
//!   entry damaged on disk (bit rot, a crash on a file system that lost the data but
//!   kept the rename) is discarded and recompiled, never executed.
//!
//! Entries come from compiling here or from verified precompiled files
//! (`engine::precompiled`); the device build, which has no compiler, only has the latter.
//!
//! Entries are written atomically (temp file, fsync, rename), so a crash leaves either
//! a complete entry or none.
//!
//! A component loaded once stays in the process's table of loaded components until
//! garbage collection finds nothing referencing its digest: the same bytes deployed N
//! times share one `Component` (one mapping of the code, one set of type tables), and
//! an entry's checksum is verified once per process, not on every install.

use crate::telemetry::AotMetrics;
use crate::types::{is_sha256_hex, sha256_of};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use wasmtime::component::Component;
use wasmtime::Engine;

#[derive(Debug, thiserror::Error)]
pub enum AotError {
    #[error("cannot compile component ({digest}): {message}")]
    Compile { digest: String, message: String },
    #[error("component sha256:{digest}: this wasmgate build has no compiler and no precompiled form of it is known; put the output of `wasmgate compile` next to the .wasm, with the extension .cwasm")]
    NoCompiler { digest: String },
    #[error("precompiled component {path}: {source}")]
    Precompiled {
        path: PathBuf,
        #[source]
        source: super::PrecompiledError,
    },
    #[error("AOT cache I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl AotError {
    /// The status error code to report.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoCompiler { .. } | Self::Precompiled { .. } => "wasmgate.precompiled",
            _ => "wasmgate.compile",
        }
    }
}

/// A precompiled file shipped with a component (see `engine::precompiled`).
#[derive(Debug, Clone, Copy)]
pub struct Shipped<'a> {
    /// Where it was read from, for messages.
    pub path: &'a Path,
    pub bytes: &'a [u8],
}

#[derive(Debug, Clone)]
pub struct AotCache {
    dir: PathBuf,
    fingerprint: String,
    metrics: AotMetrics,
    /// Components loaded by this process, by component sha256 (hex).
    loaded: Arc<Mutex<HashMap<String, Component>>>,
}

/// Where a component came from, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AotOutcome {
    Loaded,
    Compiled,
    /// From a precompiled file shipped with the component.
    Precompiled,
    /// Already loaded by this process (the same bytes are deployed more than once).
    Shared,
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

/// `(component hex, fingerprint, entry hex)` of a cache file name.
fn parse_name(name: &str) -> Option<(&str, &str, &str)> {
    let stem = name.strip_suffix(".cwasm")?;
    let mut parts = stem.splitn(3, '-');
    let component = parts.next()?;
    let fingerprint = parts.next()?;
    let entry = parts.next()?;
    (is_sha256_hex(component) && !fingerprint.is_empty() && is_sha256_hex(entry)).then_some((
        component,
        fingerprint,
        entry,
    ))
}

impl AotCache {
    /// A cache keyed by wasmtime's own compatibility hash of `engine` (embedders and
    /// benchmarks with a bare engine; the host uses `WasmEngine::aot_cache`).
    #[cfg(feature = "compiler")]
    pub fn new(engine: &Engine, dir: impl Into<PathBuf>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self::with_fingerprint(dir, format!("{:016x}", hasher.finish()))
    }

    /// A cache whose entries are keyed by `fingerprint` (no `-` in it), the engine
    /// compatibility key.
    pub fn with_fingerprint(dir: impl Into<PathBuf>, fingerprint: String) -> Self {
        let dir = dir.into();
        // Temp files of a write a crash interrupted; nothing else writes here yet.
        if let Err(err) = crate::fsutil::remove_stale_temps(&dir) {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot sweep the AOT cache");
        }
        Self {
            dir,
            fingerprint,
            metrics: AotMetrics::default(),
            loaded: Arc::default(),
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
    /// otherwise compiled now and stored for next time (without a compiler: an error).
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> Result<(Component, AotOutcome), AotError> {
        self.load_known(engine, bytes, sha256_of(bytes))
    }

    /// [`Self::load_or_compile`] of bytes whose sha256 (hex) is known.
    fn load_known(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: String,
    ) -> Result<(Component, AotOutcome), AotError> {
        if let Some(component) = self.shared(&digest) {
            return Ok((component, AotOutcome::Shared));
        }
        if let Some(component) = self.lookup(engine, &digest) {
            return Ok((self.keep(digest, component), AotOutcome::Loaded));
        }
        let (component, outcome) = self.compile(engine, bytes, digest.clone())?;
        Ok((self.keep(digest, component), outcome))
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Component>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The component `digest_hex` if this process has loaded it already.
    fn shared(&self, digest_hex: &str) -> Option<Component> {
        let component = self.loaded().get(digest_hex).cloned()?;
        self.metrics.hit();
        Some(component)
    }

    /// Remembers `component` for the next install of the same bytes. When two installs
    /// of the same bytes raced, the first one kept wins, so both share it.
    fn keep(&self, digest_hex: String, component: Component) -> Component {
        self.loaded().entry(digest_hex).or_insert(component).clone()
    }

    /// Forgets loaded components whose digest is not in `referenced` (hex), so their
    /// code is unmapped once the last workload using them is gone.
    pub fn retain_loaded(&self, referenced: &BTreeSet<String>) {
        self.loaded()
            .retain(|digest, _| referenced.contains(digest));
    }

    /// How many distinct components this process holds loaded.
    pub fn loaded_count(&self) -> usize {
        self.loaded().len()
    }

    /// The compiled form of `bytes` for `engine`: from `shipped` when given (which must
    /// verify against `bytes` and the engine, or the component is refused), else as
    /// [`Self::load_or_compile`]. `digest` must be the sha256 of `bytes` as the caller
    /// verified it (`deploy::Artifact` carries one): hashing 18 MB again costs more than
    /// mapping the cached code.
    pub fn load_component(
        &self,
        engine: &super::WasmEngine,
        bytes: &[u8],
        digest: &crate::types::Digest,
        shipped: Option<Shipped<'_>>,
    ) -> Result<(Component, AotOutcome), AotError> {
        debug_assert!(digest.matches(bytes), "the digest is of other bytes");
        let digest = digest.hex().to_owned();
        let Some(shipped) = shipped else {
            return self.load_known(&engine.engine, bytes, digest);
        };
        let refused = |source| AotError::Precompiled {
            path: shipped.path.to_owned(),
            source,
        };
        // Verified even when the bytes are loaded already: a damaged or altered file
        // shipped with a deployment refuses it whatever else runs.
        let code =
            super::precompiled::verify(shipped.bytes, &digest, &engine.profile).map_err(refused)?;
        if let Some(component) = self.shared(&digest) {
            return Ok((component, AotOutcome::Shared));
        }
        // SAFETY: `code` carries the sha256 recorded when `wasmgate compile` produced it
        // (checked by `verify`), for this component and an engine of this engine's code
        // profile; wasmtime re-checks its own header, version and CPU features. The
        // module docs of `engine::precompiled` say why the file must be trusted.
        let component = unsafe { Component::deserialize(&engine.engine, code) }
            .map_err(|e| refused(super::PrecompiledError::Load(format!("{e:#}"))))?;
        self.metrics.hit();
        // Kept in the cache as well, so that a restart that restores the applied bytes
        // from the blob store (no .cwasm next to them) finds the code without compiling.
        if self.lookup_path(&digest, code).is_none() {
            if let Err(err) = self.store(&digest, code) {
                tracing::warn!(error = %err, "cannot write AOT cache entry");
            }
        }
        Ok((self.keep(digest, component), AotOutcome::Precompiled))
    }

    /// The cache entry holding exactly `code` for the component `digest_hex`, if any.
    fn lookup_path(&self, digest_hex: &str, code: &[u8]) -> Option<PathBuf> {
        let sum = sha256_of(code);
        self.candidates(digest_hex)
            .into_iter()
            .find_map(|(path, entry)| (entry == sum).then_some(path))
    }

    /// A cached, intact and loadable entry for the component `digest`; damaged or
    /// unusable entries are deleted on the way.
    fn lookup(&self, engine: &Engine, digest: &str) -> Option<Component> {
        for (path, expected) in self.candidates(digest) {
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
            // SAFETY: the file was written by this cache for an engine with the same
            // fingerprint (it is in the file name): compiled by such an engine or a
            // verified precompiled file. Its content still has the checksum it was
            // written with (checked just above), and only this process writes the
            // directory; wasmtime re-checks the header.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => {
                    touch(&path);
                    self.metrics.hit();
                    return Some(component);
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %format!("{err:#}"),
                        "discarding unusable AOT cache entry");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        None
    }

    #[cfg(feature = "compiler")]
    fn compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: String,
    ) -> Result<(Component, AotOutcome), AotError> {
        let compile_err = |err: wasmtime::Error| AotError::Compile {
            digest: format!("sha256:{digest}"),
            message: format!("{err:#}"),
        };
        let started = std::time::Instant::now();
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

    #[cfg(not(feature = "compiler"))]
    fn compile(
        &self,
        _engine: &Engine,
        _bytes: &[u8],
        digest: String,
    ) -> Result<(Component, AotOutcome), AotError> {
        Err(AotError::NoCompiler { digest })
    }

    fn store(&self, digest_hex: &str, bytes: &[u8]) -> Result<(), AotError> {
        let sum = sha256_of(bytes);
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
        crate::fsutil::stored_files(&self.dir)
            .into_iter()
            .map(|file| {
                let parsed = parse_name(&file.name);
                AotEntry {
                    component: parsed.map(|(c, _, _)| c.to_owned()),
                    current_engine: parsed.is_some_and(|(_, f, _)| f == self.fingerprint),
                    path: file.path,
                    size: file.size,
                    used: file.used,
                }
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

#[cfg(all(test, feature = "compiler"))]
mod tests {
    use super::*;

    #[test]
    fn corrupt_entries_are_discarded_and_recompiled() {
        let engine = Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let metrics = AotMetrics::default();
        // A new cache on the same directory stands for the next process.
        let process =
            || AotCache::new(&engine, dir.path().join("aot")).with_metrics(metrics.clone());
        // The smallest component: the header alone.
        let bytes = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let (_, outcome) = process().load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, AotOutcome::Compiled);
        let (_, outcome) = process().load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, AotOutcome::Loaded);
        assert_eq!((metrics.hits(), metrics.misses()), (1, 1));
        let cache = process();
        let entries = cache.entries();
        assert_eq!(entries.len(), 1);
        assert!(entries[0].current_engine);
        assert_eq!(
            entries[0].component.as_deref(),
            Some(sha256_of(bytes).as_str())
        );

        // Flip a byte in the middle: the checksum catches it, the entry is replaced.
        let path = &entries[0].path;
        let mut raw = std::fs::read(path).unwrap();
        let mid = raw.len() / 2;
        raw[mid] ^= 0xff;
        std::fs::write(path, &raw).unwrap();
        let (_, outcome) = process().load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, AotOutcome::Compiled);
        let entries = cache.entries();
        assert_eq!(entries.len(), 1);
        let (_, outcome) = process().load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, AotOutcome::Loaded);
    }

    #[test]
    fn the_same_bytes_are_loaded_once_per_process_until_nothing_references_them() {
        let engine = Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let metrics = AotMetrics::default();
        let cache = AotCache::new(&engine, dir.path().join("aot")).with_metrics(metrics.clone());
        let bytes = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let (_, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, AotOutcome::Compiled);
        // Damage on disk no longer matters to this process: the code is mapped already.
        let entry = cache.entries().remove(0);
        std::fs::write(&entry.path, b"not code").unwrap();
        for _ in 0..3 {
            let (_, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
            assert_eq!(outcome, AotOutcome::Shared);
        }
        assert_eq!((metrics.hits(), metrics.misses()), (3, 1));
        assert_eq!(cache.loaded_count(), 1);

        let digest = sha256_of(bytes);
        cache.retain_loaded(&BTreeSet::from([digest]));
        assert_eq!(cache.loaded_count(), 1);
        cache.retain_loaded(&BTreeSet::new());
        assert_eq!(cache.loaded_count(), 0);
        // Forgotten: the next install reads the disk again, finds the damage, recompiles.
        let (_, outcome) = cache.load_or_compile(&engine, &bytes).unwrap();
        assert_eq!(outcome, AotOutcome::Compiled);
    }
}

#[cfg(test)]
mod shipped_tests {
    use crate::engine::{PoolSizing, WasmEngine};

    /// The smallest component: the header alone.
    const COMPONENT: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    fn digest() -> crate::types::Digest {
        crate::types::Digest::of(&COMPONENT)
    }

    fn engine() -> WasmEngine {
        WasmEngine::on_demand(PoolSizing {
            instances: 1,
            max_instance_memory: 16 << 20,
        })
        .unwrap()
    }

    #[cfg(not(feature = "compiler"))]
    #[test]
    fn without_a_compiler_an_unknown_component_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = engine.aot_cache(dir.path());
        let err = cache
            .load_component(&engine, &COMPONENT, &digest(), None)
            .unwrap_err();
        assert_eq!(err.code(), "wasmgate.precompiled");
        assert!(err.to_string().contains("wasmgate compile"), "{err}");
    }

    #[cfg(feature = "compiler")]
    #[test]
    fn a_shipped_file_is_verified_used_and_kept_in_the_cache() {
        use super::*;
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let metrics = AotMetrics::default();
        let cache = engine.aot_cache(dir.path()).with_metrics(metrics.clone());
        let (_, file) = crate::engine::precompiled::compile(
            &COMPONENT,
            None,
            engine.sizing.max_instance_memory,
        )
        .unwrap();
        let path = Path::new("c.cwasm");

        let mut tampered = file.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let shipped = Shipped {
            path,
            bytes: &tampered,
        };
        let err = cache
            .load_component(&engine, &COMPONENT, &digest(), Some(shipped))
            .unwrap_err();
        assert_eq!(err.code(), "wasmgate.precompiled");
        assert!(err.to_string().contains("c.cwasm"), "{err}");
        assert!(cache.entries().is_empty(), "a refused file is not cached");

        let shipped = Shipped { path, bytes: &file };
        let (_, outcome) = cache
            .load_component(&engine, &COMPONENT, &digest(), Some(shipped))
            .unwrap();
        assert_eq!(outcome, AotOutcome::Precompiled);
        assert_eq!(cache.entries().len(), 1);
        // Without the file, in the next process (a restore from the blob store): from
        // the cache, not compiled.
        let restarted = engine.aot_cache(dir.path()).with_metrics(metrics.clone());
        let (_, outcome) = restarted
            .load_component(&engine, &COMPONENT, &digest(), None)
            .unwrap();
        assert_eq!(outcome, AotOutcome::Loaded);
        assert_eq!((metrics.hits(), metrics.misses()), (2, 0));
        // Loading the same file again shares the loaded code, adds no second entry.
        let (_, outcome) = cache
            .load_component(&engine, &COMPONENT, &digest(), Some(shipped))
            .unwrap();
        assert_eq!(outcome, AotOutcome::Shared);
        assert_eq!(cache.entries().len(), 1);
        // A damaged file is refused even though the code it claims is loaded.
        let shipped = Shipped {
            path,
            bytes: &tampered,
        };
        let err = cache
            .load_component(&engine, &COMPONENT, &digest(), Some(shipped))
            .unwrap_err();
        assert_eq!(err.code(), "wasmgate.precompiled");
    }
}
