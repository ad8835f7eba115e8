//! wasmgate: a Margo edge runtime that serves WebAssembly components on wasmtime.
//!
//! See `DESIGN.md` for which module owns what. Data flows one way:
//! `deploy` (desired state) -> `workload` -> `engine`; `ingress` -> `workload`.

pub mod cli;
pub mod config;
pub mod deploy;
pub mod engine;
pub mod fsutil;
pub mod host;
pub mod ingress;
pub mod margo;
pub mod sandbox;
pub mod telemetry;
pub mod units;
pub mod workload;
