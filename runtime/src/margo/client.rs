//! The WFM client loop: report capabilities, deliver status reports, poll the desired
//! state, verify every byte by digest, hand the accepted deployments to the reconciler
//! (the same one local mode uses), and remember what was accepted.

use super::bundle;
use super::capabilities::{self, DeviceIdentity};
use super::device::{DeviceProfile, GatewayMode};
use super::outbox::Outbox;
use super::settings::{Profile, WfmSettings};
use super::state::{Accepted, SyncState};
use super::transport::{Transport, TransportError};
use super::types::{
    ComponentReport, DeploymentId, Digest, ErrorReport, ManifestVersion, Problem, ProblemClass,
    StateManifest, StatusBody, StatusReport, BUNDLE_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
};
use crate::deploy::status::{CapabilityReport, DeploymentStatus, StatusError, WfmSync};
use crate::deploy::{DesiredDeployment, Reconciler};
use crate::telemetry::WfmMetrics;
use bytes::Bytes;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::UnboundedReceiver;

/// Largest manifest or single deployment YAML accepted.
const MAX_DOCUMENT: u64 = 1 << 20;
/// Longest wait between attempts while the WFM is away.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Source prefix of WFM deployments in the status board.
pub const SOURCE_PREFIX: &str = "wfm:";

/// Why a cycle stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("WFM answered {status} to {what}: {detail}")]
    Refused {
        what: String,
        status: u16,
        /// The problem `type`, when the body had one.
        problem_type: Option<String>,
        class: ProblemClass,
        detail: String,
        retryable: bool,
        retry_after: Option<Duration>,
    },
    /// The desired state was refused; the previous state keeps running.
    #[error("desired state rejected: {0}")]
    Rejected(String),
    #[error("local state: {0}")]
    Local(String),
    /// The accepted-state record cannot be read: nothing is accepted until it can.
    #[error("accepted state unreadable: {0}")]
    StateUnreadable(String),
}

impl CycleError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the WFM refused who we are: nothing else is worth trying until it
    /// changes. Everything else a WFM refuses concerns one request only.
    fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                class: ProblemClass::Unauthorized,
                ..
            }
        )
    }
}

fn refused(what: String, response: &super::http::Response) -> CycleError {
    let problem = Problem::parse(&response.body).unwrap_or_default();
    let class = problem.class(response.status);
    let retry_after = response
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(problem.retry_after_seconds)
        .map(Duration::from_secs);
    // Margo: decide on `retryable`, not on the status code; without it, only the
    // transient statuses are worth another try.
    let retryable = problem
        .retryable
        .unwrap_or(matches!(response.status, 429 | 500 | 502 | 503 | 504));
    let problem_type = problem.kind.clone();
    let detail = problem.detail.or(problem.title).unwrap_or_else(|| {
        String::from_utf8_lossy(&response.body)
            .chars()
            .take(300)
            .collect()
    });
    CycleError::Refused {
        what,
        status: response.status,
        problem_type,
        class,
        detail,
        retryable,
        retry_after,
    }
}

fn local<E: std::fmt::Display>(e: E) -> CycleError {
    CycleError::Local(e.to_string())
}

/// A reply over its size limit is desired state the device refuses (its digest cannot
/// even be checked), like a digest mismatch: a security refusal, not a network failure
/// to retry.
fn oversize_is_rejected(err: TransportError, what: impl FnOnce() -> String) -> CycleError {
    match err {
        TransportError::Http(super::http::HttpError::TooLarge { limit, .. }) => {
            CycleError::Rejected(format!("{} is larger than {limit} bytes", what()))
        }
        other => other.into(),
    }
}

/// `poll` doubled per consecutive failure, at most [`MAX_BACKOFF`], never below `poll`.
fn exponential_backoff(poll: Duration, failures: u32) -> Duration {
    poll.saturating_mul(1u32 << failures.min(8))
        .min(MAX_BACKOFF)
        .max(poll)
}

/// A reloaded host configuration as the WFM client takes it: the device it now speaks
/// for (capabilities follow it) and the reconciler's part.
pub struct Reconfigured {
    pub device: DeviceProfile,
    pub deploy: crate::deploy::Reconfiguration,
}

/// A capabilities document the WFM refused, and when to offer it again.
struct RefusedReport {
    document: Value,
    status: u16,
    problem_type: Option<String>,
    detail: String,
    failures: u32,
    next_attempt: Instant,
}

pub struct WfmClient {
    settings: WfmSettings,
    /// `None` until the transport is ready (rc.2: onboarded).
    transport: Option<Transport>,
    device: DeviceProfile,
    identity: DeviceIdentity,
    /// deviceId -> capabilities document, host first; rebuilt when the host
    /// configuration is reloaded.
    documents: Vec<(String, Value)>,
    state: SyncState,
    outbox: Outbox,
    events: UnboundedReceiver<DeploymentStatus>,
    /// deviceId -> capabilities document last accepted by the WFM.
    reported: BTreeMap<String, Value>,
    /// Capabilities were sent on this run (they are the first exchange after connecting).
    announced: bool,
    /// deviceId -> the refused document of that target, retried with back-off.
    refused_reports: BTreeMap<String, RefusedReport>,
    last_error: Option<String>,
    last_sync: Option<u64>,
    /// The manifest version the reconciler is applying, for `adoptedManifestVersion`.
    applying: ManifestVersion,
    state_dir: PathBuf,
    metrics: WfmMetrics,
}

impl WfmClient {
    pub async fn new(
        settings: WfmSettings,
        device: DeviceProfile,
        events: UnboundedReceiver<DeploymentStatus>,
        metrics: WfmMetrics,
    ) -> anyhow::Result<Self> {
        let state_dir = device.state_dir.join("wfm");
        // Opening the stores sweeps temp files of writes a crash interrupted (before the
        // transport writes any); an unreadable accepted record is not an error here: the
        // client then serves what is installed and accepts nothing (see `cycle`).
        let state = SyncState::open(&state_dir, metrics.clone()).await?;
        let outbox = Outbox::open(&state_dir.join("outbox"), metrics.clone()).await?;
        let reported = state.reported().await;
        let transport = Self::connect(&settings, &state_dir).await?;
        if !device.otel_collector() {
            tracing::warn!(
                "Margo requires hosting devices to report otelCollector: true; [telemetry] enabled = false turns off the host's collector, so remove it (or set [device] otel-collector = true if another collector runs on this device): a strict WFM refuses the capabilities otherwise"
            );
        }
        if device.settings.otel_collector {
            tracing::warn!("[device] otel-collector is deprecated: the host is its workloads' collector ([telemetry] enabled, on by default); keep it only to report an external collector with [telemetry] enabled = false");
        }
        let identity = DeviceIdentity::from_profile(&device);
        let documents = capabilities::documents(&device, &identity, settings.profile());
        Ok(Self {
            identity,
            documents,
            applying: state.accepted_version(),
            settings,
            transport,
            device,
            state,
            outbox,
            events,
            reported,
            announced: false,
            refused_reports: BTreeMap::new(),
            last_error: None,
            last_sync: None,
            state_dir,
            metrics,
        })
    }

    /// Prepares the transport. A WFM that cannot be reached or refuses onboarding is not
    /// fatal (a device often boots before its network, or before the WFM trusts it):
    /// `None`, and every cycle tries again with back-off. Local problems (unreadable
    /// keys, certificates) are.
    async fn connect(
        settings: &WfmSettings,
        state_dir: &std::path::Path,
    ) -> Result<Option<Transport>, TransportError> {
        match Transport::new(settings, state_dir).await {
            Ok(transport) => Ok(Some(transport)),
            Err(err) if err.is_remote() => {
                tracing::warn!(error = %err, "cannot reach or onboard with the WFM yet; serving the state on disk and retrying with back-off");
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// One request to the WFM, timed into the `kind` series of
    /// `wasmgate_wfm_request_duration_seconds`.
    async fn send(
        &self,
        kind: &'static str,
        method: ::http::Method,
        url: &url::Url,
        headers: &[(&str, String)],
        body: Option<Bytes>,
        max_body: u64,
    ) -> Result<super::http::Response, TransportError> {
        let started = Instant::now();
        let Some(transport) = &self.transport else {
            return Err(TransportError::Onboarding("not onboarded yet".into()));
        };
        let span = tracing::info_span!(
            "wasmgate.wfm.request",
            otel.kind = "client",
            wasmgate.wfm.kind = kind,
            http.request.method = %method,
            wasmgate.wfm.outcome = tracing::field::Empty,
        );
        let result = tracing::Instrument::instrument(
            transport.send(method, url, headers, body, max_body),
            span.clone(),
        )
        .await;
        let outcome = match &result {
            Ok(r) if r.status == 304 => "not-modified",
            Ok(r) if (200..300).contains(&r.status) => "ok",
            Ok(r) if (400..500).contains(&r.status) => "rejected",
            _ => "error",
        };
        span.record("wasmgate.wfm.outcome", outcome);
        self.metrics.request(kind, outcome, started.elapsed());
        result
    }

    fn transport(&self) -> Result<&Transport, CycleError> {
        self.transport.as_ref().ok_or_else(|| {
            CycleError::Local("the transport is not ready (not onboarded yet)".into())
        })
    }

    /// Serves the last accepted desired state from disk, then syncs with the WFM until
    /// `shutdown` resolves.
    pub async fn run(
        mut self,
        reconciler: &mut Reconciler,
        shutdown: impl std::future::Future<Output = ()>,
        reconfigured: &mut tokio::sync::mpsc::UnboundedReceiver<Reconfigured>,
        mut on_applied: impl FnMut(&Reconciler),
    ) {
        self.restore(reconciler).await;
        on_applied(reconciler);
        tokio::pin!(shutdown);
        let mut failures = 0u32;
        'cycles: loop {
            let wait = if self.in_downtime() {
                // Known downtime: no requests, no retries, errors ignored.
                self.settings.poll_interval
            } else {
                let round = tracing::info_span!(
                    "wasmgate.wfm.sync",
                    otel.status_code = tracing::field::Empty
                );
                let result =
                    tracing::Instrument::instrument(self.cycle(reconciler), round.clone()).await;
                if result.is_err() {
                    round.record("otel.status_code", "ERROR");
                }
                self.publish(reconciler, result.as_ref().err());
                match result {
                    Ok(()) => {
                        failures = 0;
                        self.next_wait()
                    }
                    Err(err) => {
                        failures += 1;
                        let wait = self.backoff(&err, failures);
                        match &err {
                            CycleError::Rejected(_) => {
                                tracing::error!(error = %err, "security: desired state rejected; keeping the previous state")
                            }
                            _ => {
                                tracing::warn!(error = %err, retry_in = ?wait, "WFM sync incomplete")
                            }
                        }
                        wait
                    }
                }
            };
            on_applied(reconciler);
            // Installs that outlived their pass are committed when done; their
            // statuses go out with the next cycle.
            let until = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    _ = reconciler.install_progress() => {
                        reconciler.advance().await;
                        on_applied(reconciler);
                    }
                    Some(change) = reconfigured.recv() => {
                        // At once, not at the next poll: the WFM hears the new targets
                        // and the moved deployments' statuses in this cycle.
                        reconciler.reconfigure(&change.deploy);
                        self.reconfigure(change.device);
                        break;
                    }
                    _ = &mut shutdown => break 'cycles,
                }
            }
        }
        // Stopping: hand the WFM what changed since the last cycle (deployments the
        // drain stopped, for one). Bounded by the transport's timeouts and, overall, by
        // the host's shutdown bound; what is not delivered stays in the outbox.
        if self.transport.is_some() && !self.in_downtime() && self.state.unreadable().is_none() {
            // A last round of its own, so that its requests have a sync span as parent
            // like every other WFM request.
            let last_round = tracing::info_span!("wasmgate.wfm.sync", wasmgate.wfm.last = true);
            let delivered = tracing::Instrument::instrument(
                async {
                    self.collect_events().await?;
                    self.deliver_statuses().await
                },
                last_round,
            )
            .await;
            if let Err(err) = delivered {
                tracing::warn!(error = %err, pending = self.outbox.len(), "status reports not delivered before stopping; they stay queued for the next start");
            }
        }
    }

    /// A reloaded host configuration: the capabilities documents follow it, and the
    /// next cycle sends what changed and unregisters removed partitions.
    fn reconfigure(&mut self, device: DeviceProfile) {
        self.identity = DeviceIdentity::from_profile(&device);
        self.documents = capabilities::documents(&device, &self.identity, self.settings.profile());
        self.device = device;
    }

    fn backoff(&self, err: &CycleError, failures: u32) -> Duration {
        let poll = self.settings.poll_interval;
        let exponential = exponential_backoff(poll, failures);
        let base = match err {
            // A retired or refused client stops hammering the WFM.
            e if e.is_unauthorized() => MAX_BACKOFF,
            CycleError::Rejected(_) => poll,
            _ => exponential,
        };
        err.retry_after().map_or(base, |r| r.max(poll))
    }

    /// After a complete cycle: the poll interval, or sooner when a refused
    /// capabilities report is due again.
    fn next_wait(&self) -> Duration {
        let poll = self.settings.poll_interval;
        let now = Instant::now();
        self.refused_reports
            .values()
            .map(|r| r.next_attempt.saturating_duration_since(now))
            .min()
            .map_or(poll, |due| due.min(poll))
    }

    /// Shows the state of the exchange in `/status`.
    fn publish(&mut self, reconciler: &Reconciler, error: Option<&CycleError>) {
        self.metrics.outbox_depth(self.outbox.len());
        match error {
            None => {
                self.last_error = None;
                self.last_sync = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs());
            }
            Some(err) => self.last_error = Some(err.to_string()),
        }

        let now = Instant::now();
        let targets = self
            .documents
            .iter()
            .map(|(device, doc)| match self.refused_reports.get(device) {
                Some(r) => CapabilityReport {
                    device_id: device.clone(),
                    state: "refused",
                    status: Some(r.status),
                    problem_type: r.problem_type.clone(),
                    detail: Some(r.detail.clone()),
                    failures: r.failures,
                    retry_in_seconds: Some(r.next_attempt.saturating_duration_since(now).as_secs()),
                },
                None => CapabilityReport {
                    device_id: device.clone(),
                    state: if self.reported.get(device) == Some(doc) {
                        "accepted"
                    } else {
                        "pending"
                    },
                    status: None,
                    problem_type: None,
                    detail: None,
                    failures: 0,
                    retry_in_seconds: None,
                },
            })
            .collect();
        reconciler.status().set_wfm(WfmSync {
            profile: match self.settings.profile() {
                Profile::Rc3 => "rc3".into(),
                Profile::Rc2 => "rc2".into(),
            },
            connected: self.transport.is_some(),
            last_error: self.last_error.clone(),
            last_sync: self.last_sync,
            accepted_manifest_version: self.state.accepted_version(),
            outbox_depth: self.outbox.len(),
            targets,
        });
    }

    fn minute_of_day(now: SystemTime) -> u32 {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        ((secs % 86_400) / 60) as u32
    }

    fn in_downtime(&self) -> bool {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.settings
            .downtime_once
            .iter()
            .any(|d| (d.from_unix..d.until_unix).contains(&secs))
            || self
                .settings
                .downtime_daily
                .iter()
                .any(|w| w.contains(Self::minute_of_day(now)))
    }

    fn in_polling_window(&self) -> bool {
        self.settings
            .polling_window
            .is_none_or(|w| w.contains(Self::minute_of_day(SystemTime::now())))
    }

    /// One round: capabilities, queued statuses, desired state, new statuses.
    ///
    /// While the accepted-state record cannot be read, a round only reads it again (the
    /// caller backs off after the error): the WFM is not contacted, so no manifest can
    /// be accepted against a replay guard we do not have, and queued reports wait on
    /// disk. Once it reads, the accepted state is applied and the rounds resume.
    pub async fn cycle(&mut self, reconciler: &mut Reconciler) -> Result<(), CycleError> {
        if self.state.unreadable().is_some() {
            if !self.state.reload().await {
                let reason = self.state.unreadable().unwrap_or_default().to_owned();
                self.discard_events();
                return Err(CycleError::StateUnreadable(reason));
            }
            self.applying = self.state.accepted_version();
            self.restore(reconciler).await;
        }
        if self.transport.is_none() {
            let transport = Transport::new(&self.settings, &self.state_dir).await?;
            tracing::info!("connected to the WFM");
            self.transport = Some(transport);
        }
        self.transport()?.refresh_trust().await?;
        self.report_capabilities().await?;
        self.collect_events().await?;
        self.deliver_statuses().await?;
        if self.in_polling_window() {
            self.poll(reconciler).await?;
        }
        if reconciler.pass_due() {
            // Retry failed pulls and collect garbage against the accepted state.
            let desired = self.accepted_documents().await;
            reconciler
                .apply_for(desired, crate::deploy::INSTALL_PATIENCE)
                .await;
        }
        self.collect_events().await?;
        self.deliver_statuses().await?;
        Ok(())
    }

    /// The accepted deployments whose YAML is held on disk.
    async fn accepted_documents(&self) -> Vec<DesiredDeployment> {
        let Some(accepted) = self.state.accepted() else {
            return Vec::new();
        };
        let mut desired = Vec::new();
        for (id, digest) in &accepted.deployments {
            // Both were valid when accepted; a record that no longer parses is skipped
            // like a document that is gone, and the next manifest is fetched whole.
            let (Ok(id), Ok(digest)) = (DeploymentId::parse(id), Digest::parse(digest)) else {
                continue;
            };
            if let Some(yaml) = self.state.document(&digest).await {
                desired.push(self.desired(&id, yaml));
            }
        }
        desired
    }

    /// While the accepted record cannot be read: the WFM deployments as the reconciler
    /// last applied them (its own records), so the device keeps serving what was
    /// installed without knowing, or accepting, any manifest.
    async fn installed_documents(&self) -> Vec<DesiredDeployment> {
        let dir = self.device.state_dir.join("deployments");
        let records = tokio::task::spawn_blocking(move || {
            crate::deploy::store::AppliedStore::open(dir).map(|store| store.load_all())
        })
        .await;
        let records = match records {
            Ok(Ok(records)) => records,
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot read the applied deployments");
                return Vec::new();
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot read the applied deployments");
                return Vec::new();
            }
        };
        records
            .into_iter()
            .filter_map(|record| {
                let id = DeploymentId::parse(record.source.strip_prefix(SOURCE_PREFIX)?).ok()?;
                Some(self.desired(&id, record.yaml.into_bytes()))
            })
            .collect()
    }

    /// Status-board changes while nothing is accepted: they would carry an
    /// `adoptedManifestVersion` we cannot vouch for. The states are reported once the
    /// accepted record reads again ([`Self::restore`] reports what differs).
    fn discard_events(&mut self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Applies the accepted desired state kept on disk, reporting only states that
    /// differ from what the WFM was last told.
    async fn restore(&mut self, reconciler: &mut Reconciler) {
        let Some(accepted) = self.state.accepted().cloned() else {
            let desired = self.installed_documents().await;
            tracing::warn!(
                deployments = desired.len(),
                "accepted state unreadable: serving the deployments as last applied"
            );
            reconciler.apply(desired).await;
            self.discard_events();
            return;
        };
        if accepted.manifest_version.is_none() {
            return;
        }
        let desired = self.accepted_documents().await;
        if desired.len() != accepted.deployments.len() {
            // Force a full fetch on the next poll.
            self.state.forget_etag();
        }
        tracing::info!(
            manifest_version = %accepted.manifest_version,
            deployments = desired.len(),
            "restoring the accepted desired state"
        );
        reconciler.apply(desired).await;
        // Transitional states of the restore are not news to the WFM; final ones are
        // reported only when they differ from the last report.
        self.discard_events();
        let snapshot = reconciler.status().snapshot();
        for status in snapshot.deployments {
            if let Some(report) = self.report_for(&status) {
                if let Err(err) = self.outbox.push(report).await {
                    tracing::error!(error = %err, "cannot queue a status report");
                }
            }
        }
    }

    fn desired(&self, id: &DeploymentId, yaml: Vec<u8>) -> DesiredDeployment {
        DesiredDeployment {
            source: format!("{SOURCE_PREFIX}{id}"),
            base_dir: self.state_dir.clone(),
            yaml,
            // The manifest's deploymentId; a YAML declaring another fails alone.
            expected_id: Some(id.clone()),
            refused: None,
        }
    }

    async fn save_reported(&self) -> Result<(), CycleError> {
        self.state
            .save_reported(self.reported.clone())
            .await
            .map_err(local)
    }

    async fn put_capabilities(&mut self, device: &str, doc: &Value) -> Result<u16, CycleError> {
        let url = self
            .transport()?
            .api_url(&format!("capabilities/{device}"))?;
        let body = Bytes::from(serde_json::to_vec(doc).map_err(local)?);
        let response = self
            .send(
                "capabilities",
                ::http::Method::PUT,
                &url,
                &[],
                Some(body),
                64 << 10,
            )
            .await?;
        match response.status {
            200 | 201 => Ok(response.status),
            _ => Err(refused(format!("PUT capabilities/{device}"), &response)),
        }
    }

    /// Sends one target's document; a child the WFM reports as lacking its gateway
    /// (problem type `gateway-not-found`, e.g. after a WFM reset) gets the parent
    /// reported again first.
    async fn offer_capabilities(
        &mut self,
        device: &str,
        doc: &Value,
        parent: &(String, Value),
    ) -> Result<(), CycleError> {
        match self.put_capabilities(device, doc).await {
            Ok(_) => Ok(()),
            Err(CycleError::Refused {
                class: ProblemClass::GatewayNotFound,
                ..
            }) if device != parent.0 => {
                tracing::warn!(device = %device, "WFM does not know the gateway; reporting it again");
                self.put_capabilities(&parent.0, &parent.1).await?;
                self.reported.insert(parent.0.clone(), parent.1.clone());
                self.put_capabilities(device, doc).await.map(|_| ())
            }
            Err(err) => Err(err),
        }
    }

    /// Sends the capabilities of every target, parent first; only what changed once
    /// this run has announced itself. Removed partitions are deleted.
    ///
    /// A target whose document the WFM refuses (a strict WFM's 422, a 404 of a router
    /// that cannot route hierarchical deviceIds, a 500) does not stop anything else:
    /// the refusal is logged and shown in `/status`, and the document is offered again
    /// with back-off, or at once when it changes. Only a refusal of who we are
    /// (authentication, authorisation) or an unreachable WFM ends the cycle.
    async fn report_capabilities(&mut self) -> Result<(), CycleError> {
        let docs = self.documents.clone();
        let parent = docs[0].clone();
        let now = Instant::now();
        for (device, doc) in &docs {
            if self.announced && self.reported.get(device) == Some(doc) {
                continue;
            }
            let waiting = self
                .refused_reports
                .get(device)
                .is_some_and(|r| &r.document == doc && now < r.next_attempt);
            if waiting {
                continue;
            }
            match self.offer_capabilities(device, doc, &parent).await {
                Ok(()) => {
                    if self.refused_reports.remove(device).is_some() {
                        tracing::info!(device = %device, "WFM accepted the capabilities it refused before");
                    }
                    self.reported.insert(device.clone(), doc.clone());
                    self.save_reported().await?;
                }
                Err(err @ CycleError::Refused { .. }) if !err.is_unauthorized() => {
                    self.refuse_report(device, doc, &err);
                }
                Err(err) => return Err(err),
            }
        }
        let current: BTreeSet<&String> = docs.iter().map(|(d, _)| d).collect();
        self.refused_reports.retain(|d, _| current.contains(d));
        let gone: Vec<String> = self
            .reported
            .keys()
            .filter(|d| !current.contains(d))
            .cloned()
            .collect();
        for device in gone {
            let url = self
                .transport()?
                .api_url(&format!("capabilities/{device}"))?;
            let response = self
                .send(
                    "capabilities",
                    ::http::Method::DELETE,
                    &url,
                    &[],
                    None,
                    64 << 10,
                )
                .await?;
            if !matches!(response.status, 200 | 204 | 404) {
                let err = refused(format!("DELETE capabilities/{device}"), &response);
                if err.is_unauthorized() {
                    return Err(err);
                }
                // Tried again next cycle; it stops nothing else.
                tracing::warn!(device = %device, error = %err, "cannot unregister a removed partition");
                continue;
            }
            tracing::info!(device = %device, "partition removed; unregistered it at the WFM");
            self.reported.remove(&device);
            self.save_reported().await?;
        }
        self.announced = true;
        Ok(())
    }

    fn refuse_report(&mut self, device: &str, doc: &Value, err: &CycleError) {
        let CycleError::Refused {
            status,
            problem_type,
            detail,
            retry_after,
            ..
        } = err
        else {
            return;
        };
        let failures = self
            .refused_reports
            .get(device)
            .filter(|r| &r.document == doc)
            .map_or(1, |r| r.failures + 1);
        let wait = exponential_backoff(self.settings.poll_interval, failures)
            .max(retry_after.unwrap_or_default());
        self.metrics.capabilities_refused(device);
        tracing::warn!(device = %device, status, problem_type = ?problem_type, detail = %detail,
            retry_in = ?wait, "WFM refused the capabilities of this target; everything else goes on");
        self.refused_reports.insert(
            device.to_owned(),
            RefusedReport {
                document: doc.clone(),
                status: *status,
                problem_type: problem_type.clone(),
                detail: detail.clone(),
                failures,
                next_attempt: Instant::now() + wait,
            },
        );
    }

    /// Turns status-board changes into queued reports.
    async fn collect_events(&mut self) -> Result<(), CycleError> {
        while let Ok(status) = self.events.try_recv() {
            if let Some(report) = self.report_for(&status) {
                self.outbox.push(report).await.map_err(local)?;
            }
        }
        Ok(())
    }

    /// The Margo status report for a board entry of a WFM deployment.
    fn report_for(&self, status: &DeploymentStatus) -> Option<StatusReport> {
        // Every WFM source is built from a manifest's `DeploymentId`.
        let id = DeploymentId::parse(status.source.strip_prefix(SOURCE_PREFIX)?).ok()?;
        let gateway = &self.identity.id;
        let name = status.name.clone().unwrap_or_else(|| id.to_string());
        let error_report = |e: &StatusError, own_source: &str| ErrorReport {
            code: e.code.clone(),
            // Reserved gateway codes come from the gateway itself.
            source: if matches!(e.code.as_str(), "101" | "102" | "103") {
                gateway.clone()
            } else {
                own_source.to_owned()
            },
            message: e.message.clone(),
        };
        let device_id = match self.device.mode() {
            GatewayMode::Opaque => Some(gateway.clone()),
            GatewayMode::SeeThru => {
                Some(status.device_id.clone().unwrap_or_else(|| gateway.clone()))
            }
        };
        Some(StatusReport {
            deployment_id: id,
            device_id,
            adopted_manifest_version: self.applying,
            status: StatusBody {
                state: state_name(status.state).into(),
                error: status.error.as_ref().map(|e| error_report(e, &name)),
            },
            components: status
                .components
                .iter()
                .map(|c| ComponentReport {
                    name: c.name.clone(),
                    state: state_name(c.state).into(),
                    error: c.error.as_ref().map(|e| error_report(e, &c.name)),
                })
                .collect(),
        })
    }

    /// Delivers queued reports in order; stops at the first one the WFM cannot take now.
    async fn deliver_statuses(&mut self) -> Result<(), CycleError> {
        for pending in self.outbox.pending().await.map_err(local)? {
            let report = &pending.report;
            let url = self
                .transport()?
                .api_url(&format!("deployments/{}/status", report.deployment_id))?;
            let mut body = serde_json::to_value(report).map_err(local)?;
            if self.settings.profile() == Profile::Rc2 {
                body["apiVersion"] = "deployment.margo.org/v1alpha1".into();
                body["kind"] = "DeploymentStatusManifest".into();
            }
            let bytes = Bytes::from(serde_json::to_vec(&body).map_err(local)?);
            let response = self
                .send(
                    "status",
                    ::http::Method::POST,
                    &url,
                    &[],
                    Some(bytes),
                    64 << 10,
                )
                .await?;
            match response.status {
                200 | 201 | 204 => self.outbox.done(&pending).await.map_err(local)?,
                _ => {
                    let err = refused(
                        format!("POST deployments/{}/status", report.deployment_id),
                        &response,
                    );
                    if err.is_unauthorized() {
                        return Err(err);
                    }
                    if let CycleError::Refused {
                        retryable: false, ..
                    } = &err
                    {
                        // The WFM will never take this one; keep the queue moving.
                        tracing::error!(error = %err, report = %body, "status report refused; dropping it");
                        self.outbox.done(&pending).await.map_err(local)?;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    async fn poll(&mut self, reconciler: &mut Reconciler) -> Result<(), CycleError> {
        let url = self.transport()?.api_url("deployments")?;
        let mut headers = vec![("accept", MANIFEST_MEDIA_TYPE.to_owned())];
        // The replay guard: without a readable accepted record, nothing is accepted.
        let Some(accepted) = self.state.accepted() else {
            return Err(CycleError::StateUnreadable(
                self.state.unreadable().unwrap_or_default().to_owned(),
            ));
        };
        let accepted_version = accepted.manifest_version;
        if let Some(etag) = &accepted.etag {
            headers.push(("if-none-match", etag.clone()));
        }
        let response = self
            .send(
                "state",
                ::http::Method::GET,
                &url,
                &headers,
                None,
                MAX_DOCUMENT,
            )
            .await
            .map_err(|e| oversize_is_rejected(e, || "the state manifest".into()))?;
        match response.status {
            304 => return Ok(()),
            200 => {}
            _ => return Err(refused("GET deployments".into(), &response)),
        }
        let content_type = response.header("content-type").unwrap_or_default();
        if !content_type.starts_with(MANIFEST_MEDIA_TYPE) {
            return Err(CycleError::Rejected(format!(
                "state manifest has Content-Type {content_type:?}, expected {MANIFEST_MEDIA_TYPE}"
            )));
        }
        let manifest = StateManifest::parse(&response.body)
            .map_err(|e| CycleError::Rejected(e.to_string()))?;
        if manifest.version <= accepted_version {
            return Err(CycleError::Rejected(format!(
                "manifestVersion {} is not greater than the accepted {accepted_version} (rollback or replay)",
                manifest.version
            )));
        }
        let documents = self.fetch_documents(&manifest).await?;
        let etag = response.header("etag").map(str::to_owned);
        tracing::info!(
            manifest_version = %manifest.version,
            deployments = documents.len(),
            "applying desired state"
        );
        self.applying = manifest.version;
        let desired = documents
            .iter()
            .map(|(id, (_, yaml))| self.desired(id, yaml.clone()))
            .collect();
        reconciler
            .apply_for(desired, crate::deploy::INSTALL_PATIENCE)
            .await;
        self.collect_events().await?;
        self.state
            .accept(Accepted {
                manifest_version: manifest.version,
                etag,
                deployments: documents
                    .iter()
                    .map(|(id, (d, _))| (id.to_string(), d.to_string()))
                    .collect(),
            })
            .await
            .map_err(local)?;
        Ok(())
    }

    /// Every deployment YAML of `manifest`, verified; from the local store when held,
    /// otherwise from the bundle (several missing) or one by one. All or nothing.
    async fn fetch_documents(
        &mut self,
        manifest: &StateManifest,
    ) -> Result<BTreeMap<DeploymentId, (Digest, Vec<u8>)>, CycleError> {
        let mut documents = BTreeMap::new();
        let mut missing = Vec::new();
        for d in &manifest.deployments {
            match self.state.document(&d.digest).await {
                Some(yaml) => {
                    documents.insert(d.deployment_id.clone(), (d.digest.clone(), yaml));
                }
                None => missing.push(d.clone()),
            }
        }
        if missing.len() > 1 {
            if let Some(bundle) = &manifest.bundle {
                let url = self.transport()?.manifest_url(&bundle.url)?;
                let max = self.settings.max_bundle;
                let response = self
                    .send(
                        "bundle",
                        ::http::Method::GET,
                        &url,
                        &[("accept", BUNDLE_MEDIA_TYPE.to_owned())],
                        None,
                        max,
                    )
                    .await
                    .map_err(|e| oversize_is_rejected(e, || format!("bundle {}", bundle.digest)))?;
                if response.status != 200 {
                    return Err(refused(format!("GET bundle {}", bundle.digest), &response));
                }
                let content_type = response.header("content-type").unwrap_or_default();
                if !content_type.starts_with(BUNDLE_MEDIA_TYPE) {
                    return Err(CycleError::Rejected(format!(
                        "bundle has Content-Type {content_type:?}, expected {BUNDLE_MEDIA_TYPE}"
                    )));
                }
                if !bundle.digest.matches(&response.body) {
                    return Err(CycleError::Rejected(format!(
                        "bundle bytes hash to {}, the manifest says {}",
                        Digest::of(&response.body),
                        bundle.digest
                    )));
                }
                let members = bundle::read_members(&response.body, max)
                    .map_err(|e| CycleError::Rejected(e.to_string()))?;
                let named: BTreeSet<&Digest> =
                    manifest.deployments.iter().map(|d| &d.digest).collect();
                let held: BTreeSet<&Digest> = members.keys().collect();
                if named != held {
                    return Err(CycleError::Rejected(format!(
                        "bundle holds {} YAMLs that do not match the {} the manifest lists",
                        held.len(),
                        named.len()
                    )));
                }
                for d in &missing {
                    let yaml = members[&d.digest].clone();
                    documents.insert(d.deployment_id.clone(), (d.digest.clone(), yaml));
                }
                missing.clear();
            }
        }
        for d in &missing {
            let url = self.transport()?.manifest_url(&d.url)?;
            let response = self
                .send(
                    "deployment",
                    ::http::Method::GET,
                    &url,
                    &[],
                    None,
                    MAX_DOCUMENT,
                )
                .await
                .map_err(|e| {
                    oversize_is_rejected(e, || format!("deployment {} YAML", d.deployment_id))
                })?;
            if response.status != 200 {
                return Err(refused(
                    format!("GET deployment {} {}", d.deployment_id, d.digest),
                    &response,
                ));
            }
            if !d.digest.matches(&response.body) {
                return Err(CycleError::Rejected(format!(
                    "deployment {} YAML hashes to {}, the manifest says {}",
                    d.deployment_id,
                    Digest::of(&response.body),
                    d.digest
                )));
            }
            documents.insert(
                d.deployment_id.clone(),
                (d.digest.clone(), response.body.to_vec()),
            );
        }
        // A YAML that is not a valid ApplicationDeployment (or declares another id
        // than the manifest lists it under) fails that deployment alone, in the
        // reconciler; the digest vouched for its bytes, so it is kept like the others
        // and not fetched again until the manifest names another digest.
        for (digest, yaml) in documents.values() {
            self.state
                .store_document(digest, yaml)
                .await
                .map_err(local)?;
        }
        Ok(documents)
    }

    pub fn pending_reports(&self) -> usize {
        self.outbox.len()
    }
}

fn state_name(state: crate::deploy::DeploymentState) -> &'static str {
    use crate::deploy::DeploymentState::*;
    match state {
        Pending => "pending",
        Installing => "installing",
        Installed => "installed",
        Failed => "failed",
        Removing => "removing",
        Removed => "removed",
    }
}
