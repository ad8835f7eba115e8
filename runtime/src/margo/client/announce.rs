//! The capabilities report: every target's document offered to the WFM, refusals kept
//! per target and offered again with back-off, removed partitions unregistered.

use super::error::{local, refused};
use super::schedule::exponential_backoff;
use super::{CycleError, RefusedReport, WfmClient};
use crate::margo::types::ProblemClass;
use bytes::Bytes;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Instant;

impl WfmClient {
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
    pub(super) async fn report_capabilities(&mut self) -> Result<(), CycleError> {
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
}
