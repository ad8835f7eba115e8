//! The exchange as `/status` shows it: connection, last error and sync, accepted
//! version, outbox depth, and each target's capabilities as accepted, pending or refused.

use super::{CycleError, WfmClient};
use crate::deploy::status::{CapabilityReport, WfmSync};
use crate::deploy::Reconciler;
use crate::margo::settings::Profile;
use std::time::{Instant, SystemTime};

impl WfmClient {
    /// Shows the state of the exchange in `/status`.
    pub(super) fn publish(&mut self, reconciler: &Reconciler, error: Option<&CycleError>) {
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
}
