//! Status delivery: status-board changes of WFM deployments become Margo status reports,
//! queued in the durable outbox and delivered in order.

use super::error::{local, refused};
use super::{CycleError, WfmClient, SOURCE_PREFIX};
use crate::deploy::status::{DeploymentStatus, StatusError};
use crate::margo::device::GatewayMode;
use crate::margo::settings::Profile;
use crate::margo::types::{ComponentReport, DeploymentId, ErrorReport, StatusBody, StatusReport};
use bytes::Bytes;

impl WfmClient {
    /// Turns status-board changes into queued reports.
    pub(super) async fn collect_events(&mut self) -> Result<(), CycleError> {
        while let Ok(status) = self.events.try_recv() {
            if let Some(report) = self.report_for(&status) {
                self.outbox.push(report).await.map_err(local)?;
            }
        }
        Ok(())
    }

    /// The Margo status report for a board entry of a WFM deployment.
    pub(super) fn report_for(&self, status: &DeploymentStatus) -> Option<StatusReport> {
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
    pub(super) async fn deliver_statuses(&mut self) -> Result<(), CycleError> {
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
