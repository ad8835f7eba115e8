//! The WFM client loop: report capabilities, deliver status reports, poll the desired
//! state, verify every byte by digest, hand the accepted deployments to the reconciler
//! (the same one local mode uses), and remember what was accepted.
//!
//! The client's state stays here so that its fields are private to this module and its
//! jobs, which each add an `impl WfmClient` block of their own.
//!
//! Split by job: `sync` (the loop and its rounds), `schedule` (back-off, downtime and
//! polling windows), `connection` (opening the client and sending each request),
//! `announce` (the capabilities report), `status` (status reports into the outbox and
//! to the WFM), `accept` (polling and accepting a manifest), `fetch` (bundle and
//! deployment YAMLs, verified by digest), `restore` (serving the state on disk),
//! `publish` (the exchange in `/status`) and `error` (why a cycle stopped).

mod accept;
mod announce;
mod connection;
mod error;
mod fetch;
mod publish;
mod restore;
mod schedule;
mod status;
mod sync;

pub use error::CycleError;

use super::capabilities::DeviceIdentity;
use super::device::DeviceProfile;
use super::outbox::Outbox;
use super::settings::WfmSettings;
use super::state::SyncState;
use super::transport::Transport;
use super::types::ManifestVersion;
use crate::deploy::status::DeploymentStatus;
use crate::telemetry::WfmMetrics;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

/// Largest manifest or single deployment YAML accepted.
const MAX_DOCUMENT: u64 = 1 << 20;
/// Source prefix of WFM deployments in the status board.
pub const SOURCE_PREFIX: &str = "wfm:";

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
