//! Components compiled ahead of time on a build host (`wasmgate compile`) and shipped to
//! a device, which may have no compiler at all (the `device` build).
//!
//! A precompiled file is a short text header followed by wasmtime's serialized
//! component:
//!
//! ```text
//! wasmgate-precompiled 1
//! source sha256:<hex>          the component (.wasm) it was compiled from
//! target aarch64-linux         the CPU architecture and OS of the code
//! wasmtime 48.0.8
//! memory-reservation 134217728 bytes reserved per linear memory (from the partitions)
//! engine <fingerprint>         all code-shaping engine settings, see `CodeProfile`
//! artifact sha256:<hex>        the bytes after the header
//!
//! <wasmtime ELF image>
//! ```
//!
//! wasmtime trusts what it deserializes (it is native code), so the device checks all of
//! the header against the `.wasm` it was given and against its own engine, and the
//! sha256 of the code, before wasmtime sees a byte. Each field is also in the
//! fingerprint; they are repeated one by one so that a refusal can say what differs.
//! These checks catch the wrong file, a file for another device or binary, and damage
//! or edits of the code; they are no signature: whoever can write both the header and the
//! code can run native code on the device, so precompiled files must come through a
//! channel as trusted as the wasmgate binary itself.

use super::{MAX_WASM_STACK, MEMORY_GUARD};
use crate::types::{sha256_hex, sha256_of};
use sha2::{Digest, Sha256};
use std::fmt;

/// The wasmtime release this binary links, as `Cargo.lock` pins it (a unit test keeps the
/// two in step). wasmtime refuses code from another release too; naming it in the header
/// lets the refusal say so first.
pub const WASMTIME_VERSION: &str = "48.0.8";

const MAGIC: &str = "wasmgate-precompiled 1\n";
/// A header is a handful of short lines; anything longer is not one.
const MAX_HEADER: usize = 1024;

/// A CPU architecture wasmgate can compile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
    /// Pulley bytecode for 32-bit little-endian hosts: what a 32-bit ARM (armv7) device
    /// runs, since Cranelift has no native backend for it.
    #[value(name = "pulley32", alias = "armv7")]
    Pulley32,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
            Self::Pulley32 => "pulley32",
        }
    }

    /// The triple given to `Config::target` for cross-compilation.
    pub fn triple(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-unknown-linux-gnu",
            Self::Aarch64 => "aarch64-unknown-linux-gnu",
            Self::Pulley32 => "pulley32",
        }
    }
}

/// Whether this build runs Pulley bytecode in wasmtime's interpreter instead of native
/// code: on hosts Cranelift has no backend for (wasmtime's build script picks Pulley by
/// itself there; the list mirrors it), or when the `pulley` feature asks for it.
pub const PULLEY: bool = cfg!(any(
    feature = "pulley",
    not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "s390x"
    ))
));

/// The Pulley target of this host's pointer width: the interpreter only runs bytecode of
/// its own width and byte order.
pub const PULLEY_HOST_TRIPLE: &str = if cfg!(target_pointer_width = "32") {
    "pulley32"
} else {
    "pulley64"
};

/// The architecture part of [`CodeProfile::native`]'s target.
fn native_code_arch() -> &'static str {
    if PULLEY {
        PULLEY_HOST_TRIPLE
    } else {
        std::env::consts::ARCH
    }
}

/// Everything that decides whether compiled code fits an engine: the same inputs build the
/// device's engine (`WasmEngine::new`) and the engine of `wasmgate compile`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeProfile {
    /// `<arch>-<os>` of the code, e.g. `aarch64-linux`.
    pub target: String,
    /// Bytes reserved per linear memory: the partitions' largest `instance-memory`,
    /// rounded to 64 KiB. Bounds checks are compiled against it, so it must match.
    pub memory_reservation: u64,
}

impl CodeProfile {
    /// The profile of code for this machine (`pulley32-linux` on 32-bit ARM).
    pub fn native(memory_reservation: u64) -> Self {
        Self {
            target: format!("{}-{}", native_code_arch(), std::env::consts::OS),
            memory_reservation,
        }
    }

    /// The profile of code for a Linux device of `arch`.
    pub fn for_arch(arch: Arch, memory_reservation: u64) -> Self {
        Self {
            target: format!("{}-linux", arch.name()),
            memory_reservation,
        }
    }

    /// A short, stable digest of every engine setting that shapes compiled code. Unlike
    /// `Engine::precompile_compatibility_hash` it needs no compiler, so a device build can
    /// compute it for itself.
    pub fn fingerprint(&self) -> String {
        let description = format!(
            "wasmtime {WASMTIME_VERSION}; target {}; memory-reservation {}; memory-guard {MEMORY_GUARD}; \
             reservation-for-growth 0; max-wasm-stack {MAX_WASM_STACK}; epoch-interruption; \
             component-model; opt-level speed",
            self.target, self.memory_reservation
        );
        hex::encode(&Sha256::digest(description.as_bytes())[..8])
    }
}

/// Why a precompiled component was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrecompiledError {
    #[error("not a wasmgate precompiled component ({0}); make one with `wasmgate compile`")]
    Format(&'static str),
    #[error("precompiled code has sha256:{actual}, but its header records sha256:{recorded}: the file was damaged or altered")]
    Tampered { recorded: String, actual: String },
    #[error("precompiled for {found}, but this engine runs {expected}; compile with `--target`")]
    Target { found: String, expected: String },
    #[error("precompiled by wasmtime {found}, but this binary has wasmtime {WASMTIME_VERSION}")]
    Wasmtime { found: String },
    #[error("precompiled for a memory reservation of {found} bytes, but this engine reserves {expected} (the partitions' largest instance-memory); compile with the device's `--config`")]
    MemoryReservation { found: u64, expected: u64 },
    #[error("precompiled from component sha256:{found}, but the component is sha256:{expected}")]
    Source { found: String, expected: String },
    #[error("precompiled for engine fingerprint {found}, but this engine's is {expected}")]
    Fingerprint { found: String, expected: String },
    #[error("wasmtime cannot load the precompiled code: {0}")]
    Load(String),
    #[error("cannot compile the component: {0}")]
    Compile(String),
}

/// The header of a precompiled file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Hex sha256 of the source component.
    pub source: String,
    pub profile: CodeProfile,
    pub wasmtime: String,
    pub fingerprint: String,
    /// Hex sha256 of the code after the header.
    pub artifact: String,
}

impl Header {
    /// The header for `code` compiled from the component whose sha256 is `source`.
    pub fn new(source: &str, profile: &CodeProfile, code: &[u8]) -> Self {
        Self {
            source: source.to_owned(),
            profile: profile.clone(),
            wasmtime: WASMTIME_VERSION.to_owned(),
            fingerprint: profile.fingerprint(),
            artifact: sha256_of(code),
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MAGIC}source sha256:{}\ntarget {}\nwasmtime {}\nmemory-reservation {}\nengine {}\nartifact sha256:{}\n\n",
            self.source,
            self.profile.target,
            self.wasmtime,
            self.profile.memory_reservation,
            self.fingerprint,
            self.artifact
        )
    }
}

/// A precompiled file: the header, then the code.
pub fn encode(header: &Header, code: &[u8]) -> Vec<u8> {
    let mut out = header.to_string().into_bytes();
    out.extend_from_slice(code);
    out
}

/// Splits a precompiled file into its header and code, without judging either.
pub fn parse(file: &[u8]) -> Result<(Header, &[u8]), PrecompiledError> {
    let rest = file
        .strip_prefix(MAGIC.as_bytes())
        .ok_or(PrecompiledError::Format("no wasmgate-precompiled header"))?;
    let window = &rest[..rest.len().min(MAX_HEADER)];
    let end = window
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or(PrecompiledError::Format("the header does not end"))?;
    let text = std::str::from_utf8(&rest[..end])
        .map_err(|_| PrecompiledError::Format("the header is not UTF-8"))?;
    let mut lines = text.lines();
    let mut field = |key: &str| {
        lines
            .next()
            .and_then(|line| line.strip_prefix(key))
            .and_then(|line| line.strip_prefix(' '))
            .ok_or(PrecompiledError::Format(
                "a header field is missing or out of order",
            ))
    };
    let digest = |value: &str| {
        sha256_hex(value)
            .map(str::to_owned)
            .ok_or(PrecompiledError::Format("a digest is not sha256:<64 hex>"))
    };
    let source = digest(field("source")?)?;
    let target = field("target")?.to_owned();
    let wasmtime = field("wasmtime")?.to_owned();
    let memory_reservation = field("memory-reservation")?
        .parse()
        .map_err(|_| PrecompiledError::Format("memory-reservation is not a number"))?;
    let fingerprint = field("engine")?.to_owned();
    let artifact = digest(field("artifact")?)?;
    if lines.next().is_some() {
        return Err(PrecompiledError::Format("unknown header fields"));
    }
    let header = Header {
        source,
        profile: CodeProfile {
            target,
            memory_reservation,
        },
        wasmtime,
        fingerprint,
        artifact,
    };
    Ok((header, &rest[end + 2..]))
}

/// The code of `file`, once it is intact, was compiled from the component whose sha256
/// is `source`, and fits an engine of `profile`; otherwise what did not match.
pub fn verify<'a>(
    file: &'a [u8],
    source: &str,
    profile: &CodeProfile,
) -> Result<&'a [u8], PrecompiledError> {
    let (header, code) = parse(file)?;
    let actual = sha256_of(code);
    if actual != header.artifact {
        return Err(PrecompiledError::Tampered {
            recorded: header.artifact,
            actual,
        });
    }
    if header.profile.target != profile.target {
        return Err(PrecompiledError::Target {
            found: header.profile.target,
            expected: profile.target.clone(),
        });
    }
    if header.wasmtime != WASMTIME_VERSION {
        return Err(PrecompiledError::Wasmtime {
            found: header.wasmtime,
        });
    }
    if header.profile.memory_reservation != profile.memory_reservation {
        return Err(PrecompiledError::MemoryReservation {
            found: header.profile.memory_reservation,
            expected: profile.memory_reservation,
        });
    }
    if header.source != source {
        return Err(PrecompiledError::Source {
            found: header.source,
            expected: source.to_owned(),
        });
    }
    let expected = profile.fingerprint();
    if header.fingerprint != expected {
        return Err(PrecompiledError::Fingerprint {
            found: header.fingerprint,
            expected,
        });
    }
    Ok(code)
}

/// Compiles `component` into a precompiled file for a device whose partitions allow
/// linear memories of up to `max_instance_memory`. `arch` set means cross-compilation
/// (or baseline CPU features on the build host's own architecture); `None` compiles for
/// this machine, with its CPU features.
#[cfg(feature = "compiler")]
pub fn compile(
    component: &[u8],
    arch: Option<Arch>,
    max_instance_memory: u64,
) -> Result<(Header, Vec<u8>), PrecompiledError> {
    let memory_reservation = super::round_to_page(max_instance_memory);
    let profile = match arch {
        Some(arch) => CodeProfile::for_arch(arch, memory_reservation),
        None => CodeProfile::native(memory_reservation),
    };
    let target = arch.map(Arch::triple).or_else(super::native_target);
    let engine = super::code_config(&profile, target)
        .and_then(|config| wasmtime::Engine::new(&config))
        .map_err(|e| PrecompiledError::Compile(format!("{e:#}")))?;
    let code = engine
        .precompile_component(component)
        .map_err(|e| PrecompiledError::Compile(format!("{e:#}")))?;
    let source = sha256_of(component);
    let header = Header::new(&source, &profile, &code);
    let file = encode(&header, &code);
    Ok((header, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "aa00000000000000000000000000000000000000000000000000000000000000";

    fn profile() -> CodeProfile {
        CodeProfile::for_arch(Arch::Aarch64, 128 << 20)
    }

    fn file(code: &[u8]) -> Vec<u8> {
        encode(&Header::new(SOURCE, &profile(), code), code)
    }

    #[test]
    fn the_locked_wasmtime_is_the_one_named() {
        let lock = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"));
        let entry = format!("name = \"wasmtime\"\nversion = \"{WASMTIME_VERSION}\"\n");
        assert!(
            lock.contains(&entry),
            "Cargo.lock pins another wasmtime: update WASMTIME_VERSION"
        );
    }

    #[test]
    fn a_file_round_trips_and_verifies() {
        let file = file(b"\x7fELF code");
        let (header, code) = parse(&file).unwrap();
        assert_eq!(code, b"\x7fELF code");
        assert_eq!(header.source, SOURCE);
        assert_eq!(header.profile, profile());
        assert_eq!(verify(&file, SOURCE, &profile()).unwrap(), b"\x7fELF code");
        // The header reads as text.
        let text = String::from_utf8_lossy(&file);
        assert!(text.starts_with("wasmgate-precompiled 1\nsource sha256:aa00"));
        assert!(text.contains("\ntarget aarch64-linux\n"), "{text}");
    }

    #[test]
    fn each_mismatch_is_named() {
        let good = file(b"code");
        let mut tampered = good.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let err = verify(&tampered, SOURCE, &profile()).unwrap_err();
        assert!(matches!(err, PrecompiledError::Tampered { .. }), "{err}");
        assert!(err.to_string().contains("damaged or altered"), "{err}");

        let x86 = CodeProfile::for_arch(Arch::X86_64, 128 << 20);
        let err = verify(&good, SOURCE, &x86).unwrap_err();
        assert_eq!(
            err.to_string(),
            "precompiled for aarch64-linux, but this engine runs x86_64-linux; compile with `--target`"
        );

        let small = CodeProfile::for_arch(Arch::Aarch64, 16 << 20);
        let err = verify(&good, SOURCE, &small).unwrap_err();
        assert!(
            matches!(err, PrecompiledError::MemoryReservation { found, expected }
                if found == 128 << 20 && expected == 16 << 20),
            "{err}"
        );

        let other = "bb".repeat(32);
        let err = verify(&good, &other, &profile()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("the component is sha256:{other}")),
            "{err}"
        );

        // A header edited to match the device on every named field but produced by other
        // settings still fails on the fingerprint.
        let mut header = Header::new(SOURCE, &profile(), b"code");
        header.fingerprint = "0123456789abcdef".into();
        let err = verify(&encode(&header, b"code"), SOURCE, &profile()).unwrap_err();
        assert!(matches!(err, PrecompiledError::Fingerprint { .. }), "{err}");

        let mut header = Header::new(SOURCE, &profile(), b"code");
        header.wasmtime = "47.0.0".into();
        let err = verify(&encode(&header, b"code"), SOURCE, &profile()).unwrap_err();
        assert!(err.to_string().contains("wasmtime 47.0.0"), "{err}");
    }

    #[test]
    fn malformed_headers_are_refused_without_panicking() {
        let good = file(b"code");
        let header_len = good.len() - 4;
        for cut in 0..header_len {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse(b"\0asm\x0d\0\x01\0").is_err());
        let endless = format!("{MAGIC}{}", "x".repeat(4 * MAX_HEADER));
        assert_eq!(
            parse(endless.as_bytes()).unwrap_err(),
            PrecompiledError::Format("the header does not end")
        );
        let text = String::from_utf8(good[..header_len].to_vec()).unwrap();
        let swapped = text.replacen("target", "tarjet", 1);
        assert!(parse(swapped.as_bytes()).is_err());
        let extra = text.replacen("\n\n", "\nextra 1\n\n", 1);
        assert_eq!(
            parse(extra.as_bytes()).unwrap_err(),
            PrecompiledError::Format("unknown header fields")
        );
    }

    #[test]
    fn fingerprints_follow_every_input() {
        let base = profile();
        assert_eq!(base.fingerprint(), profile().fingerprint());
        assert_eq!(base.fingerprint().len(), 16);
        let mut other = base.clone();
        other.memory_reservation += 64 << 10;
        assert_ne!(base.fingerprint(), other.fingerprint());
        assert_ne!(
            base.fingerprint(),
            CodeProfile::for_arch(Arch::X86_64, base.memory_reservation).fingerprint()
        );
    }

    /// The smallest component (the header alone) and its hex sha256.
    #[cfg(feature = "compiler")]
    const EMPTY_COMPONENT: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[cfg(feature = "compiler")]
    #[test]
    fn compiled_files_load_into_the_matching_engine_only() {
        let component = EMPTY_COMPONENT;
        let memory = 16 << 20;
        let source = sha256_of(component);
        let config =
            super::super::code_config(&CodeProfile::native(memory), super::super::native_target())
                .unwrap();
        let engine = wasmtime::Engine::new(&config).unwrap();
        let (header, file) = compile(&component, None, memory).unwrap();
        assert_eq!(header.profile, CodeProfile::native(memory));
        let code = verify(&file, &source, &CodeProfile::native(memory)).unwrap();
        // SAFETY: compiled just now for this engine's profile.
        unsafe { wasmtime::component::Component::deserialize(&engine, code) }.unwrap();

        let (header, file) = compile(&component, Some(Arch::Aarch64), memory).unwrap();
        assert_eq!(header.profile.target, "aarch64-linux");
        if std::env::consts::ARCH != "aarch64" {
            let err = verify(&file, &source, &CodeProfile::native(memory)).unwrap_err();
            assert!(matches!(err, PrecompiledError::Target { .. }), "{err}");
        }
    }

    #[cfg(feature = "compiler")]
    #[test]
    fn pulley32_files_are_for_32_bit_hosts_only() {
        let memory = 16 << 20;
        let source = sha256_of(EMPTY_COMPONENT);
        let (header, file) = compile(&EMPTY_COMPONENT, Some(Arch::Pulley32), memory).unwrap();
        assert_eq!(header.profile.target, "pulley32-linux");
        let code = verify(&file, &source, &header.profile).unwrap();
        if cfg!(target_pointer_width = "64") {
            // Our header names the mismatch before wasmtime sees the code...
            let err = verify(&file, &source, &CodeProfile::native(memory)).unwrap_err();
            assert!(matches!(err, PrecompiledError::Target { .. }), "{err}");
            // ...and wasmtime itself would not run 32-bit Pulley code on a 64-bit host.
            let profile = CodeProfile::for_arch(Arch::Pulley32, memory);
            let config = super::super::code_config(&profile, Some("pulley32")).unwrap();
            let engine = wasmtime::Engine::new(&config).unwrap();
            // SAFETY: wasmtime checks the target before mapping; this must be refused.
            let err = unsafe { wasmtime::component::Component::deserialize(&engine, code) }
                .map(drop)
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("does not match the host"),
                "{err:#}"
            );
        }
    }
}
