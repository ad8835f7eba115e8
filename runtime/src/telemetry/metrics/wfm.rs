//! The Margo WFM client's families: round trips, the status outbox, refused
//! capabilities reports and damaged state records.

use super::timing::{slow_histogram, HistogramFamily, KindOutcomeLabels};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct DeviceLabels {
    device: String,
}

/// The Margo WFM client: round trips, the status outbox, refused capabilities.
///
/// Wiring (in `margo`): after each WFM request,
/// `wfm.request("state" | "capabilities" | "status" | "bundle" | "deployment", outcome, elapsed)`
/// with `outcome` one of `"ok"`, `"not-modified"`, `"rejected"` (a 4xx answer),
/// `"error"` (5xx, transport, timeout); `wfm.outbox_depth(n)` whenever the outbox
/// changes; `wfm.capabilities_refused(device_id)` when the WFM refuses a device's
/// capabilities report; `wfm.state_damaged(record)` when a state record of the client
/// is found damaged and `wfm.accepted_state_unreadable(..)` while the accepted record
/// cannot be read. Kinds, outcomes and records are `&'static str` so the label values
/// stay a fixed, small set.
#[derive(Debug, Clone)]
pub struct WfmMetrics {
    pub(super) requests: HistogramFamily<KindOutcomeLabels>,
    pub(super) outbox: Gauge,
    pub(super) refused: Family<DeviceLabels, Counter>,
    pub(super) damaged: Family<RecordLabels, Counter>,
    pub(super) unreadable: Gauge,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct RecordLabels {
    record: &'static str,
}

impl Default for WfmMetrics {
    fn default() -> Self {
        Self {
            requests: Family::new_with_constructor(slow_histogram),
            outbox: Gauge::default(),
            refused: Family::default(),
            damaged: Family::default(),
            unreadable: Gauge::default(),
        }
    }
}

impl WfmMetrics {
    /// One request to the WFM of `kind` that ended with `outcome` after `elapsed`.
    pub fn request(&self, kind: &'static str, outcome: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&KindOutcomeLabels { kind, outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// Status reports waiting in the durable outbox.
    pub fn outbox_depth(&self, n: usize) {
        self.outbox.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A state record of the WFM client (`accepted`, `outbox-entry`, `last-reported`,
    /// `capabilities-reported`) was found unreadable or damaged.
    pub fn state_damaged(&self, record: &'static str) {
        self.damaged.get_or_create(&RecordLabels { record }).inc();
    }

    /// How many times `record` was found damaged.
    pub fn damaged(&self, record: &'static str) -> u64 {
        self.damaged.get_or_create(&RecordLabels { record }).get()
    }

    /// Whether the accepted-state record (the replay guard) cannot be read now.
    pub fn accepted_state_unreadable(&self, unreadable: bool) {
        self.unreadable.set(i64::from(unreadable));
    }

    /// The WFM refused the capabilities report of `device` (a device or partition id).
    pub fn capabilities_refused(&self, device: &str) {
        self.refused
            .get_or_create(&DeviceLabels {
                device: device.to_owned(),
            })
            .inc();
    }
}
