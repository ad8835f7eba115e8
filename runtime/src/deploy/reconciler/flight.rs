//! Installs in flight: starting them, taking their events, and committing the
//! finished ones in source order as far as [`plan::committable`] allows.

use super::activate::{activate, Applied, Host};
use super::install::{self, Event, Job, Outcome};
use super::plan::{self, Footprint, Stage};
use super::{DesiredDeployment, Reconciler};
use crate::deploy::model::Deployment;
use crate::deploy::status::DeploymentState;
use crate::deploy::store::Pin;
use crate::telemetry::ReconcileOutcome;
use std::time::Instant;

/// An install started and not committed yet.
pub(super) struct InFlight {
    install: u64,
    item: DesiredDeployment,
    deployment: Deployment,
    pub(super) yaml_digest: String,
    footprint: Footprint,
    restore: bool,
    /// `pending` was reported for this install.
    announced: bool,
    outcome: Option<Outcome>,
    _running: install::Running,
}

impl Reconciler {
    pub(super) fn start(
        &mut self,
        item: DesiredDeployment,
        deployment: Deployment,
        yaml_digest: String,
        restore: bool,
    ) {
        let install = self.next_install;
        self.next_install += 1;
        let running = self.applied.get(&deployment.id);
        let pins: Option<Vec<Pin>> = running
            .filter(|a| a.yaml_digest == yaml_digest)
            .map(|a| a.pins.clone())
            .or_else(|| {
                self.records
                    .pins(&deployment.id, &yaml_digest)
                    .map(<[Pin]>::to_vec)
            });
        let footprint = Footprint::of(&deployment, running.map_or(0, |a| a.memory));
        // A document seen for the first time shows as pending while it installs;
        // others keep their state until the install knows there is something new.
        let announced = self.status.get(&item.source).is_none();
        if announced {
            self.reporter
                .state(&item.source, &deployment, DeploymentState::Pending, None);
        }
        let job = Job {
            install,
            item: item.clone(),
            deployment: deployment.clone(),
            pins,
            restore,
            running: running.map(|a| a.fingerprint.clone()),
        };
        let handle = self.installer.start(job);
        self.in_flight.insert(
            item.source.clone(),
            InFlight {
                install,
                item,
                deployment,
                yaml_digest,
                footprint,
                restore,
                announced,
                outcome: None,
                _running: handle,
            },
        );
    }

    /// Takes install events and commits what may commit, until nothing is in flight
    /// or `deadline` (never, with `None`) passes.
    pub(super) async fn settle(&mut self, deadline: Option<Instant>) {
        loop {
            while let Ok((install, event)) = self.events.try_recv() {
                self.on_event(install, event);
            }
            self.commit_ready();
            if self.in_flight.is_empty() {
                return;
            }
            let next = match deadline {
                None => self.events.recv().await,
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline.into(), self.events.recv()).await {
                        Ok(next) => next,
                        Err(_) => return,
                    }
                }
            };
            match next {
                Some((install, event)) => self.on_event(install, event),
                // The installer holds a sender, so this does not happen; do not spin.
                None => return,
            }
        }
    }

    fn on_event(&mut self, install: u64, event: Event) {
        // Events of abandoned installs find nothing.
        let Some((source, f)) = self
            .in_flight
            .iter_mut()
            .find(|(_, f)| f.install == install)
        else {
            return;
        };
        match event {
            Event::Installing => {
                if !f.announced {
                    self.reporter
                        .state(source, &f.deployment, DeploymentState::Pending, None);
                    f.announced = true;
                }
                self.reporter
                    .state(source, &f.deployment, DeploymentState::Installing, None);
            }
            Event::Done(outcome) => f.outcome = Some(outcome),
        }
    }

    fn commit_ready(&mut self) {
        loop {
            let entries: Vec<(&String, &Footprint, Stage)> = self
                .order
                .iter()
                .filter_map(|s| {
                    let f = self.in_flight.get(s)?;
                    let stage = match f.outcome {
                        Some(_) => Stage::Ready,
                        None => Stage::Installing,
                    };
                    Some((s, &f.footprint, stage))
                })
                .collect();
            let stages: Vec<(&Footprint, Stage)> =
                entries.iter().map(|(_, f, s)| (*f, *s)).collect();
            let ready: Vec<String> = plan::committable(&stages)
                .into_iter()
                .map(|i| entries[i].0.clone())
                .collect();
            if ready.is_empty() {
                return;
            }
            for source in ready {
                if let Some(f) = self.in_flight.remove(&source) {
                    self.commit(f);
                }
            }
        }
    }

    fn commit(&mut self, f: InFlight) {
        let InFlight {
            item,
            deployment,
            yaml_digest,
            restore,
            outcome,
            ..
        } = f;
        let source = item.source.clone();
        match outcome {
            None => {}
            Some(Outcome::Failed {
                failure,
                retry,
                waiting_for,
            }) => {
                if waiting_for.is_empty() {
                    self.waiting_for.remove(&source);
                } else {
                    self.waiting_for.insert(source.clone(), waiting_for);
                }
                if retry {
                    self.schedule_retry(&source, &yaml_digest);
                }
                if self.misplaced(&deployment.id) {
                    self.evict(&deployment.id);
                }
                self.fail(&item, &deployment, failure);
            }
            Some(Outcome::Unchanged { fingerprint }) => {
                self.waiting_for.remove(&source);
                let current = self
                    .applied
                    .get_mut(&deployment.id)
                    .filter(|c| c.fingerprint == fingerprint);
                let Some(current) = current else {
                    // What runs changed while it resolved: install it after all.
                    return self.start(item, deployment, yaml_digest, restore);
                };
                self.retries.remove(&source);
                if current.source != source {
                    self.status.remove(&current.source);
                    current.source = source;
                    self.set_installed(&deployment.id);
                } else if self
                    .status
                    .get(&source)
                    .is_some_and(|d| d.state != DeploymentState::Installed)
                {
                    // Back to what runs after a failed update: report it installed again.
                    self.set_installed(&deployment.id);
                }
            }
            Some(Outcome::Built(built)) => {
                self.waiting_for.remove(&source);
                self.retries.remove(&source);
                let host = Host {
                    device_id: &self.device_id,
                    partitions: &self.partitions,
                    capabilities: &self.capabilities,
                    applied: &self.applied,
                    linker: &self.linker,
                    metrics: &self.metrics,
                };
                let prepared = match activate(&host, &deployment, &built) {
                    Ok(prepared) => prepared,
                    Err(failure) => {
                        if self.misplaced(&deployment.id) {
                            self.evict(&deployment.id);
                        }
                        return self.fail(&item, &deployment, failure);
                    }
                };
                let timers = prepared
                    .workloads
                    .iter()
                    .filter_map(|(spec, w)| {
                        let every = spec.extensions.timer.as_ref()?.every;
                        Some(crate::trigger::start_timer(w.clone(), every))
                    })
                    .collect();
                let previous = self.applied.insert(
                    deployment.id.clone(),
                    Applied {
                        source: source.clone(),
                        fingerprint: built.fingerprint,
                        deployment: deployment.clone(),
                        partition: prepared.partition,
                        memory: prepared.memory,
                        workloads: prepared.workloads,
                        _timers: timers,
                        files: prepared.files,
                        pins: built.pins.clone(),
                        yaml_digest: yaml_digest.clone(),
                    },
                );
                if let Some(previous) = previous {
                    if previous.source != source {
                        self.status.remove(&previous.source);
                    }
                }
                // Switch traffic now: the new revision is compiled and pre-instantiated.
                self.publish_routes();
                self.records
                    .save(&item, &deployment.id, &yaml_digest, &built.pins);
                self.hold_running();
                self.set_installed(&deployment.id);
                self.metrics.reconcile.outcome(ReconcileOutcome::Installed);
                tracing::info!(deployment = %deployment.name, "deployment installed");
            }
        }
    }
}
