//! Pulling WebAssembly components from OCI registries.
//!
//! Accepted layouts (what `wkg oci push` and other tools write):
//! - the CNCF Wasm OCI artifact: an OCI image manifest whose config has media type
//!   `application/vnd.wasm.config.v0+json` and whose one layer is `application/wasm`;
//! - the generic OCI 1.1 artifact form: an image manifest (any config, typically the
//!   empty descriptor, `artifactType` set) with one `application/wasm` layer, or the
//!   draft artifact manifest with one `application/wasm` blob;
//! - the legacy `application/vnd.wasm.content.layer.v1+wasm` layer of `wasm-to-oci`.
//!
//! Margo's `revision` is the tag, used as it is (`_` stands for SemVer `+`, which OCI
//! tags cannot contain). A repository may also pin a manifest digest
//! (`oci://host/repo@sha256:...`); the manifest is then verified against it.
//!
//! Every manifest is checked against the digest it was asked by (or the registry's
//! `Docker-Content-Digest`), every layer is hashed while it streams into the blob store
//! and lands there only when its sha256 matches the manifest.
//!
//! Split by job: `reference` (parsing), `manifest` (which manifests are components),
//! `registry` (files, credentials and clients), `pull` (resolve and fetch), `sink` (the
//! bounded stream into the blob store) and `error` (what a failure is).

mod error;
mod manifest;
mod pull;
mod reference;
mod registry;
mod sink;

pub use error::{OciError, OciErrorKind};
pub(crate) use manifest::component_layer;
pub use manifest::{ResolvedLayer, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE};
pub use pull::{OciFetcher, OciSettings};
pub use reference::{parse_reference, ComponentRef};
