//! wasmgate: a Margo edge runtime that serves WebAssembly components on wasmtime.
//!
//! Data flows one way: `margo` -> `deploy` -> `trigger` / `workload` -> `sandbox` ->
//! `engine`, and `ingress` -> `trigger`; `config` reads the file into each room's own
//! settings type and nothing imports it back; `host` composes the rooms. The README's
//! module map says what each room owns, and `tests/layering.rs` holds the code to it.

pub mod cli;
pub mod config;
pub mod deploy;
pub mod engine;
pub mod fsutil;
pub mod host;
pub mod ingress;
pub mod margo;
pub mod names;
pub mod sandbox;
pub mod service;
pub mod telemetry;
pub mod trigger;
pub mod types;
pub mod units;
pub mod workload;

/// Parse entry points the fuzz targets in `fuzz/` reach that are not public API
/// otherwise. Not a stable interface: it exists so the fuzzers exercise the very code
/// the runtime runs rather than a copy of it.
#[doc(hidden)]
pub mod fuzzing {
    /// The layer an OCI image manifest names as the component: `(digest, size)`, or
    /// why the manifest is refused.
    pub fn oci_component_layer(body: &[u8], max_size: u64) -> Result<(String, u64), String> {
        crate::deploy::oci::component_layer(body, max_size).map_err(|(_, message)| message)
    }
}
