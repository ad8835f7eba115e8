//! The pull itself: resolving a reference to its component layer and streaming that
//! layer into the blob store, each bounded in time and size, counted, and verified
//! against its digest before anything is stored.

use super::error::{pull_error, OciError, OciErrorKind};
use super::manifest::{component_layer, ResolvedLayer, ACCEPTED_MANIFESTS, WASM_LAYER_MEDIA_TYPE};
use super::reference::ComponentRef;
use super::sink::LimitedSink;
use crate::deploy::settings::Registries;
use crate::deploy::store::{BlobStore, BlobWriteError};
use crate::telemetry::{OciMetrics, OciPull};
use crate::types::sha256_hex;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings of the puller, from `[artifacts]` and `[registries."HOST"]`.
#[derive(Debug, Clone)]
pub struct OciSettings {
    pub max_size: u64,
    /// Bound on one manifest or blob request, start to end.
    pub timeout: Duration,
    pub registries: Registries,
    /// Docker-style `config.json` with an `auths` map.
    pub auth_file: Option<PathBuf>,
    /// Where pulls are counted.
    pub metrics: OciMetrics,
}

impl Default for OciSettings {
    fn default() -> Self {
        Self {
            max_size: crate::deploy::artifact::MAX_COMPONENT_BYTES,
            timeout: Duration::from_secs(300),
            registries: BTreeMap::new(),
            auth_file: None,
            metrics: OciMetrics::default(),
        }
    }
}

/// Pulls manifests and component layers; one HTTP client per registry.
pub struct OciFetcher {
    pub(super) settings: OciSettings,
    pub(super) clients: Mutex<HashMap<String, (Client, RegistryAuth)>>,
    /// Requests sent, for logs and tests: manifests and blobs.
    pub manifest_pulls: AtomicU64,
    pub blob_pulls: AtomicU64,
}

impl OciFetcher {
    pub fn new(settings: OciSettings) -> Self {
        Self {
            settings,
            clients: Mutex::new(HashMap::new()),
            manifest_pulls: AtomicU64::new(0),
            blob_pulls: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &OciSettings {
        &self.settings
    }

    /// Resolves `r` (tag or digest) to its manifest and component layer.
    pub async fn resolve(&self, r: &ComponentRef) -> Result<ResolvedLayer, OciError> {
        let started = Instant::now();
        let result = self.resolve_manifest(r).await;
        let ok = result.is_ok();
        self.settings
            .metrics
            .pull(OciPull::Manifest, ok, started.elapsed());
        result
    }

    async fn resolve_manifest(&self, r: &ComponentRef) -> Result<ResolvedLayer, OciError> {
        let (client, auth) = self.client(r).await?;
        self.manifest_pulls.fetch_add(1, Ordering::Relaxed);
        let pull = client.pull_manifest_raw(&r.reference, &auth, ACCEPTED_MANIFESTS);
        let (body, manifest) = tokio::time::timeout(self.settings.timeout, pull)
            .await
            .map_err(|_| {
                r.error(
                    OciErrorKind::Unreachable,
                    format!(
                        "fetching the manifest timed out after {:?}",
                        self.settings.timeout
                    ),
                )
            })?
            .map_err(|e| pull_error(r, "cannot fetch the manifest", e))?;
        // oci-client checked the body against the requested digest and the registry's
        // Docker-Content-Digest; check the pin once more ourselves, cheaply.
        if let Some(pinned) = r.reference.digest() {
            if pinned != manifest {
                return Err(r.error(
                    OciErrorKind::Digest,
                    format!("the manifest has digest {manifest}, not the pinned {pinned}"),
                ));
            }
        }
        let (digest, size) = component_layer(&body, self.settings.max_size)
            .map_err(|(kind, message)| r.error(kind, message))?;
        Ok(ResolvedLayer {
            manifest,
            digest,
            size,
        })
    }

    /// Streams layer `digest` of `r` into `store`, verifying size and sha256; nothing
    /// is stored unless both match.
    pub async fn fetch(
        &self,
        r: &ComponentRef,
        digest: &str,
        size: u64,
        store: &BlobStore,
    ) -> Result<(), OciError> {
        let started = Instant::now();
        let result = self.fetch_layer(r, digest, size, store).await;
        let ok = result.is_ok();
        self.settings
            .metrics
            .pull(OciPull::Layer, ok, started.elapsed());
        result
    }

    async fn fetch_layer(
        &self,
        r: &ComponentRef,
        digest: &str,
        size: u64,
        store: &BlobStore,
    ) -> Result<(), OciError> {
        let hex = sha256_hex(digest)
            .ok_or_else(|| r.error(OciErrorKind::Digest, format!("{digest:?} is not sha256")))?;
        if size > self.settings.max_size {
            return Err(r.error(
                OciErrorKind::TooLarge,
                format!(
                    "the component layer is {size} bytes; the limit (artifacts.max-component-size) is {}",
                    self.settings.max_size
                ),
            ));
        }
        let (client, auth) = self.client(r).await?;
        // Layers are fetched by digest; make sure the client authenticated for this
        // repository (pull_manifest does it; a pinned re-fetch may come first).
        client
            .store_auth_if_needed(r.reference.resolve_registry(), &auth)
            .await;
        let writer = store.writer(hex).map_err(|e| {
            r.error(
                OciErrorKind::Protocol,
                format!("cannot write to the artifact store: {e}"),
            )
        })?;
        let limit = size.min(self.settings.max_size);
        let sink = LimitedSink {
            writer: Some(writer),
            limit,
            exceeded: Arc::new(AtomicU64::new(0)),
        };
        let exceeded = sink.exceeded.clone();
        let descriptor = OciDescriptor {
            media_type: WASM_LAYER_MEDIA_TYPE.into(),
            digest: digest.to_owned(),
            size: size as i64,
            ..Default::default()
        };
        self.blob_pulls.fetch_add(1, Ordering::Relaxed);
        let mut sink = sink;
        let pull = client.pull_blob(&r.reference, &descriptor, &mut sink);
        let result = tokio::time::timeout(self.settings.timeout, pull).await;
        let writer = sink.writer.take();
        if let Some(w) = &writer {
            self.settings.metrics.bytes(w.written());
        }
        match result {
            Err(_) => {
                return Err(r.error(
                    OciErrorKind::Unreachable,
                    format!(
                        "downloading layer {digest} timed out after {:?}",
                        self.settings.timeout
                    ),
                ))
            }
            Ok(Err(err)) => {
                let got = exceeded.load(Ordering::Relaxed);
                if got > 0 {
                    return Err(r.error(
                        OciErrorKind::TooLarge,
                        format!(
                            "layer {digest} sent more than the {limit} bytes its manifest declares"
                        ),
                    ));
                }
                return Err(pull_error(
                    r,
                    &format!("cannot download layer {digest}"),
                    err,
                ));
            }
            Ok(Ok(())) => {}
        }
        let writer = writer.expect("writer kept until the end");
        if writer.written() != size {
            return Err(r.error(
                OciErrorKind::Digest,
                format!(
                    "layer {digest} is {} bytes, its manifest says {size}",
                    writer.written()
                ),
            ));
        }
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(|e| r.error(OciErrorKind::Protocol, format!("store task failed: {e}")))?
            .map_err(|e| match e {
                BlobWriteError::Digest { expected, actual } => r.error(
                    OciErrorKind::Digest,
                    format!(
                        "layer content has sha256:{actual}, the manifest says sha256:{expected}"
                    ),
                ),
                BlobWriteError::Io(e) => r.error(
                    OciErrorKind::Protocol,
                    format!("cannot write to the artifact store: {e}"),
                ),
            })
    }
}
