//! Opening the client (its stores, then the transport, which may not be ready yet) and
//! sending each request, so that every exchange with the WFM is timed and traced alike.

use super::{CycleError, WfmClient};
use crate::deploy::status::DeploymentStatus;
use crate::margo::capabilities::{self, DeviceIdentity};
use crate::margo::device::DeviceProfile;
use crate::margo::http::Response;
use crate::margo::outbox::Outbox;
use crate::margo::settings::WfmSettings;
use crate::margo::state::SyncState;
use crate::margo::transport::{Transport, TransportError};
use crate::telemetry::WfmMetrics;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

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
    pub(super) async fn send(
        &self,
        kind: &'static str,
        method: ::http::Method,
        url: &url::Url,
        headers: &[(&str, String)],
        body: Option<Bytes>,
        max_body: u64,
    ) -> Result<Response, TransportError> {
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

    pub(super) fn transport(&self) -> Result<&Transport, CycleError> {
        self.transport.as_ref().ok_or_else(|| {
            CycleError::Local("the transport is not ready (not onboarded yet)".into())
        })
    }
}
