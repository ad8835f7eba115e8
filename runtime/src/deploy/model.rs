//! Margo `ApplicationDeployment` documents, parsed at the edge into types that only hold
//! valid values. The wasmgate-specific part lives in each component's
//! `x-wasmgate-extensions` object ([`WasmgateExtensions`]).
//!
//! Split by job: `yaml` (the guards around the YAML parser: flow depth, redacted
//! errors), `document` (the document's shape, [`Deployment`] and its top-level
//! checks), `component` (one component: source, install timeout, `wasi:config`
//! values), `extensions` (`x-wasmgate-extensions`: triggers and limits), `rules`
//! (which ids, names and routes are valid), `outline` (what a refused document still
//! names for its status), `error` ([`ModelError`] and how document values are quoted
//! in it), and `fixture` (the test document).

mod component;
mod document;
mod error;
mod extensions;
#[cfg(test)]
mod fixture;
mod outline;
mod rules;
mod yaml;

pub use component::ComponentSpec;
pub use document::Deployment;
pub use error::ModelError;
pub use extensions::{WasmgateExtensions, MIN_TIMER_PERIOD};
pub use outline::{directed_target, Outline};
pub use rules::{is_dns_label, is_valid_device_id, MAX_NAME_LEN};
pub use yaml::MAX_FLOW_DEPTH;
