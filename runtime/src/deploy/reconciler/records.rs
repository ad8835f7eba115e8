//! The applied deployments kept on disk (`state-dir/deployments`): written after each
//! install, dropped when a deployment stops, and read at start-up to restore what ran.
//!
//! Every write fsyncs, so none runs on the reconciler's async worker: a writer thread
//! applies them in the order they were made, and [`Records::flush`] (awaited at the end
//! of each pass) waits until they are on disk. The queue holds at most one pass's
//! changes, one per deployment.

use super::DesiredDeployment;
use crate::deploy::model::Deployment;
use crate::deploy::store::{document_digest, AppliedRecord, AppliedStore, Pin};
use crate::types::DeploymentId;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::SystemTime;

#[derive(Default)]
pub struct Records {
    /// `None` keeps nothing (embedders and benchmarks without a state directory).
    store: Option<(AppliedStore, Writer)>,
    /// The records as last written (or read at start-up), by deployment id.
    persisted: BTreeMap<DeploymentId, AppliedRecord>,
}

enum Write {
    Save(Box<AppliedRecord>),
    Remove(DeploymentId),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The writer thread's queue; the thread ends when this is dropped.
struct Writer(mpsc::Sender<Write>);

impl Writer {
    fn start(store: AppliedStore) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Write>();
        std::thread::Builder::new()
            .name("wasmgate-records".into())
            .spawn(move || {
                for write in rx {
                    match write {
                        Write::Save(record) => {
                            if let Err(err) = store.save(&record) {
                                tracing::error!(deployment = %record.id, error = %err, "cannot record the applied deployment; a restart re-applies it from its document");
                            }
                        }
                        Write::Remove(id) => {
                            if let Err(err) = store.remove(&id) {
                                tracing::error!(deployment = %id, error = %err, "cannot remove an applied-deployment record");
                            }
                        }
                        Write::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(Self(tx))
    }

    fn send(&self, write: Write) {
        if self.0.send(write).is_err() {
            tracing::error!(
                "the applied-deployment record writer has stopped; records are not kept"
            );
        }
    }
}

impl Records {
    pub fn open(store: AppliedStore) -> std::io::Result<Self> {
        let writer = Writer::start(store.clone())?;
        Ok(Self {
            store: Some((store, writer)),
            persisted: BTreeMap::new(),
        })
    }

    /// Reads every record on disk (damaged ones are dropped by the store), on a
    /// blocking thread.
    pub async fn load(&mut self) {
        let Some((store, _)) = &self.store else {
            return;
        };
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.load_all()).await {
            Ok(records) => {
                for record in records {
                    self.persisted.insert(record.id.clone(), record);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot read the applied-deployment records")
            }
        }
    }

    /// Waits until every write made so far is on disk (or has failed, logged).
    pub async fn flush(&self) {
        let Some((_, writer)) = &self.store else {
            return;
        };
        let (done, flushed) = tokio::sync::oneshot::channel();
        writer.send(Write::Flush(done));
        let _ = flushed.await;
    }

    /// Records whose source now holds another document of the same deployment (or one
    /// that no longer parses): they are brought back first, so that a new version
    /// that fails leaves the old one serving, as it would have without the restart.
    pub fn stale(&self, desired: &[DesiredDeployment]) -> Vec<AppliedRecord> {
        self.persisted
            .values()
            .filter(|record| {
                let Some(item) = desired.iter().find(|d| d.source == record.source) else {
                    return false;
                };
                document_digest(&item.yaml) != record.yaml_digest
                    && !Deployment::from_yaml(&item.yaml).is_ok_and(|d| d.id != record.id)
            })
            .cloned()
            .collect()
    }

    /// The pins recorded for `id` when its document is still `yaml_digest`.
    pub fn pins(&self, id: &DeploymentId, yaml_digest: &str) -> Option<&[Pin]> {
        self.persisted
            .get(id)
            .filter(|r| r.yaml_digest == yaml_digest)
            .map(|r| r.pins.as_slice())
    }

    pub fn all_pins(&self) -> impl Iterator<Item = &Pin> {
        self.persisted.values().flat_map(|r| r.pins.iter())
    }

    /// Writes the record of an installed deployment (its document and pins).
    pub fn save(
        &mut self,
        item: &DesiredDeployment,
        id: &DeploymentId,
        yaml_digest: &str,
        pins: &[Pin],
    ) {
        let Some((_, writer)) = &self.store else {
            return;
        };
        let Ok(yaml) = String::from_utf8(item.yaml.clone()) else {
            return;
        };
        let record = AppliedRecord {
            id: id.clone(),
            source: item.source.clone(),
            base_dir: item.base_dir.clone(),
            yaml,
            yaml_digest: yaml_digest.to_owned(),
            pins: pins.to_vec(),
            applied_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        };
        writer.send(Write::Save(Box::new(record.clone())));
        self.persisted.insert(id.clone(), record);
    }

    pub fn remove(&mut self, id: &DeploymentId) {
        let Some((_, writer)) = &self.store else {
            return;
        };
        if self.persisted.remove(id).is_some() {
            writer.send(Write::Remove(id.clone()));
        }
    }

    /// Drops the records of deployments that no longer run.
    pub fn sync(&mut self, runs: impl Fn(&DeploymentId) -> bool) {
        let gone: Vec<DeploymentId> = self
            .persisted
            .keys()
            .filter(|id| !runs(id))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }
}
