//! A strict mock Margo WFM (Workload Fleet Manager) for the WFM-client integration tests.
//!
//! * [`Profile::Rc3`]: Margo 1.0.0-rc.3 (MIAF): mutual TLS 1.3 with X.509-SVIDs, routes
//!   `/api/v1/capabilities/{deviceId}`, `/api/v1/deployments`, `/api/v1/bundles/{digest}`,
//!   `/api/v1/deployments/{id}/{digest}`, `/api/v1/deployments/{id}/status`.
//! * [`Profile::Rc2`]: the superseded 1.0.0-rc.2 profile: server-side TLS only, onboarding
//!   (`/api/v1/onboarding[/certificate]`), `/api/v1/clients/{clientId}/...` routes, every
//!   request authenticated with an RFC 9421 HTTP message signature (ecdsa-p256-sha256) and,
//!   when it has a body, an RFC 9530 `Content-Digest`.
//!
//! Everything is served under [`PREFIX`] (`/v1alpha2/margo`), like the Margo conformance
//! suite's mock; the manifest's `url`s are server-relative *without* that prefix
//! (`/api/v1/bundles/sha256:...`), i.e. the client appends them to its base URL.
//!
//! Request bodies are validated against the component schemas of the OpenAPI documents in
//! `tests/data/margo/data` (copies of the Margo OpenAPI files, loaded at run time, with the two known-defect patches that
//! `shared/spec/examples/validate_examples.py` applies). Every strictness failure is
//! answered with an RFC 9457 problem and also recorded in [`MockWfm::violations`].
//!
//! The server runs on its own thread with its own tokio runtime, so the control API is
//! plain synchronous Rust usable from sync tests and from async tests alike.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::pki::{self, Identity, Pki};

/// Path prefix of every route (the conformance suite's API base).
pub const PREFIX: &str = "/v1alpha2/margo";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.margo.manifest.v1+json";
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.margo.bundle.v1+tar+gzip";
/// Media type used by [`Fixture::UnknownBundleMediaType`].
pub const UNKNOWN_BUNDLE_MEDIA_TYPE: &str = "application/vnd.margo.bundle.v2+tar+zstd";
/// Problem-type namespace of the rc.3 registry.
pub const PROBLEM_RC3: &str = "https://docs.margo.org/specification/problem-types#";
/// Problem-type namespace of the RFC 9421-era catalogue (used by the rc.2 profile).
pub const PROBLEM_RC2: &str = "https://docs.margo.org/specification/problems/";
/// `apiVersion` values the rc.2 profile requires (conformance suite's rules).
pub const RC2_CAPABILITIES_API_VERSION: &str = "device.margo.org/v1alpha1";
pub const RC2_STATUS_API_VERSION: &str = "deployment.margo.org/v1alpha1";
pub const RC2_ONBOARDING_API_VERSION: &str = "onboarding.margo.org/v1alpha1";
/// Size of the bundle served by [`Fixture::OversizeBundle`] is above this.
pub const OVERSIZE_LIMIT: usize = 16 * 1024 * 1024;
const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;
const IMMUTABLE_RC3: &str = "private, max-age=31536000, immutable";
const IMMUTABLE_RC2: &str = "public, max-age=31536000, immutable";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Rc3,
    Rc2,
}

/// Deliberate defects in what the mock serves. Changing the fixture changes the served
/// manifest and bumps [`MockWfm::manifest_version`] (so a client that accepted the previous
/// manifest sees a strictly greater version and has to look at the defect itself), except
/// that the version-forcing fixtures then serve their forced value.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Fixture {
    #[default]
    None,
    /// Conformance `unsupported_digest_algorithm`: every `digest` (bundle and deployments)
    /// gets the prefix `sha512:` (hex unchanged; `url`s untouched). Must be rejected.
    UnsupportedDigestAlgorithm,
    /// Conformance `bundle_digest_mismatch`: last hex digit of `bundle.digest` flipped;
    /// `bundle.url` still names (and serves) the real archive. Must be rejected.
    BundleDigestMismatch,
    /// Conformance `deployment_digest_mismatch`: the same flip on `deployments[0].digest`.
    DeploymentDigestMismatch,
    /// Conformance `non_increasing_manifest_version`: `manifestVersion` forced to 1.
    NonIncreasingManifestVersion,
    /// Conformance `wrong_size_bytes`: every `sizeBytes` = 1, digests right. Must be ACCEPTED.
    WrongSizeBytes,
    /// `bundle: null` although `deployments` is not empty. Must be rejected.
    BundleNullWithDeployments,
    /// The bundle's first entry is named `../evil.yaml` (content unchanged, digest right).
    TarPathTraversal,
    /// The bundle's first entry appears twice (same name, same bytes).
    TarDuplicateEntry,
    /// An extra symlink entry `link.yaml -> /etc/passwd` next to the normal entries.
    TarSymlink,
    /// A bundle of more than 16 MiB (normal tar, then >16 MiB of random bytes after the
    /// end-of-archive marker, gzip level 0) whose digest and sizeBytes are right.
    OversizeBundle,
    /// `bundle.mediaType` (and the bundle's Content-Type) = [`UNKNOWN_BUNDLE_MEDIA_TYPE`].
    UnknownBundleMediaType,
    /// `manifestVersion` forced to `to`.
    ManifestVersionRollback { to: u64 },
    /// These exact bytes are served as the bundle (the manifest's `bundle.digest` and
    /// `sizeBytes` are computed over them, media type [`BUNDLE_MEDIA_TYPE`]), so that a
    /// hostile archive passes the digest check and reaches the archive reader. Applies
    /// while the desired state has deployments (otherwise `bundle` is null as always).
    RawBundle(Vec<u8>),
    /// Deployment `id` is served as these exact bytes, with a matching digest: it
    /// replaces that id's YAML, or is listed in addition when `set_deployments` has no
    /// such id. The mock never parses them (status reports on `id` are not checked
    /// against its components or deviceId). The bundle still holds the YAMLs of
    /// `set_deployments`: meant for the single-YAML path (one deployment changed).
    RawDeployment { id: String, bytes: Vec<u8> },
    /// The manifest lists `n` more deployments after the real ones (ids
    /// `ffffffff-0000-4000-8000-<12 digits>`, well-formed digests that name no content).
    ManyDeployments(usize),
}

impl Fixture {
    /// Fixtures whose manifest a correct client rejects without fetching anything.
    fn reject_without_fetch(&self) -> bool {
        matches!(
            self,
            Fixture::UnsupportedDigestAlgorithm
                | Fixture::BundleNullWithDeployments
                | Fixture::UnknownBundleMediaType
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownMode {
    /// The listener is closed (connection refused) and open connections are cut.
    Refuse,
    /// Every request gets `503` + `Retry-After` + a retryable problem.
    ServiceUnavailable { retry_after_secs: u64 },
}

/// One request as the mock saw and answered it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path without [`PREFIX`] (and without the query); the raw path when outside it.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub status: u16,
    pub at: Instant,
    /// rc.3: SPIFFE ID of the client certificate of the connection.
    pub peer_spiffe_id: Option<String>,
    /// rc.3: DER of the client certificate the connection was made with.
    pub peer_cert_der: Option<Vec<u8>>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One completed TLS handshake.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub at: Instant,
    pub client_spiffe_id: Option<String>,
    pub client_cert_der: Option<Vec<u8>>,
}

/// Start-up options; `MockOptions::default()` is what [`MockWfm::start`] uses.
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// Server certificate chain + key (default: the PKI's WFM SVID). Use
    /// `pki.wfm_svid_with_id(..)` / `pki.foreign_ca_wfm()` for negative tests.
    pub server_identity: Option<Identity>,
    /// rc.2 only: add `custom` to the `supportedRuntimes` / `supportedDeploymentTypes` enums
    /// (the rc.2 OpenAPI only has `oci` and `helm|compose`) and, with it, the top-level
    /// `labels` that Margo's custom-runtime extension requires of a device reporting
    /// `custom` (rc.3's schema of them). Default false (strict).
    pub rc2_allow_custom: bool,
    /// rc.2: allowed distance of the signature's `created` from the mock's clock.
    pub max_signature_age_secs: u64,
    /// rc.2: how signatures are verified.
    pub verifier: SignatureVerifier,
    /// Answer as Margo's conformance mock does: capabilities `{"status":
    /// "capabilities_received"}` (plus its non-spec `_client_cert` object in rc.3) and
    /// status reports always `200 {"acknowledgement":"received"}`. Default false (empty
    /// bodies, 201 on the first status of a deployment in rc.3).
    pub conformance_replies: bool,
}

/// How the mock rebuilds `@signature-params` when it verifies an rc.2 signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SignatureVerifier {
    /// RFC 9421 §3.2: exactly as the received `Signature-Input` serialises it.
    #[default]
    Strict,
    /// As Margo's reference stack does (Go `lestrrat-go/htmsig` v1.0.0): the covered
    /// components as received, then the parameters in the fixed order `created`,
    /// `expires`, `keyid`, `alg` (those present), whatever order the client sent.
    FixedOrder,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            server_identity: None,
            rc2_allow_custom: false,
            max_signature_age_secs: 300,
            verifier: SignatureVerifier::Strict,
            conformance_replies: false,
        }
    }
}

/// The running mock. Dropping it stops the server.
pub struct MockWfm {
    inner: Arc<Inner>,
    addr: SocketAddr,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

enum Command {
    Listen(bool, std_mpsc::SyncSender<()>),
    Shutdown,
}

impl MockWfm {
    pub fn start(profile: Profile, pki: &Pki) -> MockWfm {
        Self::start_with(profile, pki, MockOptions::default())
    }

    pub fn start_with(profile: Profile, pki: &Pki, options: MockOptions) -> MockWfm {
        let schemas = Schemas::load(profile, options.rc2_allow_custom);
        let server = options
            .server_identity
            .clone()
            .unwrap_or_else(|| pki.wfm_server());
        let std_listener =
            bind_reuse("127.0.0.1:0".parse().unwrap()).expect("mock WFM: binding 127.0.0.1:0");
        let addr = std_listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            profile,
            expected_client: pki.client_spiffe_id(),
            root_pem: pki.root_pem(),
            addr,
            max_age: options.max_signature_age_secs,
            verifier: options.verifier,
            conformance_replies: options.conformance_replies,
            schemas,
            state: Mutex::new(State::new()),
        });
        {
            let mut st = inner.state.lock().unwrap();
            inner.rebuild(&mut st);
        }
        let tls = Arc::new(server_config(profile, pki, &server, inner.clone()));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let thread_inner = inner.clone();
        let thread = std::thread::Builder::new()
            .name("mock-wfm".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    std_listener.set_nonblocking(true).unwrap();
                    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                    ready_tx.send(()).unwrap();
                    accept_loop(thread_inner, listener, addr, tls, rx).await;
                });
            })
            .unwrap();
        ready_rx.recv().unwrap();
        MockWfm {
            inner,
            addr,
            commands: tx,
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:PORT/v1alpha2/margo`
    pub fn base_url(&self) -> String {
        format!("https://{}{PREFIX}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn profile(&self) -> Profile {
        self.inner.profile
    }

    /// Replaces the desired state with `(deploymentId, exact YAML bytes)` pairs. The
    /// manifest lists them sorted by id; `manifestVersion` goes up by one when the set of
    /// ids or any content changed. The YAML is served byte for byte and is not validated
    /// (so tests can serve bad content); when it parses, its component names and
    /// `metadata.deviceId` are used to check status reports.
    pub fn set_deployments<I: AsRef<str>, B: AsRef<[u8]>>(&self, deployments: &[(I, B)]) {
        let mut list: Vec<(String, Bytes)> = deployments
            .iter()
            .map(|(id, y)| (id.as_ref().to_string(), Bytes::copy_from_slice(y.as_ref())))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        for pair in list.windows(2) {
            assert_ne!(pair[0].0, pair[1].0, "set_deployments: duplicate id");
        }
        let mut st = self.inner.state.lock().unwrap();
        if st.deployments != list {
            st.deployments = list;
            st.version += 1;
            self.inner.rebuild(&mut st);
        }
    }

    /// Installs a fixture (`Fixture::None` clears it); see [`Fixture`].
    pub fn set_fixture(&self, fixture: Fixture) {
        let mut st = self.inner.state.lock().unwrap();
        if st.fixture != fixture {
            st.fixture = fixture;
            st.version += 1;
            self.inner.rebuild(&mut st);
        }
    }

    pub fn clear_fixture(&self) {
        self.set_fixture(Fixture::None);
    }

    pub fn fixture(&self) -> Fixture {
        self.inner.state.lock().unwrap().fixture.clone()
    }

    /// The mock's own manifest version counter (what it serves unless a version-forcing
    /// fixture is active).
    pub fn manifest_version(&self) -> u64 {
        self.inner.state.lock().unwrap().version
    }

    /// The manifest exactly as `GET .../deployments` serves it now (rc.2: with the URLs of
    /// the most recently onboarded client, or `{clientId}` before any onboarding).
    pub fn current_manifest(&self) -> Value {
        let st = self.inner.state.lock().unwrap();
        let api = match self.inner.profile {
            Profile::Rc3 => "/api/v1".to_string(),
            Profile::Rc2 => format!(
                "/api/v1/clients/{}",
                st.rc2_clients
                    .last()
                    .map(|c| c.0.as_str())
                    .unwrap_or("{clientId}")
            ),
        };
        self.inner.manifest(&st, &api)
    }

    /// Digest (`sha256:<hex>`) of the bundle currently served, if any.
    pub fn bundle_digest(&self) -> Option<String> {
        let st = self.inner.state.lock().unwrap();
        st.bundle.as_ref().map(|b| b.digest.clone())
    }

    pub fn set_down(&self, mode: DownMode) {
        self.inner.state.lock().unwrap().down = Some(mode);
        self.listen(mode != DownMode::Refuse);
    }

    pub fn set_up(&self) {
        self.inner.state.lock().unwrap().down = None;
        self.listen(true);
    }

    fn listen(&self, on: bool) {
        let (ack_tx, ack_rx) = std_mpsc::sync_channel(1);
        self.commands
            .send(Command::Listen(on, ack_tx))
            .expect("mock WFM thread is gone");
        ack_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("mock WFM did not acknowledge");
    }

    /// Refuses every capabilities report of `device_id` with `status` (`None`: accept
    /// again): `422` a strict WFM's semantic error, `404` with `about:blank` as a router
    /// that cannot route hierarchical deviceIds answers (Margo's conformance mock),
    /// `500` a retryable server error with `Retry-After: 1`.
    pub fn refuse_capabilities(&self, device_id: &str, status: Option<u16>) {
        let mut st = self.inner.state.lock().unwrap();
        match status {
            Some(code) => st.refused_capabilities.insert(device_id.into(), code),
            None => st.refused_capabilities.remove(device_id),
        };
    }

    /// rc.3: `false` makes every request answer `403 #not-authorized` (relationship retired).
    /// rc.2: the same for the signed `/clients/{clientId}` routes.
    pub fn set_authorized(&self, authorized: bool) {
        self.inner.state.lock().unwrap().authorized = authorized;
    }

    /// Adds these members to every manifest served from now on (`None`: stop), as
    /// Margo's conformance mock adds its non-spec `_client_cert` object. The ETag covers
    /// them; a client must ignore members it does not know.
    pub fn set_manifest_extra(&self, extra: Option<serde_json::Map<String, Value>>) {
        self.inner.state.lock().unwrap().manifest_extra = extra;
    }

    /// rc.2: refuses every onboarding with `status` (`None`: accept again), as the
    /// conformance mock refuses a blocklisted certificate (`403 Client rejected`).
    pub fn refuse_onboarding(&self, status: Option<u16>) {
        self.inner.state.lock().unwrap().onboarding_refusal = status;
    }

    /// Every digest that appeared in a served manifest or as content so far.
    pub fn advertised_digests(&self) -> HashSet<String> {
        self.inner.state.lock().unwrap().advertised.clone()
    }

    /// rc.2: forget every onboarded client (later calls get `404 invalid-client`).
    pub fn forget_rc2_clients(&self) {
        self.inner.state.lock().unwrap().rc2_clients.clear();
    }

    /// rc.2: the clientIds handed out so far, oldest first.
    pub fn rc2_client_ids(&self) -> Vec<String> {
        let st = self.inner.state.lock().unwrap();
        st.rc2_clients.iter().map(|c| c.0.clone()).collect()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.state.lock().unwrap().requests.clone()
    }

    /// Current capabilities document per deviceId.
    pub fn capabilities(&self) -> BTreeMap<String, Value> {
        self.inner.state.lock().unwrap().devices.clone()
    }

    /// Accepted status bodies in arrival order.
    pub fn statuses(&self) -> Vec<Value> {
        self.inner.state.lock().unwrap().statuses.clone()
    }

    /// Status reports accepted for deployment `id`, as (state, adoptedManifestVersion).
    pub fn reports(&self, id: &str) -> Vec<(String, u64)> {
        self.statuses()
            .iter()
            .filter(|s| s["deploymentId"] == id)
            .map(|s| {
                (
                    s["status"]["state"].as_str().unwrap_or_default().to_owned(),
                    s["adoptedManifestVersion"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Waits up to `timeout` for a report of `id` in `state` at manifest `version`.
    pub fn wait_state(&self, id: &str, state: &str, version: u64, timeout: Duration) {
        self.wait_until(&format!("{id} {state} at v{version}"), timeout, |m| {
            m.reports(id)
                .iter()
                .any(|(s, v)| s == state && *v == version)
        });
    }

    /// Every strictness failure seen so far, as `"<METHOD> <path>: <what>"`.
    pub fn violations(&self) -> Vec<String> {
        self.inner.state.lock().unwrap().violations.clone()
    }

    /// Failed TLS handshakes (e.g. the client refused the mock's certificate, or presented
    /// a certificate that does not chain to the PKI root). Not violations.
    pub fn tls_failures(&self) -> Vec<String> {
        self.inner.state.lock().unwrap().tls_failures.clone()
    }

    pub fn handshakes(&self) -> Vec<Handshake> {
        self.inner.state.lock().unwrap().handshakes.clone()
    }

    /// Clears recorded requests, violations, TLS failures and handshakes.
    pub fn clear_records(&self) {
        let mut st = self.inner.state.lock().unwrap();
        st.requests.clear();
        st.violations.clear();
        st.tls_failures.clear();
        st.handshakes.clear();
    }

    #[track_caller]
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "mock WFM violations:\n  {}", v.join("\n  "));
    }

    /// Polls `check` every 20 ms until it holds; panics after `timeout`. Blocks the calling
    /// thread: from async tests use [`MockWfm::wait_for`].
    #[track_caller]
    pub fn wait_until(&self, what: &str, timeout: Duration, check: impl Fn(&MockWfm) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            if Instant::now() > deadline {
                panic!(
                    "mock WFM: timed out waiting for {what}; violations: {:?}; last requests: {:?}",
                    self.violations(),
                    self.requests()
                        .iter()
                        .rev()
                        .take(10)
                        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// Async twin of [`MockWfm::wait_until`] for `#[tokio::test]`s: sleeps with tokio, so
    /// a client task on the same (current-thread) runtime keeps running meanwhile.
    pub async fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&MockWfm) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            if Instant::now() > deadline {
                panic!(
                    "mock WFM: timed out waiting for {what}; violations: {:?}; last requests: {:?}",
                    self.violations(),
                    self.requests()
                        .iter()
                        .rev()
                        .take(10)
                        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for MockWfm {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// State

#[derive(Clone, Debug)]
struct DeployInfo {
    components: Option<Vec<String>>,
    device_id: Option<String>,
}

struct BundleContent {
    bytes: Bytes,
    digest: String,
    media_type: String,
}

struct DeploymentContent {
    id: String,
    digest: String,
    bytes: Bytes,
}

struct State {
    deployments: Vec<(String, Bytes)>,
    version: u64,
    fixture: Fixture,
    bundle: Option<BundleContent>,
    contents: Vec<DeploymentContent>,
    /// manifest version -> deployments it contained.
    history: BTreeMap<u64, BTreeMap<String, DeployInfo>>,
    /// Digests that appeared in any served manifest or content (for 404 judgement).
    advertised: HashSet<String>,
    devices: BTreeMap<String, Value>,
    statuses: Vec<Value>,
    status_ids: HashSet<String>,
    requests: Vec<Recorded>,
    violations: Vec<String>,
    tls_failures: Vec<String>,
    handshakes: Vec<Handshake>,
    down: Option<DownMode>,
    authorized: bool,
    /// deviceId -> status to refuse its capabilities with (see `refuse_capabilities`).
    refused_capabilities: BTreeMap<String, u16>,
    rc2_clients: Vec<(String, p256::ecdsa::VerifyingKey)>,
    /// Members added to every served manifest (see `set_manifest_extra`).
    manifest_extra: Option<serde_json::Map<String, Value>>,
    /// rc.2: status every onboarding is refused with (see `refuse_onboarding`).
    onboarding_refusal: Option<u16>,
}

impl State {
    fn new() -> State {
        State {
            deployments: vec![],
            version: 1,
            fixture: Fixture::None,
            bundle: None,
            contents: vec![],
            history: BTreeMap::new(),
            advertised: HashSet::new(),
            devices: BTreeMap::new(),
            statuses: vec![],
            status_ids: HashSet::new(),
            requests: vec![],
            violations: vec![],
            tls_failures: vec![],
            handshakes: vec![],
            down: None,
            authorized: true,
            refused_capabilities: BTreeMap::new(),
            rc2_clients: vec![],
            manifest_extra: None,
            onboarding_refusal: None,
        }
    }
}

struct Inner {
    profile: Profile,
    expected_client: String,
    root_pem: String,
    addr: SocketAddr,
    max_age: u64,
    verifier: SignatureVerifier,
    conformance_replies: bool,
    schemas: Schemas,
    state: Mutex<State>,
}

// ---------------------------------------------------------------------------------------
// Schemas

struct Schemas {
    capabilities: jsonschema::Validator,
    status: jsonschema::Validator,
    manifest: jsonschema::Validator,
    onboarding: Option<jsonschema::Validator>,
}

/// The Margo OpenAPI documents kept with the tests (`tests/data/margo/data`).
pub fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/margo/data")
}

/// Loads an OpenAPI document of `tests/data/margo/data` as JSON, with the in-memory patches of
/// `validate_examples.py` applied. Panics (loudly) when the file is missing.
pub fn load_openapi(relative: &str) -> Value {
    let path = spec_dir().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "mock WFM: cannot read the Margo OpenAPI document {} ({e}). The mock validates \
             bodies against the copies in runtime/tests/data/margo/data.",
            path.display()
        )
    });
    let mut doc: Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("mock WFM: {} is not YAML: {e}", path.display()));
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("mock WFM: {} has no components.schemas", path.display()));
    // Known defect: dotted "bundle.mediaType" etc. listed as top-level required properties.
    if let Some(req) = schemas
        .get_mut("UnsignedAppStateManifest")
        .and_then(|s| s.get_mut("required"))
        .and_then(Value::as_array_mut)
    {
        req.retain(|r| !r.as_str().unwrap_or_default().contains('.'));
    }
    // Known defect: metadata "annotations" required although the model no longer has it.
    if let Some(req) = schemas
        .get_mut("appDeploymentMetadata")
        .and_then(|s| s.get_mut("required"))
        .and_then(Value::as_array_mut)
    {
        req.retain(|r| r != "annotations");
    }
    doc
}

fn component_validator(doc: &Value, name: &str) -> jsonschema::Validator {
    assert!(
        doc.pointer(&format!("/components/schemas/{name}"))
            .is_some(),
        "mock WFM: OpenAPI has no component schema {name}"
    );
    let mut root = doc.clone();
    root["$ref"] = json!(format!("#/components/schemas/{name}"));
    jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("mock WFM: cannot compile schema {name}: {e}"))
}

impl Schemas {
    fn load(profile: Profile, rc2_allow_custom: bool) -> Schemas {
        match profile {
            Profile::Rc3 => {
                let doc = load_openapi("workload-management-api-1.0.0-rc.3.yaml");
                // rc.3 already lists `custom` in both enums; if a future copy lacked it,
                // that would be the known spec inconsistency: allow it.
                let mut doc = doc;
                ensure_custom(&mut doc);
                Schemas {
                    capabilities: component_validator(&doc, "DeviceCapabilitiesManifest"),
                    status: component_validator(&doc, "DeploymentStatusManifest"),
                    manifest: component_validator(&doc, "UnsignedAppStateManifest"),
                    onboarding: None,
                }
            }
            Profile::Rc2 => {
                let mut doc = load_openapi("history/workload-management-api-1.0.0-rc.2.yaml");
                if rc2_allow_custom {
                    ensure_custom(&mut doc);
                    let rc3 = load_openapi("workload-management-api-1.0.0-rc.3.yaml");
                    let labels = rc3
                        .pointer("/components/schemas/DeviceCapabilitiesManifest/properties/labels")
                        .cloned()
                        .expect("mock WFM: rc.3 capabilities have labels");
                    doc.pointer_mut("/components/schemas/DeviceCapabilitiesManifest/properties")
                        .and_then(Value::as_object_mut)
                        .expect("mock WFM: rc.2 capabilities have properties")
                        .insert("labels".into(), labels);
                }
                let onboarding = doc
                    .pointer("/paths/~1api~1v1~1onboarding/post/requestBody/content/application~1json/schema")
                    .cloned()
                    .expect("mock WFM: rc.2 OpenAPI has no onboarding request schema");
                Schemas {
                    capabilities: component_validator(&doc, "DeviceCapabilitiesManifest"),
                    status: component_validator(&doc, "DeploymentStatusManifest"),
                    manifest: component_validator(&doc, "UnsignedAppStateManifest"),
                    onboarding: Some(jsonschema::draft202012::new(&onboarding).unwrap()),
                }
            }
        }
    }
}

fn ensure_custom(doc: &mut Value) {
    for field in ["supportedRuntimes", "supportedDeploymentTypes"] {
        let ptr = format!(
            "/components/schemas/DeviceCapabilitiesManifest/properties/properties/properties/{field}/items/enum"
        );
        if let Some(list) = doc.pointer_mut(&ptr).and_then(Value::as_array_mut) {
            if !list.iter().any(|v| v == "custom") {
                list.push(json!("custom"));
            }
        }
    }
}

/// Schema errors as `errors[]` members (`field` dotted, `message`).
fn schema_errors(v: &jsonschema::Validator, instance: &Value) -> Vec<(String, String)> {
    v.iter_errors(instance)
        .map(|e| {
            let ptr = e.instance_path().to_string();
            let field = ptr.trim_start_matches('/').replace('/', ".");
            (field, e.to_string())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Content building

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn flip_last_hex(digest: &str) -> String {
    let mut s = digest.to_string();
    let last = s.pop().unwrap_or('0');
    s.push(if last == '0' { '1' } else { '0' });
    s
}

fn tar_header(name: &[u8], size: u64, kind: tar::EntryType, link: Option<&[u8]>) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let ustar = h.as_ustar_mut().unwrap();
        ustar.name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            ustar.linkname[..link.len()].copy_from_slice(link);
        }
    }
    h.set_size(size);
    h.set_mode(if kind == tar::EntryType::Symlink {
        0o777
    } else {
        0o644
    });
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(kind);
    h.set_cksum();
    h
}

/// Deterministic tar.gz of `<id>.yaml` entries, with the tar fixtures applied.
fn build_bundle(entries: &[(String, Bytes)], fixture: &Fixture) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (i, (id, bytes)) in entries.iter().enumerate() {
        let name = if i == 0 && *fixture == Fixture::TarPathTraversal {
            "../evil.yaml".to_string()
        } else {
            format!("{id}.yaml")
        };
        let h = tar_header(
            name.as_bytes(),
            bytes.len() as u64,
            tar::EntryType::Regular,
            None,
        );
        builder.append(&h, &bytes[..]).unwrap();
        if i == 0 && *fixture == Fixture::TarDuplicateEntry {
            builder.append(&h, &bytes[..]).unwrap();
        }
    }
    if *fixture == Fixture::TarSymlink {
        let h = tar_header(
            b"link.yaml",
            0,
            tar::EntryType::Symlink,
            Some(b"/etc/passwd"),
        );
        builder.append(&h, std::io::empty()).unwrap();
    }
    let mut tar_bytes = builder.into_inner().unwrap();
    let level = if *fixture == Fixture::OversizeBundle {
        // Trailing garbage after the end-of-archive marker: ignored by tar readers, so only
        // a size limit catches it.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let extra = OVERSIZE_LIMIT + 1024 * 1024;
        tar_bytes.reserve(extra);
        for _ in 0..extra / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            tar_bytes.extend_from_slice(&x.to_le_bytes());
        }
        flate2::Compression::none()
    } else {
        flate2::Compression::default()
    };
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), level);
    std::io::Write::write_all(&mut gz, &tar_bytes).unwrap();
    gz.finish().unwrap()
}

fn deploy_info(yaml: &[u8]) -> DeployInfo {
    let parsed: Option<Value> = serde_norway::from_slice(yaml).ok();
    let components = parsed
        .as_ref()
        .and_then(|v| v.pointer("/spec/deploymentProfile/components"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
                .collect()
        });
    let device_id = parsed
        .as_ref()
        .and_then(|v| v.pointer("/metadata/deviceId"))
        .and_then(Value::as_str)
        .map(String::from);
    DeployInfo {
        components,
        device_id,
    }
}

impl Inner {
    /// Recomputes served content after a change of deployments or fixture.
    fn rebuild(&self, st: &mut State) {
        st.contents = st
            .deployments
            .iter()
            .map(|(id, bytes)| DeploymentContent {
                id: id.clone(),
                digest: sha256_digest(bytes),
                bytes: bytes.clone(),
            })
            .collect();
        if let Fixture::RawDeployment { id, bytes } = &st.fixture {
            let raw = DeploymentContent {
                id: id.clone(),
                digest: sha256_digest(bytes),
                bytes: Bytes::copy_from_slice(bytes),
            };
            match st.contents.iter_mut().find(|c| c.id == *id) {
                Some(slot) => *slot = raw,
                None => {
                    st.contents.push(raw);
                    st.contents.sort_by(|a, b| a.id.cmp(&b.id));
                }
            }
        }
        st.bundle = if st.deployments.is_empty() {
            None
        } else {
            let bytes = match &st.fixture {
                Fixture::RawBundle(raw) => raw.clone(),
                fixture => build_bundle(&st.deployments, fixture),
            };
            Some(BundleContent {
                digest: sha256_digest(&bytes),
                bytes: Bytes::from(bytes),
                media_type: if st.fixture == Fixture::UnknownBundleMediaType {
                    UNKNOWN_BUNDLE_MEDIA_TYPE.to_string()
                } else {
                    BUNDLE_MEDIA_TYPE.to_string()
                },
            })
        };
        let mut infos: BTreeMap<String, DeployInfo> = st
            .deployments
            .iter()
            .map(|(id, y)| (id.clone(), deploy_info(y)))
            .collect();
        if let Fixture::RawDeployment { id, .. } = &st.fixture {
            // Hostile YAML (alias bombs, deep nesting) is what the client must survive,
            // not something for the mock to parse.
            infos.insert(
                id.clone(),
                DeployInfo {
                    components: None,
                    device_id: None,
                },
            );
        }
        let version = st.version;
        st.history.insert(version, infos);
        let mut adv: Vec<String> = st.contents.iter().map(|c| c.digest.clone()).collect();
        if let Some(b) = &st.bundle {
            adv.push(b.digest.clone());
        }
        st.advertised.extend(adv);
        // Self-check: without a fixture the manifest must satisfy the OpenAPI schema.
        let manifest = self.manifest(st, "/api/v1");
        if st.fixture == Fixture::None {
            let errs = schema_errors(&self.schemas.manifest, &manifest);
            assert!(errs.is_empty(), "mock WFM bug: invalid manifest {errs:?}");
        }
        for d in manifest["deployments"].as_array().unwrap() {
            if let Some(s) = d["digest"].as_str() {
                st.advertised.insert(s.to_string());
            }
        }
        if let Some(s) = manifest["bundle"]["digest"].as_str() {
            st.advertised.insert(s.to_string());
        }
    }

    /// The manifest JSON; `api` is `/api/v1` (rc.3) or `/api/v1/clients/<id>` (rc.2).
    fn manifest(&self, st: &State, api: &str) -> Value {
        let fx = &st.fixture;
        let size = |n: usize| -> u64 {
            if *fx == Fixture::WrongSizeBytes {
                1
            } else {
                n as u64
            }
        };
        let alter = |digest: &str, flip: bool| -> String {
            if *fx == Fixture::UnsupportedDigestAlgorithm {
                digest.replacen("sha256:", "sha512:", 1)
            } else if flip {
                flip_last_hex(digest)
            } else {
                digest.to_string()
            }
        };
        let bundle = match (&st.bundle, fx) {
            (_, Fixture::BundleNullWithDeployments) | (None, _) => Value::Null,
            (Some(b), _) => json!({
                "mediaType": b.media_type,
                "digest": alter(&b.digest, *fx == Fixture::BundleDigestMismatch),
                "sizeBytes": size(b.bytes.len()),
                "url": format!("{api}/bundles/{}", b.digest),
            }),
        };
        let mut deployments: Vec<Value> = st
            .contents
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "deploymentId": c.id,
                    "digest": alter(&c.digest, i == 0 && *fx == Fixture::DeploymentDigestMismatch),
                    "sizeBytes": size(c.bytes.len()),
                    "url": format!("{api}/deployments/{}/{}", c.id, c.digest),
                })
            })
            .collect();
        if let Fixture::ManyDeployments(n) = fx {
            deployments.extend((0..*n).map(|i| {
                let digest = format!("sha256:{i:064x}");
                let id = format!("ffffffff-0000-4000-8000-{i:012}");
                json!({
                    "deploymentId": id,
                    "digest": digest,
                    "sizeBytes": 1,
                    "url": format!("{api}/deployments/{id}/{digest}"),
                })
            }));
        }
        let version = match fx {
            Fixture::NonIncreasingManifestVersion => 1,
            Fixture::ManifestVersionRollback { to } => *to,
            _ => st.version,
        };
        json!({
            "manifestVersion": version,
            "bundle": bundle,
            "deployments": deployments,
        })
    }
}

// ---------------------------------------------------------------------------------------
// TLS

struct SvidClientVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    mock: Arc<Inner>,
}

impl std::fmt::Debug for SvidClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidClientVerifier").finish_non_exhaustive()
    }
}

impl rustls::server::danger::ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| {
                self.mock
                    .state
                    .lock()
                    .unwrap()
                    .tls_failures
                    .push(format!("client certificate rejected: {e}"));
            })?;
        if let Err(why) = pki::check_svid_leaf(end_entity) {
            self.mock.state.lock().unwrap().tls_failures.push(format!(
                "client certificate is not a valid X.509-SVID: {why}"
            ));
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn server_config(
    profile: Profile,
    pki: &Pki,
    server: &Identity,
    mock: Arc<Inner>,
) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap();
    let builder = match profile {
        Profile::Rc3 => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from(
                    pki.root_der().to_vec(),
                ))
                .unwrap();
            let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(Arc::new(SvidClientVerifier { inner, mock }))
        }
        Profile::Rc2 => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(server.rustls_chain(), server.rustls_key())
        .expect("mock WFM: server certificate/key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn bind_reuse(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    // SO_REUSEADDR so that `set_up` after `DownMode::Refuse` can rebind the same port.
    // Tokio's socket needs a reactor; synchronous tests call this from plain threads.
    let temporary = match tokio::runtime::Handle::try_current() {
        Ok(_) => None,
        Err(_) => Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?,
        ),
    };
    let _entered = temporary.as_ref().map(|rt| rt.enter());
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    listener.into_std()
}

// ---------------------------------------------------------------------------------------
// Server loop

struct ConnInfo {
    spiffe_id: Option<String>,
    cert_der: Option<Vec<u8>>,
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (epoch_tx, _) = tokio::sync::watch::channel(0u64);
    let mut listener = Some(listener);
    loop {
        enum Event {
            Cmd(Option<Command>),
            Conn(std::io::Result<(tokio::net::TcpStream, SocketAddr)>),
        }
        let event = match &listener {
            Some(l) => tokio::select! {
                c = commands.recv() => Event::Cmd(c),
                a = l.accept() => Event::Conn(a),
            },
            None => Event::Cmd(commands.recv().await),
        };
        match event {
            Event::Cmd(None) | Event::Cmd(Some(Command::Shutdown)) => break,
            Event::Cmd(Some(Command::Listen(on, ack))) => {
                if on && listener.is_none() {
                    let std_l = bind_reuse(addr).expect("mock WFM: rebinding its port");
                    std_l.set_nonblocking(true).unwrap();
                    listener = Some(tokio::net::TcpListener::from_std(std_l).unwrap());
                } else if !on {
                    listener = None;
                    epoch_tx.send_modify(|e| *e += 1);
                }
                let _ = ack.send(());
            }
            Event::Conn(Ok((tcp, _peer))) => {
                let acceptor = acceptor.clone();
                let inner = inner.clone();
                let mut epoch = epoch_tx.subscribe();
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                inner
                                    .state
                                    .lock()
                                    .unwrap()
                                    .tls_failures
                                    .push(format!("TLS handshake failed: {e}"));
                                return;
                            }
                            Err(_) => {
                                inner
                                    .state
                                    .lock()
                                    .unwrap()
                                    .tls_failures
                                    .push("TLS handshake timed out".into());
                                return;
                            }
                        };
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    let spiffe_id = cert
                        .as_deref()
                        .and_then(|d| pki::uri_sans(d).into_iter().next());
                    inner.state.lock().unwrap().handshakes.push(Handshake {
                        at: Instant::now(),
                        client_spiffe_id: spiffe_id.clone(),
                        client_cert_der: cert.clone(),
                    });
                    let conn = Arc::new(ConnInfo {
                        spiffe_id,
                        cert_der: cert,
                    });
                    let svc = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        let conn = conn.clone();
                        async move { Ok::<_, Infallible>(serve(inner, conn, req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc);
                    tokio::select! {
                        _ = http => {}
                        _ = epoch.changed() => {}
                    }
                });
            }
            Event::Conn(Err(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

struct Req {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
    /// rc.3: SPIFFE ID of the connection's client certificate.
    peer: Option<String>,
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl Reply {
    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            body: Bytes::new(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

async fn serve(
    inner: Arc<Inner>,
    conn: Arc<ConnInfo>,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return hyper::Response::builder()
                .status(413)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    };
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(String::from),
        headers: parts.headers,
        body,
        peer: conn.spiffe_id.clone(),
    };
    let reply = {
        let mut st = inner.state.lock().unwrap();
        let reply = inner.handle(&mut st, &req, &conn);
        st.requests.push(Recorded {
            method: req.method.to_string(),
            path: req
                .path
                .strip_prefix(PREFIX)
                .unwrap_or(&req.path)
                .to_string(),
            query: req.query.clone(),
            headers: req.headers.clone(),
            body: req.body.to_vec(),
            status: reply.status,
            at: Instant::now(),
            peer_spiffe_id: conn.spiffe_id.clone(),
            peer_cert_der: conn.cert_der.clone(),
        });
        reply
    };
    let mut resp = hyper::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        resp = resp.header(*name, value);
    }
    resp.body(Full::new(reply.body)).unwrap()
}

// ---------------------------------------------------------------------------------------
// Request handling

fn violate(st: &mut State, req: &Req, what: impl AsRef<str>) {
    st.violations.push(format!(
        "{} {}: {}",
        req.method,
        req.path.strip_prefix(PREFIX).unwrap_or(&req.path),
        what.as_ref()
    ));
}

fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
        })
}

fn valid_digest_syntax(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn header_str<'a>(req: &'a Req, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// All instances of a header joined with ", " (RFC 9110 field combination).
fn header_combined(req: &Req, name: &str) -> Option<String> {
    let values: Vec<&str> = req
        .headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .collect();
    if values.is_empty() {
        None
    } else {
        Some(values.join(", "))
    }
}

const STATE_ORDER: [&str; 6] = [
    "removed",
    "installed",
    "pending",
    "installing",
    "removing",
    "failed",
];

impl Inner {
    fn ptype(&self, name: &str) -> String {
        let old_catalogue = [
            "invalid-request",
            "semantic-error",
            "invalid-bundle",
            "deployment-not-found",
            "server-cannot-generate-response",
            "invalid-client",
            "signature-verification-failed",
            "invalid-digest-header",
            "invalid-certificate-format",
            "certificate-not-trusted",
        ];
        if self.profile == Profile::Rc2 && old_catalogue.contains(&name) {
            format!("{PROBLEM_RC2}{name}")
        } else {
            format!("{PROBLEM_RC3}{name}")
        }
    }

    fn problem(&self, status: u16, name: &str, title: &str, detail: &str, req: &Req) -> Reply {
        self.problem_with(status, name, title, detail, req, None)
    }

    fn problem_with(
        &self,
        status: u16,
        name: &str,
        title: &str,
        detail: &str,
        req: &Req,
        errors: Option<Vec<(String, String)>>,
    ) -> Reply {
        let mut body = json!({
            "type": if name == "about:blank" { name.to_string() } else { self.ptype(name) },
            "title": title,
            "status": status,
            "detail": detail,
            "instance": req.path.strip_prefix(PREFIX).unwrap_or(&req.path),
            "retryable": false,
            "backoffStrategy": "none",
        });
        if let Some(errors) = errors {
            body["errors"] = errors
                .into_iter()
                .map(|(field, message)| json!({"field": field, "message": message}))
                .collect();
        }
        Reply {
            status,
            headers: vec![("content-type", "application/problem+json".into())],
            body: Bytes::from(serde_json::to_vec(&body).unwrap()),
        }
    }

    /// Rejects and records a violation in one go.
    fn reject(
        &self,
        st: &mut State,
        req: &Req,
        status: u16,
        name: &str,
        title: &str,
        detail: impl AsRef<str>,
    ) -> Reply {
        violate(st, req, format!("{status} {name}: {}", detail.as_ref()));
        self.problem(status, name, title, detail.as_ref(), req)
    }

    fn handle(&self, st: &mut State, req: &Req, conn: &ConnInfo) -> Reply {
        if let Some(DownMode::ServiceUnavailable { retry_after_secs }) = st.down {
            let body = json!({
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": "the WFM is temporarily unavailable",
                "retryable": true,
                "retryAfterSeconds": retry_after_secs,
                "backoffStrategy": "exponential",
            });
            return Reply {
                status: 503,
                headers: vec![
                    ("content-type", "application/problem+json".into()),
                    ("retry-after", retry_after_secs.to_string()),
                ],
                body: Bytes::from(serde_json::to_vec(&body).unwrap()),
            };
        }
        if let Some(host) = header_str(req, "host") {
            let ok = [
                format!("127.0.0.1:{}", self.addr.port()),
                format!("localhost:{}", self.addr.port()),
            ];
            if !ok.iter().any(|o| o.eq_ignore_ascii_case(host)) {
                violate(st, req, format!("unexpected Host header {host:?}"));
            }
        } else {
            return self.reject(
                st,
                req,
                400,
                "invalid-request",
                "Bad Request",
                "no Host header",
            );
        }
        let Some(rest) = req.path.strip_prefix(PREFIX) else {
            return self.reject(
                st,
                req,
                404,
                "about:blank",
                "Not Found",
                format!(
                    "path outside {PREFIX}: manifest URLs are relative to the API base URL \
                     (append them to it; RFC 3986 resolution of '/api/...' drops the prefix)"
                ),
            );
        };
        let Some(api) = rest.strip_prefix("/api/v1/") else {
            return self.reject(st, req, 404, "about:blank", "Not Found", "unknown route");
        };
        match self.profile {
            Profile::Rc3 => {
                match conn.spiffe_id.as_deref() {
                    Some(id) if id == self.expected_client => {}
                    other => {
                        return self.reject(
                            st,
                            req,
                            403,
                            "not-authorized",
                            "Not authorized",
                            format!(
                                "caller SPIFFE ID {other:?} is not the accepted client {:?}",
                                self.expected_client
                            ),
                        )
                    }
                }
                if !st.authorized {
                    return self.problem(
                        403,
                        "not-authorized",
                        "Client Relationship Retired",
                        "the WFM's policy no longer admits this client",
                        req,
                    );
                }
                self.resource(st, req, api, "/api/v1")
            }
            Profile::Rc2 => self.rc2(st, req, api),
        }
    }

    fn method_not_allowed(&self, st: &mut State, req: &Req) -> Reply {
        self.reject(
            st,
            req,
            405,
            "about:blank",
            "Method Not Allowed",
            "method not allowed on this route",
        )
    }

    /// The five resource routes, shared by both profiles. `api` is the route below
    /// `/api/v1/` (rc.2: below `/api/v1/clients/{clientId}/`); `url_api` the URL base used
    /// in the manifest.
    fn resource(&self, st: &mut State, req: &Req, api: &str, url_api: &str) -> Reply {
        if let Some(device_id) = api.strip_prefix("capabilities/") {
            return match (self.profile, &req.method) {
                (_, &Method::PUT) => self.put_capabilities(st, req, device_id),
                (Profile::Rc2, &Method::POST) => self.put_capabilities(st, req, device_id),
                (_, &Method::DELETE) => self.delete_capabilities(st, req, device_id),
                _ => self.method_not_allowed(st, req),
            };
        }
        if api == "deployments" {
            return if req.method == Method::GET {
                self.get_manifest(st, req, url_api)
            } else {
                self.method_not_allowed(st, req)
            };
        }
        if let Some(digest) = api.strip_prefix("bundles/") {
            return if req.method == Method::GET {
                self.get_bundle(st, req, digest)
            } else {
                self.method_not_allowed(st, req)
            };
        }
        if let Some(r) = api.strip_prefix("deployments/") {
            let parts: Vec<&str> = r.split('/').collect();
            if parts.len() == 2 && !parts[0].is_empty() {
                if parts[1] == "status" {
                    return if req.method == Method::POST {
                        self.post_status(st, req, parts[0])
                    } else {
                        self.reject(
                            st,
                            req,
                            405,
                            "about:blank",
                            "Method Not Allowed",
                            "only POST on .../status (a client must never GET it as a digest)",
                        )
                    };
                }
                return if req.method == Method::GET {
                    self.get_yaml(st, req, parts[0], parts[1])
                } else {
                    self.method_not_allowed(st, req)
                };
            }
        }
        self.reject(st, req, 404, "about:blank", "Not Found", "unknown route")
    }

    fn require_json(&self, st: &mut State, req: &Req) -> Result<Value, Reply> {
        let ct = header_str(req, "content-type").unwrap_or("");
        let mt = ct.split(';').next().unwrap_or("").trim();
        if !mt.eq_ignore_ascii_case("application/json") {
            return Err(self.reject(
                st,
                req,
                400,
                "invalid-request",
                "Bad Request",
                format!("Content-Type must be application/json, got {ct:?}"),
            ));
        }
        serde_json::from_slice(&req.body).map_err(|e| {
            self.reject(
                st,
                req,
                400,
                "invalid-request",
                "Bad Request",
                format!("malformed JSON body: {e}"),
            )
        })
    }

    fn semantic(&self, st: &mut State, req: &Req, errors: Vec<(String, String)>) -> Reply {
        for (f, m) in &errors {
            violate(st, req, format!("422 semantic-error: {f}: {m}"));
        }
        self.problem_with(
            422,
            "semantic-error",
            "Semantic error",
            "the request body does not satisfy the Margo schema or rules",
            req,
            Some(errors),
        )
    }

    fn put_capabilities(&self, st: &mut State, req: &Req, device_id: &str) -> Reply {
        if device_id.contains('%') {
            return self.reject(
                st,
                req,
                400,
                "invalid-request",
                "Bad Request",
                "deviceId must use raw '/' separators and unreserved characters, not percent-encoding",
            );
        }
        if !valid_device_id(device_id) {
            return self.reject(
                st,
                req,
                400,
                "invalid-request",
                "Bad Request",
                format!("deviceId {device_id:?} does not match the DeviceId pattern"),
            );
        }
        let body = match self.require_json(st, req) {
            Ok(b) => b,
            Err(r) => return r,
        };
        if let Some(code) = st.refused_capabilities.get(device_id).copied() {
            return match code {
                422 => self.problem_with(
                    422,
                    "semantic-error",
                    "Semantic error",
                    "refused by the test",
                    req,
                    Some(vec![("properties".into(), "refused by the test".into())]),
                ),
                404 => self.problem(404, "about:blank", "Not Found", "no such route", req),
                other => self
                    .problem(
                        other,
                        "about:blank",
                        "Internal Server Error",
                        "refused by the test",
                        req,
                    )
                    .with("retry-after", "1".to_string()),
            };
        }
        let mut errors = schema_errors(&self.schemas.capabilities, &body);
        if errors.is_empty() {
            errors = self.capability_rules(&body, device_id);
        }
        if !errors.is_empty() {
            return self.semantic(st, req, errors);
        }
        if let Some((parent, _)) = device_id.rsplit_once('/') {
            if !st.devices.contains_key(parent) {
                return self.reject(
                    st,
                    req,
                    404,
                    "gateway-not-found",
                    "Gateway not found",
                    format!("child {device_id:?} reported before its parent {parent:?}"),
                );
            }
        }
        let created = st.devices.insert(device_id.to_string(), body).is_none();
        let status = match self.profile {
            Profile::Rc3 => {
                if created {
                    201
                } else {
                    200
                }
            }
            Profile::Rc2 => 201,
        };
        if !self.conformance_replies {
            return Reply::empty(status);
        }
        let mut ack = json!({ "status": "capabilities_received" });
        if let Some(id) = &req.peer {
            ack["_client_cert"] = json!({ "spiffe_id": id, "trust_domain": "example.org" });
        }
        json_reply(status, &ack)
    }

    /// Rules from the spec prose that the OpenAPI cannot express.
    fn capability_rules(&self, body: &Value, device_id: &str) -> Vec<(String, String)> {
        let mut errors = vec![];
        let props = &body["properties"];
        if props["id"].as_str() != Some(device_id) {
            errors.push((
                "properties.id".into(),
                format!("must equal the path deviceId {device_id:?}"),
            ));
        }
        let hosting: &[&str] = match self.profile {
            Profile::Rc3 => &[
                "cpus",
                "memory",
                "storage",
                "peripherals",
                "interfaces",
                "otelCollector",
                "supportedRuntimes",
                "supportedDeploymentTypes",
            ],
            Profile::Rc2 => &[
                "cpu",
                "memory",
                "storage",
                "otelCollector",
                "supportedRuntimes",
                "supportedDeploymentTypes",
            ],
        };
        let present: Vec<&str> = hosting
            .iter()
            .copied()
            .filter(|f| props.get(*f).is_some())
            .collect();
        if !present.is_empty() && present.len() != hosting.len() {
            let missing: Vec<&str> = hosting
                .iter()
                .copied()
                .filter(|f| props.get(*f).is_none())
                .collect();
            errors.push((
                "properties".into(),
                format!(
                    "a hosting device reports all of {hosting:?} and a non-hosting one none; \
                     present {present:?}, missing {missing:?}"
                ),
            ));
        }
        if !present.is_empty() && props["otelCollector"] != json!(true) {
            errors.push((
                "properties.otelCollector".into(),
                "a hosting device MUST report true".into(),
            ));
        }
        let uses_custom = ["supportedRuntimes", "supportedDeploymentTypes"]
            .iter()
            .any(|f| {
                props[*f]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|v| v == "custom"))
            });
        // A strict rc.2 schema has neither `custom` nor `labels` (additionalProperties:
        // false); where `custom` is allowed, the custom-runtime rule applies as in rc.3.
        if uses_custom
            && body["labels"]
                .as_object()
                .is_none_or(|labels| labels.is_empty())
        {
            errors.push((
                "labels".into(),
                "a device reporting `custom` MUST also report labels".into(),
            ));
        }
        if self.profile == Profile::Rc2 {
            if body["apiVersion"] != json!(RC2_CAPABILITIES_API_VERSION) {
                errors.push((
                    "apiVersion".into(),
                    format!("must be {RC2_CAPABILITIES_API_VERSION:?}"),
                ));
            }
            if props.get("cpus").is_some() {
                errors.push((
                    "properties.cpus".into(),
                    "rc.2 names this field `cpu`".into(),
                ));
            }
        }
        errors
    }

    fn delete_capabilities(&self, st: &mut State, req: &Req, device_id: &str) -> Reply {
        if st.devices.remove(device_id).is_some() {
            Reply::empty(204)
        } else {
            self.reject(
                st,
                req,
                404,
                "device-not-found",
                "Device not found",
                format!("no device {device_id:?} registered for this client"),
            )
        }
    }

    fn get_manifest(&self, st: &mut State, req: &Req, url_api: &str) -> Reply {
        match header_str(req, "accept") {
            None => violate(
                st,
                req,
                format!("no Accept header (the client SHOULD send {MANIFEST_MEDIA_TYPE})"),
            ),
            Some(accept) if !accepts_manifest(accept) => {
                return self.reject(
                    st,
                    req,
                    406,
                    "server-cannot-generate-response",
                    "Not Acceptable",
                    format!("Accept {accept:?} does not allow {MANIFEST_MEDIA_TYPE}"),
                )
            }
            Some(_) => {}
        }
        let mut manifest = self.manifest(st, url_api);
        if let (Some(extra), Some(m)) = (&st.manifest_extra, manifest.as_object_mut()) {
            m.extend(extra.clone());
        }
        let body = serde_json::to_vec(&manifest).unwrap();
        let etag = format!("\"{}\"", sha256_digest(&body));
        if self.if_none_match(st, req, &etag) {
            return Reply::empty(304)
                .with("etag", etag)
                .with("cache-control", "private");
        }
        Reply {
            status: 200,
            headers: vec![
                ("content-type", MANIFEST_MEDIA_TYPE.into()),
                ("etag", etag),
                ("cache-control", "private".into()),
            ],
            body: Bytes::from(body),
        }
    }

    /// True when `If-None-Match` matches `etag` (weak comparison, RFC 9110 §13.1.2).
    fn if_none_match(&self, st: &mut State, req: &Req, etag: &str) -> bool {
        let Some(inm) = header_combined(req, "if-none-match") else {
            return false;
        };
        let mut hit = false;
        for tag in inm.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if tag == "*" {
                hit = true;
                continue;
            }
            let strong = tag.strip_prefix("W/").unwrap_or(tag);
            if !(strong.len() >= 2 && strong.starts_with('"') && strong.ends_with('"')) {
                violate(
                    st,
                    req,
                    format!("If-None-Match {tag:?} is not a quoted entity-tag"),
                );
                continue;
            }
            hit |= strong == etag;
        }
        hit
    }

    fn check_fetch_allowed(&self, st: &mut State, req: &Req) {
        if st.fixture.reject_without_fetch() {
            violate(
                st,
                req,
                format!(
                    "content fetched while fixture {:?} is active: the manifest must be rejected without fetching",
                    st.fixture
                ),
            );
        }
    }

    fn digest_in_path(
        &self,
        st: &mut State,
        req: &Req,
        digest: &str,
        problem: &str,
    ) -> Result<(), Reply> {
        if digest.contains('%') {
            return Err(self.reject(
                st,
                req,
                404,
                problem,
                "Not Found",
                "the digest appears raw in the path (with ':'), not percent-encoded",
            ));
        }
        Ok(())
    }

    fn immutable(&self) -> &'static str {
        match self.profile {
            Profile::Rc3 => IMMUTABLE_RC3,
            Profile::Rc2 => IMMUTABLE_RC2,
        }
    }

    fn get_bundle(&self, st: &mut State, req: &Req, digest: &str) -> Reply {
        if let Err(r) = self.digest_in_path(st, req, digest, "invalid-bundle") {
            return r;
        }
        self.check_fetch_allowed(st, req);
        let found = st
            .bundle
            .as_ref()
            .filter(|b| b.digest == digest)
            .map(|b| (b.bytes.clone(), b.media_type.clone()));
        let Some((bytes, media_type)) = found else {
            let detail = format!("Bundle not found for digest: {digest}");
            if st.advertised.contains(digest) {
                // Superseded content: a 404 here is normal, not the client's fault.
                return self.problem(404, "invalid-bundle", "Bundle not found", &detail, req);
            }
            return self.reject(st, req, 404, "invalid-bundle", "Bundle not found", detail);
        };
        let etag = format!("\"{digest}\"");
        if self.if_none_match(st, req, &etag) {
            return Reply::empty(304)
                .with("etag", etag)
                .with("cache-control", self.immutable());
        }
        Reply {
            status: 200,
            headers: vec![
                ("content-type", media_type),
                ("etag", etag),
                ("cache-control", self.immutable().into()),
            ],
            body: bytes,
        }
    }

    fn get_yaml(&self, st: &mut State, req: &Req, id: &str, digest: &str) -> Reply {
        if let Err(r) = self.digest_in_path(st, req, digest, "deployment-not-found") {
            return r;
        }
        self.check_fetch_allowed(st, req);
        let found = st
            .contents
            .iter()
            .find(|c| c.id == id && c.digest == digest)
            .map(|c| c.bytes.clone());
        let Some(bytes) = found else {
            let detail = if st.contents.iter().any(|c| c.id == id) {
                format!("Deployment not found for digest: {digest}")
            } else {
                format!("Deployment not found: {id}")
            };
            if st.advertised.contains(digest) && valid_digest_syntax(digest) {
                return self.problem(
                    404,
                    "deployment-not-found",
                    "Deployment not found",
                    &detail,
                    req,
                );
            }
            return self.reject(
                st,
                req,
                404,
                "deployment-not-found",
                "Deployment not found",
                detail,
            );
        };
        let etag = format!("\"{digest}\"");
        let mut reply = if self.if_none_match(st, req, &etag) {
            Reply::empty(304)
        } else {
            Reply {
                status: 200,
                headers: vec![("content-type", "application/yaml".into())],
                body: bytes,
            }
        };
        reply.headers.push(("etag", etag));
        reply
            .headers
            .push(("cache-control", self.immutable().into()));
        reply.headers.push(("vary", "Accept-Encoding".into()));
        reply
    }

    fn post_status(&self, st: &mut State, req: &Req, path_id: &str) -> Reply {
        let body = match self.require_json(st, req) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let errors = schema_errors(&self.schemas.status, &body);
        if !errors.is_empty() {
            return self.semantic(st, req, errors);
        }
        let mut errors = vec![];
        let body_id = body["deploymentId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let body_id = body_id.as_str();
        if body_id != path_id {
            errors.push((
                "deploymentId".into(),
                format!("{body_id:?} differs from the path deploymentId {path_id:?}"),
            ));
        }
        if self.profile == Profile::Rc2 && body["apiVersion"] != json!(RC2_STATUS_API_VERSION) {
            errors.push((
                "apiVersion".into(),
                format!("must be {RC2_STATUS_API_VERSION:?}"),
            ));
        }
        errors.extend(self.status_rules(st, &body, body_id));
        if !errors.is_empty() {
            return self.semantic(st, req, errors);
        }
        st.statuses.push(body);
        let created = st.status_ids.insert(body_id.to_string());
        if self.conformance_replies {
            return json_reply(200, &json!({ "acknowledgement": "received" }));
        }
        match self.profile {
            Profile::Rc3 => Reply::empty(if created { 201 } else { 200 }),
            Profile::Rc2 => Reply::empty(200),
        }
    }

    fn status_rules(&self, st: &State, body: &Value, id: &str) -> Vec<(String, String)> {
        let mut errors = vec![];
        let state = body["status"]["state"].as_str().unwrap_or_default();
        let removal = state == "removing" || state == "removed";
        // Overall state = most severe component state.
        let comps = body["components"].as_array().cloned().unwrap_or_default();
        if !comps.is_empty() {
            let rank = |s: &str| STATE_ORDER.iter().position(|x| *x == s).unwrap_or(0);
            let worst = comps
                .iter()
                .filter_map(|c| c["state"].as_str())
                .max_by_key(|s| rank(s))
                .unwrap_or_default();
            if worst != state {
                errors.push((
                    "status.state".into(),
                    format!(
                        "{state:?} is not the most severe component state {worst:?} \
                         (failed > removing > installing > pending > installed > removed)"
                    ),
                ));
            }
        }
        if !st.history.values().any(|v| v.contains_key(id)) {
            errors.push((
                "deploymentId".into(),
                format!("{id:?} was never part of any manifest"),
            ));
            return errors;
        }
        let adopted = &body["adoptedManifestVersion"];
        let info = if adopted.is_null() {
            // rc.2 has no adoptedManifestVersion: judge against the newest revision.
            st.history.values().rev().find_map(|v| v.get(id)).cloned()
        } else {
            let Some(n) = adopted.as_u64().filter(|n| *n >= 1) else {
                errors.push((
                    "adoptedManifestVersion".into(),
                    "must be an integer in [1, 2^64-1]".into(),
                ));
                return errors;
            };
            let Some(snapshot) = st.history.get(&n) else {
                errors.push((
                    "adoptedManifestVersion".into(),
                    format!(
                        "manifest version {n} was never served (current {})",
                        st.version
                    ),
                ));
                return errors;
            };
            match snapshot.get(id) {
                Some(info) => Some(info.clone()),
                None if removal => st
                    .history
                    .range(..=n)
                    .rev()
                    .find_map(|(_, v)| v.get(id))
                    .cloned(),
                None => {
                    errors.push((
                        "adoptedManifestVersion".into(),
                        format!("manifest version {n} does not contain deployment {id:?}"),
                    ));
                    return errors;
                }
            }
        };
        let Some(info) = info else {
            errors.push((
                "adoptedManifestVersion".into(),
                format!("deployment {id:?} is not in any manifest up to this version"),
            ));
            return errors;
        };
        if let Some(expected) = &info.components {
            let mut got: Vec<String> = comps
                .iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect();
            got.sort();
            let mut want = expected.clone();
            want.sort();
            if got != want {
                errors.push((
                    "components".into(),
                    format!("must list exactly the deployment's components {want:?}, got {got:?}"),
                ));
            }
        }
        if let Some(target) = &info.device_id {
            let reported = body["deviceId"].as_str();
            if let Some(gateway) = target.strip_suffix("/*") {
                let ok = reported.is_some_and(|d| {
                    d == gateway || d.strip_prefix(gateway).is_some_and(|r| r.starts_with('/'))
                });
                if !ok {
                    errors.push((
                        "deviceId".into(),
                        format!(
                            "deployment targets {target:?}: report the gateway or the chosen child, got {reported:?}"
                        ),
                    ));
                }
            } else if target.contains('/') && reported != Some(target.as_str()) {
                errors.push((
                    "deviceId".into(),
                    format!("required for a child-device deployment: must be {target:?}, got {reported:?}"),
                ));
            } else if reported.is_some_and(|d| d != target) {
                errors.push((
                    "deviceId".into(),
                    format!("deployment targets {target:?}, got {reported:?}"),
                ));
            }
        }
        errors
    }

    // -----------------------------------------------------------------------------------
    // rc.2

    fn rc2(&self, st: &mut State, req: &Req, api: &str) -> Reply {
        if api == "onboarding/certificate" {
            if req.method != Method::GET {
                return self.method_not_allowed(st, req);
            }
            let body = json!({
                "certificate": base64::engine::general_purpose::STANDARD.encode(self.root_pem.as_bytes())
            });
            return Reply {
                status: 200,
                headers: vec![("content-type", "application/json".into())],
                body: Bytes::from(serde_json::to_vec(&body).unwrap()),
            };
        }
        if api == "onboarding" {
            if req.method != Method::POST {
                return self.method_not_allowed(st, req);
            }
            return self.onboard(st, req);
        }
        let Some(rest) = api.strip_prefix("clients/") else {
            return self.reject(st, req, 404, "about:blank", "Not Found", "unknown route");
        };
        let (client_id, sub) = rest.split_once('/').unwrap_or((rest, ""));
        let key = st
            .rc2_clients
            .iter()
            .find(|c| c.0 == client_id)
            .map(|c| c.1);
        let Some(key) = key else {
            return self.reject(
                st,
                req,
                404,
                "invalid-client",
                "Client not found",
                format!("no client with clientId {client_id:?}"),
            );
        };
        if let Err((status, name, detail)) = verify_request(req, &key, self.max_age, self.verifier)
        {
            let title = if status == 401 {
                "Signature verification failed"
            } else {
                "Invalid Content-Digest"
            };
            return self.reject(st, req, status, name, title, detail);
        }
        if !st.authorized {
            return self.problem(
                403,
                "certificate-not-trusted",
                "Client rejected",
                "the WFM no longer trusts this client",
                req,
            );
        }
        let url_api = format!("/api/v1/clients/{client_id}");
        self.resource(st, req, sub, &url_api)
    }

    fn onboard(&self, st: &mut State, req: &Req) -> Reply {
        let body = match self.require_json(st, req) {
            Ok(b) => b,
            Err(r) => return r,
        };
        if let Some(code) = st.onboarding_refusal {
            return self.problem(
                code,
                "certificate-not-trusted",
                "Client rejected",
                "refused by the test",
                req,
            );
        }
        let mut errors = schema_errors(self.schemas.onboarding.as_ref().unwrap(), &body);
        if body["apiVersion"] != json!(RC2_ONBOARDING_API_VERSION) {
            errors.push((
                "apiVersion".into(),
                format!("must be {RC2_ONBOARDING_API_VERSION:?}"),
            ));
        }
        if !errors.is_empty() {
            let detail = errors
                .iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join("; ");
            violate(st, req, format!("400 onboarding: {detail}"));
            return self.problem_with(
                400,
                "invalid-request",
                "Invalid onboarding request",
                &detail,
                req,
                Some(errors),
            );
        }
        let cert_b64 = body["certificate"].as_str().unwrap_or_default();
        let key = match onboarding_key(cert_b64) {
            Ok(k) => k,
            Err(why) => {
                return self.reject(
                    st,
                    req,
                    400,
                    "invalid-certificate-format",
                    "Invalid certificate",
                    why,
                )
            }
        };
        let client_id = uuid::Uuid::new_v4().to_string();
        st.rc2_clients.push((client_id.clone(), key));
        Reply {
            status: 201,
            headers: vec![("content-type", "application/json".into())],
            body: Bytes::from(serde_json::to_vec(&json!({ "clientId": client_id })).unwrap()),
        }
    }
}

fn json_reply(status: u16, body: &Value) -> Reply {
    Reply {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: Bytes::from(serde_json::to_vec(body).unwrap()),
    }
}

fn accepts_manifest(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q_zero = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
        });
        !q_zero && (media == MANIFEST_MEDIA_TYPE || media == "application/*" || media == "*/*")
    })
}

/// Decodes the onboarding `certificate` (base64 of a PEM certificate) and returns the
/// P-256 public key of its first certificate.
fn onboarding_key(b64: &str) -> Result<p256::ecdsa::VerifyingKey, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("certificate is not base64: {e}"))?;
    let pem = String::from_utf8(raw)
        .map_err(|_| "certificate must be base64 of a PEM certificate (got binary, DER?)")?;
    let der = pki::pem_certificates(&pem)
        .into_iter()
        .next()
        .ok_or("certificate must be base64 of a PEM `CERTIFICATE` block")?;
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| format!("certificate does not parse: {e}"))?;
    if !cert.validity().is_valid() {
        return Err("certificate is outside its validity period".into());
    }
    let spki = cert.public_key();
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&spki.subject_public_key.data)
        .map_err(|_| "the mock supports ECDSA P-256 client certificates only".to_string())
}

// ---------------------------------------------------------------------------------------
// RFC 9421 / RFC 9530 verification (independent of the client's signing code)

/// Verifies `Content-Digest` (RFC 9530) and every signature of an rc.2 request.
/// Errors: (status, problem name, detail).
fn verify_request(
    req: &Req,
    key: &p256::ecdsa::VerifyingKey,
    max_age: u64,
    verifier: SignatureVerifier,
) -> Result<(), (u16, &'static str, String)> {
    let sig401 = |d: String| (401, "signature-verification-failed", d);
    let dig400 = |d: String| (400, "invalid-digest-header", d);
    let sig_input = header_combined(req, "signature-input");
    let signature = header_combined(req, "signature");
    let (Some(sig_input), Some(signature)) = (sig_input, signature) else {
        return Err(sig401(
            "missing RFC 9421 Signature-Input / Signature headers".into(),
        ));
    };
    // RFC 9530 Content-Digest.
    let content_digest = header_combined(req, "content-digest");
    if !req.body.is_empty() || content_digest.is_some() {
        let Some(cd) = content_digest.as_deref().filter(|s| !s.is_empty()) else {
            return Err(dig400(
                "a request with a body needs Content-Digest: sha-256=:<base64>: (RFC 9530)".into(),
            ));
        };
        let dict = parse_dictionary(cd).map_err(|e| dig400(format!("content-digest: {e}")))?;
        let Some((_, Member::Item(Bare::Bytes(got), _))) =
            dict.iter().find(|(k, _)| k == "sha-256")
        else {
            return Err(dig400(
                "content-digest has no sha-256 byte-sequence member".into(),
            ));
        };
        if got.as_slice() != Sha256::digest(&req.body).as_slice() {
            return Err(dig400(
                "content-digest sha-256 does not match the body".into(),
            ));
        }
    }
    let inputs =
        parse_dictionary(&sig_input).map_err(|e| sig401(format!("signature-input: {e}")))?;
    let sigs = parse_dictionary(&signature).map_err(|e| sig401(format!("signature: {e}")))?;
    if inputs.is_empty() {
        return Err(sig401("empty Signature-Input".into()));
    }
    let authority = header_str(req, "host").unwrap_or_default();
    let target = match &req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.clone(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for (label, member) in &inputs {
        let Member::Inner(items, params) = member else {
            return Err(sig401(format!(
                "{label}: Signature-Input member is not an inner list"
            )));
        };
        let Some((_, Member::Item(Bare::Bytes(sig), _))) = sigs.iter().find(|(k, _)| k == label)
        else {
            return Err(sig401(format!("no Signature member for label {label:?}")));
        };
        let names: Vec<&str> = items
            .iter()
            .filter_map(|(b, _)| match b {
                Bare::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        let mut required = vec!["@method", "@target-uri", "@authority"];
        if !req.body.is_empty() {
            required.push("content-digest");
        }
        for r in required {
            if !names.contains(&r) {
                return Err(sig401(format!(
                    "{label}: covered components must include {r:?}"
                )));
            }
        }
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let Some(Bare::Int(created)) = param("created") else {
            return Err(sig401(format!(
                "{label}: integer `created` parameter required"
            )));
        };
        if (now - created).unsigned_abs() > max_age {
            return Err(sig401(format!(
                "{label}: created={created} is more than {max_age}s away from now={now}"
            )));
        }
        if let Some(expires) = param("expires") {
            if !matches!(expires, Bare::Int(e) if *e > now) {
                return Err(sig401(format!("{label}: signature expired")));
            }
        }
        if !matches!(param("keyid"), Some(Bare::Str(k)) if !k.is_empty()) {
            return Err(sig401(format!(
                "{label}: string `keyid` parameter required"
            )));
        }
        if let Some(alg) = param("alg") {
            if *alg != Bare::Str("ecdsa-p256-sha256".into()) {
                return Err(sig401(format!(
                    "{label}: alg {alg:?} unsupported (ecdsa-p256-sha256 only)"
                )));
            }
        }
        let rebuilt;
        let params = match verifier {
            SignatureVerifier::Strict => params,
            SignatureVerifier::FixedOrder => {
                rebuilt = ["created", "expires", "keyid", "alg"]
                    .iter()
                    .filter_map(|k| params.iter().find(|(n, _)| n == k).cloned())
                    .collect::<Params>();
                &rebuilt
            }
        };
        let base = signature_base(
            req.method.as_str(),
            authority,
            &target,
            &|name| header_combined(req, name),
            items,
            params,
        )
        .map_err(|e| sig401(format!("{label}: {e}")))?;
        if sig.len() != 64 {
            let hint = if sig.first() == Some(&0x30) {
                " (looks DER-encoded; RFC 9421 §3.3.4 wants raw r||s, 64 bytes)"
            } else {
                ""
            };
            return Err(sig401(format!(
                "{label}: ecdsa-p256-sha256 signature must be 64 bytes, got {}{hint}",
                sig.len()
            )));
        }
        let sig = p256::ecdsa::Signature::from_slice(sig)
            .map_err(|e| sig401(format!("{label}: bad signature encoding: {e}")))?;
        use p256::ecdsa::signature::Verifier;
        key.verify(base.as_bytes(), &sig).map_err(|_| {
            sig401(format!(
                "{label}: signature does not verify; signature base was:\n{base}"
            ))
        })?;
    }
    Ok(())
}

/// Builds the RFC 9421 signature base for a request (§2.5). `authority` is the Host value,
/// `target` the request-target (path + query); the scheme is always https.
pub fn signature_base(
    method: &str,
    authority: &str,
    target: &str,
    header: &dyn Fn(&str) -> Option<String>,
    items: &[(Bare, Params)],
    params: &Params,
) -> Result<String, String> {
    let authority = authority.to_ascii_lowercase();
    let authority = authority
        .strip_suffix(":443")
        .unwrap_or(&authority)
        .to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut base = String::new();
    let mut seen = HashSet::new();
    for (item, item_params) in items {
        let Bare::Str(name) = item else {
            return Err("covered components must be strings".into());
        };
        if !item_params.is_empty() {
            return Err(format!(
                "component parameters on {name:?} are not supported"
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(format!("component {name:?} listed twice"));
        }
        let value = match name.as_str() {
            "@method" => method.to_string(),
            "@target-uri" => format!("https://{authority}{target}"),
            "@authority" => authority.clone(),
            "@scheme" => "https".into(),
            "@request-target" => target.to_string(),
            "@path" => path.to_string(),
            "@query" => format!("?{}", query.unwrap_or("")),
            n if n.starts_with('@') => return Err(format!("unsupported derived component {n:?}")),
            n if n != n.to_ascii_lowercase() => {
                return Err(format!("component names are lowercase: {n:?}"))
            }
            n => header(n).ok_or_else(|| format!("covered header {n:?} is absent"))?,
        };
        base.push_str(&format!("\"{name}\": {value}\n"));
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&serialize_inner_list(items, params));
    Ok(base)
}

// ---------------------------------------------------------------------------------------
// RFC 8941 structured fields (the subset RFC 9421 / 9530 need)

#[derive(Clone, Debug, PartialEq)]
pub enum Bare {
    Int(i64),
    Dec(String),
    Str(String),
    Token(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

pub type Params = Vec<(String, Bare)>;

#[derive(Clone, Debug, PartialEq)]
pub enum Member {
    Item(Bare, Params),
    Inner(Vec<(Bare, Params)>, Params),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ') | Some(b'\t')) {
            self.i += 1;
        }
    }
    fn key(&mut self) -> Result<String, String> {
        let start = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
            _ => return Err(format!("key expected at {}", self.i)),
        }
        while let Some(c) = self.peek() {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c) {
                self.i += 1;
            } else {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn bare(&mut self) -> Result<Bare, String> {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                let mut out = String::new();
                loop {
                    match self.peek() {
                        None => return Err("unterminated string".into()),
                        Some(b'\\') => {
                            self.i += 1;
                            match self.peek() {
                                Some(c @ (b'"' | b'\\')) => {
                                    out.push(c as char);
                                    self.i += 1;
                                }
                                _ => return Err("bad escape in string".into()),
                            }
                        }
                        Some(b'"') => {
                            self.i += 1;
                            return Ok(Bare::Str(out));
                        }
                        Some(c) if (0x20..0x7f).contains(&c) => {
                            out.push(c as char);
                            self.i += 1;
                        }
                        Some(_) => return Err("invalid character in string".into()),
                    }
                }
            }
            Some(b':') => {
                self.i += 1;
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c == b':' {
                        break;
                    }
                    if !(c.is_ascii_alphanumeric() || b"+/=".contains(&c)) {
                        return Err("invalid character in byte sequence".into());
                    }
                    self.i += 1;
                }
                if self.peek() != Some(b':') {
                    return Err("unterminated byte sequence".into());
                }
                let b64 = &self.s[start..self.i];
                self.i += 1;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map(Bare::Bytes)
                    .map_err(|e| format!("byte sequence is not base64: {e}"))
            }
            Some(b'?') => {
                self.i += 1;
                let v = match self.peek() {
                    Some(b'1') => true,
                    Some(b'0') => false,
                    _ => return Err("bad boolean".into()),
                };
                self.i += 1;
                Ok(Bare::Bool(v))
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while let Some(c) = self.peek() {
                    if c.is_ascii_digit() || c == b'.' {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                if text.contains('.') {
                    Ok(Bare::Dec(text.to_string()))
                } else if text.trim_start_matches('-').len() > 15 {
                    Err("integer too long".into())
                } else {
                    text.parse()
                        .map(Bare::Int)
                        .map_err(|_| "bad integer".to_string())
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c) {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Ok(Bare::Token(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            _ => Err(format!("bare item expected at {}", self.i)),
        }
    }
    fn params(&mut self) -> Result<Params, String> {
        let mut out: Params = vec![];
        while self.peek() == Some(b';') {
            self.i += 1;
            self.sp();
            let k = self.key()?;
            let v = if self.peek() == Some(b'=') {
                self.i += 1;
                self.bare()?
            } else {
                Bare::Bool(true)
            };
            if let Some(slot) = out.iter_mut().find(|(n, _)| *n == k) {
                slot.1 = v;
            } else {
                out.push((k, v));
            }
        }
        Ok(out)
    }
    fn member(&mut self) -> Result<Member, String> {
        if self.peek() == Some(b'(') {
            self.i += 1;
            let mut items = vec![];
            loop {
                self.sp();
                if self.peek() == Some(b')') {
                    self.i += 1;
                    let params = self.params()?;
                    return Ok(Member::Inner(items, params));
                }
                let item = self.bare()?;
                let params = self.params()?;
                items.push((item, params));
                match self.peek() {
                    Some(b' ') | Some(b')') => {}
                    _ => return Err("inner list items must be separated by spaces".into()),
                }
            }
        }
        let item = self.bare()?;
        let params = self.params()?;
        Ok(Member::Item(item, params))
    }
}

/// Parses an RFC 8941 dictionary (order kept, later duplicates win).
pub fn parse_dictionary(s: &str) -> Result<Vec<(String, Member)>, String> {
    let mut p = Parser {
        s: s.as_bytes(),
        i: 0,
    };
    let mut out: Vec<(String, Member)> = vec![];
    p.sp();
    if p.peek().is_none() {
        return Ok(out);
    }
    loop {
        let key = p.key()?;
        let member = if p.peek() == Some(b'=') {
            p.i += 1;
            p.member()?
        } else {
            Member::Item(Bare::Bool(true), p.params()?)
        };
        if let Some(slot) = out.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = member;
        } else {
            out.push((key, member));
        }
        p.ows();
        match p.peek() {
            None => return Ok(out),
            Some(b',') => {
                p.i += 1;
                p.ows();
                if p.peek().is_none() {
                    return Err("trailing comma".into());
                }
            }
            Some(_) => return Err(format!("',' expected at {}", p.i)),
        }
    }
}

fn serialize_bare(b: &Bare) -> String {
    match b {
        Bare::Int(i) => i.to_string(),
        Bare::Dec(d) => d.clone(),
        Bare::Str(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        Bare::Token(t) => t.clone(),
        Bare::Bytes(b) => format!(":{}:", base64::engine::general_purpose::STANDARD.encode(b)),
        Bare::Bool(v) => format!("?{}", if *v { 1 } else { 0 }),
    }
}

fn serialize_params(params: &Params) -> String {
    params
        .iter()
        .map(|(k, v)| match v {
            Bare::Bool(true) => format!(";{k}"),
            v => format!(";{k}={}", serialize_bare(v)),
        })
        .collect()
}

/// Canonical RFC 8941 serialization of an inner list with parameters.
pub fn serialize_inner_list(items: &[(Bare, Params)], params: &Params) -> String {
    let inner: Vec<String> = items
        .iter()
        .map(|(b, p)| format!("{}{}", serialize_bare(b), serialize_params(p)))
        .collect();
    format!("({}){}", inner.join(" "), serialize_params(params))
}
