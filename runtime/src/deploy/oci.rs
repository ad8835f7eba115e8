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

use super::settings::{Registries, RegistryProtocol, RegistrySettings};
use super::store::{BlobStore, BlobWriteError, BlobWriter};
use crate::telemetry::{OciMetrics, OciPull};
use crate::types::sha256_hex;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Layer media type of a Wasm component (CNCF Wasm OCI artifact layout).
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Config media type of the CNCF Wasm OCI artifact layout.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type written by the older `wasm-to-oci` tool.
const LEGACY_WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_MANIFEST,
    OCI_ARTIFACT_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_LIST,
];

/// What went wrong, as far as the operator needs to know; each maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciErrorKind {
    /// The reference or the registry settings are unusable (bad reference, plain HTTP
    /// to a remote registry, unreadable CA or credentials file).
    Config,
    /// No such repository, tag or blob.
    NotFound,
    /// The registry refused the credentials (or their absence).
    Unauthorized,
    /// Connection refused, DNS, TLS, timeout or a 5xx / 429 answer.
    Unreachable,
    /// Content does not match its digest.
    Digest,
    /// The artifact is not one Wasm component layer.
    MediaType,
    /// The layer is larger than `artifacts.max-component-size`.
    TooLarge,
    /// Anything else the registry did not do by the distribution spec.
    Protocol,
}

impl OciErrorKind {
    /// The status error code reported for this failure.
    pub fn code(self) -> &'static str {
        match self {
            Self::Config => "wasmgate.oci.config",
            Self::NotFound => "wasmgate.oci.not-found",
            Self::Unauthorized => "wasmgate.oci.unauthorized",
            Self::Unreachable => "wasmgate.oci.unreachable",
            Self::Digest => "wasmgate.oci.digest",
            Self::MediaType => "wasmgate.oci.media-type",
            Self::TooLarge => "wasmgate.oci.too-large",
            Self::Protocol => "wasmgate.oci",
        }
    }
}

/// A failed pull, naming the reference.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reference}: {message}")]
pub struct OciError {
    pub kind: OciErrorKind,
    /// `oci://registry/repository:tag` as the deployment wrote it (plus the digest).
    pub reference: String,
    pub message: String,
}

/// A component reference: `oci://registry/repository` + revision (the tag).
#[derive(Debug, Clone)]
pub struct ComponentRef {
    /// For messages: `oci://registry/repository:tag[@digest]`.
    pub display: String,
    pub reference: Reference,
}

impl ComponentRef {
    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    fn error(&self, kind: OciErrorKind, message: impl Into<String>) -> OciError {
        OciError {
            kind,
            reference: self.display.clone(),
            message: message.into(),
        }
    }
}

/// Parses `oci://registry/repository[:tag][@sha256:...]` with Margo's `revision`.
pub fn parse_reference(repository: &str, revision: Option<&str>) -> Result<ComponentRef, OciError> {
    let config_err = |message: String| OciError {
        kind: OciErrorKind::Config,
        reference: repository.to_owned(),
        message,
    };
    let rest = repository
        .strip_prefix("oci://")
        .ok_or_else(|| config_err("expected an oci:// reference".into()))?;
    let (name, digest) = match rest.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (rest, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let (name, tag_in_name) = match last.split_once(':') {
        Some((_, tag)) if name.contains('/') => (&name[..name.len() - tag.len() - 1], Some(tag)),
        _ => (name, None),
    };
    if !name.contains('/') {
        return Err(config_err(
            "expected oci://REGISTRY/REPOSITORY (e.g. oci://registry.example.com/apps/hello)"
                .into(),
        ));
    }
    if let Some(revision) = revision {
        if revision.contains('+') {
            return Err(config_err(format!(
                "revision {revision:?}: OCI tags cannot contain '+'; Margo writes SemVer build metadata with '_' (e.g. 1.0.0_build.1)"
            )));
        }
    }
    let tag = match (tag_in_name, revision) {
        (Some(a), Some(b)) if a != b => {
            return Err(config_err(format!(
                "the repository names tag {a:?} but revision is {b:?}; put the tag in revision only"
            )))
        }
        (Some(tag), _) | (None, Some(tag)) => Some(tag),
        (None, None) => None,
    };
    if tag.is_none() && digest.is_none() {
        return Err(config_err(
            "no revision: set properties.revision to the tag to pull".into(),
        ));
    }
    let mut text = name.to_owned();
    if let Some(tag) = tag {
        text.push(':');
        text.push_str(tag);
    }
    if let Some(digest) = digest {
        if sha256_hex(digest).is_none() {
            return Err(config_err(format!(
                "{digest:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)"
            )));
        }
        text.push('@');
        text.push_str(digest);
    }
    let reference = Reference::try_from(text.as_str()).map_err(|e| {
        config_err(format!(
            "not a valid OCI reference {text:?}: {e} (lowercase repository, tags of letters, digits, '_', '.', '-')"
        ))
    })?;
    Ok(ComponentRef {
        display: format!("oci://{text}"),
        reference,
    })
}

/// The component layer a manifest describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLayer {
    /// `sha256:<hex>` of the manifest.
    pub manifest: String,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    media_type: Option<String>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    /// The draft OCI artifact manifest lists `blobs` instead of `layers`.
    #[serde(default)]
    blobs: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: i64,
}

fn is_wasm_layer(media_type: &str) -> bool {
    media_type == WASM_LAYER_MEDIA_TYPE || media_type == LEGACY_WASM_LAYER_MEDIA_TYPE
}

/// Picks the component layer out of a manifest's bytes.
pub(crate) fn component_layer(
    body: &[u8],
    max_size: u64,
) -> Result<(String, u64), (OciErrorKind, String)> {
    let manifest: RawManifest = serde_json::from_slice(body).map_err(|e| {
        (
            OciErrorKind::Protocol,
            format!("the manifest is not valid JSON: {e}"),
        )
    })?;
    let media_type = manifest.media_type.as_deref().unwrap_or(OCI_MANIFEST);
    if media_type == OCI_INDEX || media_type == DOCKER_LIST || !manifest.manifests.is_empty() {
        return Err((
            OciErrorKind::MediaType,
            "is an image index (multi-platform image), not a Wasm component artifact".into(),
        ));
    }
    let layers = if manifest.layers.is_empty() {
        manifest.blobs
    } else {
        manifest.layers
    };
    let layer = match layers.as_slice() {
        [] => {
            return Err((
                OciErrorKind::MediaType,
                "the manifest has no layers; expected one application/wasm layer".into(),
            ))
        }
        [one] => one,
        many => {
            let types: Vec<&str> = many.iter().map(|l| l.media_type.as_str()).collect();
            return Err((
                OciErrorKind::MediaType,
                format!(
                    "the manifest has {} layers ({}); a Wasm component artifact has exactly one application/wasm layer",
                    many.len(),
                    types.join(", ")
                ),
            ));
        }
    };
    if !is_wasm_layer(&layer.media_type) {
        return Err((
            OciErrorKind::MediaType,
            format!(
                "layer media type {:?} is not a WebAssembly component; expected {WASM_LAYER_MEDIA_TYPE} (is this a container image?)",
                layer.media_type
            ),
        ));
    }
    if sha256_hex(&layer.digest).is_none() {
        return Err((
            OciErrorKind::Digest,
            format!(
                "layer digest {:?} is not a sha256 digest; only sha256 is supported",
                layer.digest
            ),
        ));
    }
    let size = u64::try_from(layer.size).map_err(|_| {
        (
            OciErrorKind::Protocol,
            format!("layer size {} is negative", layer.size),
        )
    })?;
    if size > max_size {
        return Err((
            OciErrorKind::TooLarge,
            format!(
                "the component layer is {} bytes; the limit (artifacts.max-component-size) is {max_size}",
                size
            ),
        ));
    }
    Ok((layer.digest.clone(), size))
}

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
            max_size: super::artifact::MAX_COMPONENT_BYTES,
            timeout: Duration::from_secs(300),
            registries: BTreeMap::new(),
            auth_file: None,
            metrics: OciMetrics::default(),
        }
    }
}

/// Pulls manifests and component layers; one HTTP client per registry.
pub struct OciFetcher {
    settings: OciSettings,
    clients: Mutex<HashMap<String, (Client, RegistryAuth)>>,
    /// Requests sent, for logs and tests: manifests and blobs.
    pub manifest_pulls: AtomicU64,
    pub blob_pulls: AtomicU64,
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `https://host:port/v1/` -> `host:port`, as docker config keys are written.
fn normalize_registry_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

#[derive(Debug, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Debug, Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

/// Credentials for `registry` from a docker-style auth file.
fn auth_from_file(path: &std::path::Path, registry: &str) -> Result<Option<RegistryAuth>, String> {
    use base64::Engine as _;
    let text = crate::fsutil::read_regular_bounded(path, MAX_AUTH_FILE)
        .map_err(|e| format!("registry auth file: {e}"))?;
    let config: DockerConfig = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "the registry auth file {} is not a docker-style config.json: {e}",
            path.display()
        )
    })?;
    let wanted: &[&str] = if registry == "docker.io" {
        &["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        &[registry]
    };
    let Some(entry) = config
        .auths
        .iter()
        .find(|(key, _)| wanted.contains(&normalize_registry_key(key)))
        .map(|(_, entry)| entry)
    else {
        return Ok(None);
    };
    if let Some(token) = &entry.registrytoken {
        return Ok(Some(RegistryAuth::Bearer(token.clone())));
    }
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(RegistryAuth::Basic(user.clone(), password.clone())));
    }
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| {
                format!(
                    "{}: auths.{registry}.auth is not base64: {e}",
                    path.display()
                )
            })?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("{}: auths.{registry}.auth is not UTF-8", path.display()))?;
        let (user, password) = decoded.split_once(':').ok_or_else(|| {
            format!(
                "{}: auths.{registry}.auth is not base64 of USER:PASSWORD",
                path.display()
            )
        })?;
        return Ok(Some(RegistryAuth::Basic(user.into(), password.into())));
    }
    Ok(None)
}

/// The largest docker-style auth file read (one holds a few entries).
const MAX_AUTH_FILE: u64 = 1 << 20;
/// The largest password or token file read (registry tokens are a few KiB at most).
const MAX_SECRET_FILE: u64 = 64 << 10;

/// A password or token file: a regular file of bounded size (a FIFO or a device named
/// by mistake must not hang the pull or fill memory), trailing newlines dropped.
fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let bytes =
        crate::fsutil::read_regular_bounded(path, MAX_SECRET_FILE).map_err(|e| e.to_string())?;
    String::from_utf8(bytes)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// A PEM file of registry CAs: a regular file of bounded size, like every other file
/// the configuration names.
const MAX_CA_FILE: u64 = 1 << 20;

/// What a registry client is built from that lives in files: the protocol, extra CAs
/// and the credentials.
struct RegistryFiles {
    protocol: ClientProtocol,
    certificates: Vec<Certificate>,
    auth: RegistryAuth,
}

impl RegistryFiles {
    /// Blocking: reads the CA, password, token and auth files `settings` name.
    fn read(
        registry: &str,
        settings: Option<&RegistrySettings>,
        auth_file: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let protocol = match settings.and_then(|s| s.protocol) {
            Some(RegistryProtocol::Http) => ClientProtocol::Http,
            Some(RegistryProtocol::Https) => ClientProtocol::Https,
            None if is_loopback(registry) => ClientProtocol::Http,
            None => ClientProtocol::Https,
        };
        let mut certificates = Vec::new();
        if let Some(ca) = settings.and_then(|s| s.ca_file.as_ref()) {
            let data = crate::fsutil::read_regular_bounded(ca, MAX_CA_FILE).map_err(|e| {
                format!("[registries.\"{registry}\"] ca-file {}: {e}", ca.display())
            })?;
            certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let mut auth = RegistryAuth::Anonymous;
        if let Some(s) = settings {
            let password = match (&s.password, &s.password_file) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(file)) => Some(read_secret(file)?),
                (None, None) => None,
            };
            let token = match (&s.token, &s.token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(file)) => Some(read_secret(file)?),
                (None, None) => None,
            };
            if let Some(token) = token {
                auth = RegistryAuth::Bearer(token);
            } else if let (Some(user), Some(password)) = (&s.username, password) {
                auth = RegistryAuth::Basic(user.clone(), password);
            }
        }
        if auth == RegistryAuth::Anonymous {
            if let Some(file) = auth_file {
                if let Some(found) = auth_from_file(file, registry)? {
                    auth = found;
                }
            }
        }
        Ok(Self {
            protocol,
            certificates,
            auth,
        })
    }
}

/// Installs the process-wide rustls crypto provider (ring) once.
fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn classify(err: &OciDistributionError) -> OciErrorKind {
    use OciDistributionError as E;
    match err {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => OciErrorKind::Unauthorized,
        E::ImageManifestNotFoundError(_) => OciErrorKind::NotFound,
        E::DigestError(_) => OciErrorKind::Digest,
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                OciErrorKind::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                OciErrorKind::Unauthorized
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                OciErrorKind::Unreachable
            } else {
                OciErrorKind::Protocol
            }
        }
        E::ServerError { code, .. } => match code {
            401 | 403 => OciErrorKind::Unauthorized,
            404 => OciErrorKind::NotFound,
            429 | 500..=599 => OciErrorKind::Unreachable,
            _ => OciErrorKind::Protocol,
        },
        E::RequestError(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
            OciErrorKind::Unreachable
        }
        E::RequestError(e) if e.status().is_some_and(|s| s.is_server_error()) => {
            OciErrorKind::Unreachable
        }
        E::IoError(_) => OciErrorKind::Unreachable,
        _ => OciErrorKind::Protocol,
    }
}

/// The whole error chain on one line (reqwest hides the cause, e.g. the TLS error).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
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

    /// The client and credentials for `r`'s registry, built on first use. The files the
    /// registry's settings name are read on a blocking thread: a slow disk or a FIFO
    /// named by mistake must not hold an async worker.
    async fn client(&self, r: &ComponentRef) -> Result<(Client, RegistryAuth), OciError> {
        let registry = r.registry().to_owned();
        if let Some(found) = self.cached_client(&registry) {
            return Ok(found);
        }
        let config_err = |m: String| r.error(OciErrorKind::Config, m);
        let settings = self.settings.registries.get(&registry).cloned();
        let auth_file = self.settings.auth_file.clone();
        let files = {
            let registry = registry.clone();
            tokio::task::spawn_blocking(move || {
                RegistryFiles::read(&registry, settings.as_ref(), auth_file.as_deref())
            })
            .await
            .map_err(|e| config_err(format!("reading the registry's files failed: {e}")))?
            .map_err(config_err)?
        };
        ensure_crypto_provider();
        let config = ClientConfig {
            protocol: files.protocol,
            extra_root_certificates: files.certificates,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("wasmgate/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| config_err(format!("cannot set up the registry client: {}", chain(&e))))?;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // Two pulls of one registry may have built a client at once: keep the first.
        let entry = clients
            .entry(registry)
            .or_insert((client, files.auth))
            .clone();
        Ok(entry)
    }

    fn cached_client(&self, registry: &str) -> Option<(Client, RegistryAuth)> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.get(registry).cloned()
    }

    fn pull_error(&self, r: &ComponentRef, what: &str, err: OciDistributionError) -> OciError {
        let kind = classify(&err);
        let text = chain(&err);
        let lower = text.to_ascii_lowercase();
        let hint = match kind {
            OciErrorKind::Unauthorized => {
                " (configure credentials in [registries.\"HOST\"] or artifacts.registry-auth-file)"
            }
            OciErrorKind::Unreachable if lower.contains("certificate") || lower.contains("tls") => {
                " (for a registry with a private CA set [registries.\"HOST\"] ca-file)"
            }
            OciErrorKind::Unreachable => " (is the registry up?)",
            _ => "",
        };
        r.error(kind, format!("{what}: {text}{hint}"))
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
            .map_err(|e| self.pull_error(r, "cannot fetch the manifest", e))?;
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
                return Err(self.pull_error(r, &format!("cannot download layer {digest}"), err));
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

/// `AsyncWrite` into a [`BlobWriter`] that refuses to grow past `limit` bytes.
struct LimitedSink {
    writer: Option<BlobWriter>,
    limit: u64,
    exceeded: Arc<AtomicU64>,
}

impl tokio::io::AsyncWrite for LimitedSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let limit = self.limit;
        let Some(writer) = self.writer.as_mut() else {
            return Poll::Ready(Err(std::io::Error::other("sink closed")));
        };
        if writer.written() + buf.len() as u64 > limit {
            let total = writer.written() + buf.len() as u64;
            self.exceeded.store(total, Ordering::Relaxed);
            return Poll::Ready(Err(std::io::Error::other("layer larger than declared")));
        }
        // Small synchronous writes into the page cache; the fsync happens in `finish`.
        Poll::Ready(writer.write(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO, an oversized file or a missing one named as a registry's CA, password or
    /// token file is a configuration error naming the key, at once (never a hang).
    #[test]
    fn registry_files_are_read_bounded_and_regular() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; (MAX_CA_FILE + 1) as usize]).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let started = std::time::Instant::now();
        for (settings, what) in [
            (
                RegistrySettings {
                    ca_file: Some(fifo.clone()),
                    ..Default::default()
                },
                "ca-file",
            ),
            (
                RegistrySettings {
                    ca_file: Some(big),
                    ..Default::default()
                },
                "ca-file",
            ),
            (
                RegistrySettings {
                    username: Some("u".into()),
                    password_file: Some(fifo.clone()),
                    ..Default::default()
                },
                "fifo",
            ),
            (
                RegistrySettings {
                    token_file: Some(fifo.clone()),
                    ..Default::default()
                },
                "fifo",
            ),
        ] {
            let err = RegistryFiles::read("reg.example.com", Some(&settings), None)
                .err()
                .unwrap_or_else(|| panic!("{settings:?} accepted"));
            assert!(err.contains(what), "{err}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let ok = RegistrySettings {
            username: Some("u".into()),
            password_file: Some(secret),
            ..Default::default()
        };
        let files = RegistryFiles::read("reg.example.com", Some(&ok), None).unwrap();
        assert_eq!(files.auth, RegistryAuth::Basic("u".into(), "s3cret".into()));
        assert!(matches!(files.protocol, ClientProtocol::Https));
        let local = RegistryFiles::read("127.0.0.1:5000", None, None).unwrap();
        assert!(matches!(local.protocol, ClientProtocol::Http));
    }

    #[test]
    fn references() {
        let r =
            parse_reference("oci://127.0.0.1:5000/examples/hello", Some("1.0.0_build.1")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.reference.repository(), "examples/hello");
        assert_eq!(r.reference.tag(), Some("1.0.0_build.1"));
        assert_eq!(
            r.display,
            "oci://127.0.0.1:5000/examples/hello:1.0.0_build.1"
        );

        let digest = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(
            &format!("oci://reg.example.com/a/b@{digest}"),
            Some("2.0.0"),
        )
        .unwrap();
        assert_eq!(r.reference.digest(), Some(digest.as_str()));
        assert_eq!(r.reference.tag(), Some("2.0.0"));

        let r = parse_reference("oci://localhost:5000/hello:0.1.0", None).unwrap();
        assert_eq!(r.reference.tag(), Some("0.1.0"));

        for (repository, revision, needle) in [
            ("oci://r.io/x", Some("1.0.0+build"), "'_'"),
            ("oci://r.io/x", None, "no revision"),
            ("oci://r.io/x:1", Some("2"), "revision only"),
            ("oci://hello", Some("1"), "REGISTRY/REPOSITORY"),
            ("oci://r.io/Upper", Some("1"), "lowercase"),
            ("oci://r.io/x@sha256:zz", Some("1"), "sha256 digest"),
            ("https://r.io/x", Some("1"), "oci://"),
        ] {
            let err = parse_reference(repository, revision).unwrap_err();
            assert_eq!(err.kind, OciErrorKind::Config, "{repository}");
            assert!(err.to_string().contains(needle), "{repository}: {err}");
        }
    }

    fn manifest(config: &str, layers: &[(&str, i64)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(media_type, size)| {
                serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{}", "b".repeat(64)), "size": size})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config, "digest": format!("sha256:{}", "c".repeat(64)), "size": 2},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn manifests() {
        let ok = component_layer(
            &manifest(WASM_CONFIG_MEDIA_TYPE, &[("application/wasm", 10)]),
            100,
        )
        .unwrap();
        assert_eq!(ok.1, 10);
        // Generic artifact: empty config, artifactType.
        assert!(component_layer(
            &manifest(
                "application/vnd.oci.empty.v1+json",
                &[("application/wasm", 10)]
            ),
            100
        )
        .is_ok());
        // The draft artifact manifest with blobs.
        let draft = serde_json::json!({
            "mediaType": OCI_ARTIFACT_MANIFEST,
            "artifactType": "application/wasm",
            "blobs": [{"mediaType": "application/wasm", "digest": format!("sha256:{}", "d".repeat(64)), "size": 5}],
        });
        assert_eq!(
            component_layer(&serde_json::to_vec(&draft).unwrap(), 100)
                .unwrap()
                .1,
            5
        );
        let cases: [(Vec<u8>, OciErrorKind, &str); 5] = [
            (
                manifest(
                    "application/vnd.oci.image.config.v1+json",
                    &[("application/vnd.oci.image.layer.v1.tar+gzip", 10)],
                ),
                OciErrorKind::MediaType,
                "container image",
            ),
            (
                manifest(WASM_CONFIG_MEDIA_TYPE, &[]),
                OciErrorKind::MediaType,
                "no layers",
            ),
            (
                manifest(
                    WASM_CONFIG_MEDIA_TYPE,
                    &[("application/wasm", 1), ("application/wasm", 1)],
                ),
                OciErrorKind::MediaType,
                "exactly one",
            ),
            (
                manifest(WASM_CONFIG_MEDIA_TYPE, &[("application/wasm", 1000)]),
                OciErrorKind::TooLarge,
                "max-component-size",
            ),
            (
                serde_json::to_vec(&serde_json::json!({"mediaType": OCI_INDEX, "manifests": [{}]}))
                    .unwrap(),
                OciErrorKind::MediaType,
                "index",
            ),
        ];
        for (body, kind, needle) in cases {
            let (got, message) = component_layer(&body, 100).unwrap_err();
            assert_eq!(got, kind, "{message}");
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn loopback_and_auth_file() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {"https://reg.example.com/v1/": {"auth": "dXNlcjpwYXNz"},
                          "tok.example.com": {"registrytoken": "t0k"}}}"#,
        )
        .unwrap();
        assert_eq!(
            auth_from_file(&path, "reg.example.com").unwrap(),
            Some(RegistryAuth::Basic("user".into(), "pass".into()))
        );
        assert_eq!(
            auth_from_file(&path, "tok.example.com").unwrap(),
            Some(RegistryAuth::Bearer("t0k".into()))
        );
        assert_eq!(auth_from_file(&path, "other.example.com").unwrap(), None);
    }
}
