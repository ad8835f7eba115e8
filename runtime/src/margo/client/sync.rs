//! The sync loop: serve what is on disk, then run rounds against the WFM until
//! shutdown, waking early for finished installs and reloaded configurations.

use super::{CycleError, Reconfigured, WfmClient};
use crate::deploy::Reconciler;
use crate::margo::capabilities::{self, DeviceIdentity};
use crate::margo::device::DeviceProfile;
use crate::margo::transport::Transport;

impl WfmClient {
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
}
