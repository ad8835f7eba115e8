//! The applied deployments kept on disk (`state-dir/deployments`): written after each
//! install, dropped when a deployment stops, and read at start-up to restore what ran.

use super::DesiredDeployment;
use crate::deploy::model::Deployment;
use crate::deploy::store::{document_digest, AppliedRecord, AppliedStore, Pin};
use std::collections::BTreeMap;
use std::time::SystemTime;

#[derive(Default)]
pub struct Records {
    /// `None` keeps nothing (embedders and benchmarks without a state directory).
    store: Option<AppliedStore>,
    /// The records as last written (or read at start-up), by deployment id.
    persisted: BTreeMap<String, AppliedRecord>,
}

impl Records {
    pub fn open(store: AppliedStore) -> Self {
        Self {
            store: Some(store),
            persisted: BTreeMap::new(),
        }
    }

    /// Reads every record on disk (damaged ones are dropped by the store).
    pub fn load(&mut self) {
        if let Some(store) = &self.store {
            for record in store.load_all() {
                self.persisted.insert(record.id.clone(), record);
            }
        }
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
    pub fn pins(&self, id: &str, yaml_digest: &str) -> Option<&[Pin]> {
        self.persisted
            .get(id)
            .filter(|r| r.yaml_digest == yaml_digest)
            .map(|r| r.pins.as_slice())
    }

    pub fn all_pins(&self) -> impl Iterator<Item = &Pin> {
        self.persisted.values().flat_map(|r| r.pins.iter())
    }

    /// Writes the record of an installed deployment (its document and pins).
    pub fn save(&mut self, item: &DesiredDeployment, id: &str, yaml_digest: &str, pins: &[Pin]) {
        let Some(store) = &self.store else {
            return;
        };
        let Ok(yaml) = String::from_utf8(item.yaml.clone()) else {
            return;
        };
        let record = AppliedRecord {
            id: id.to_owned(),
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
        match store.save(&record) {
            Ok(()) => {
                self.persisted.insert(id.to_owned(), record);
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot record the applied deployment; a restart re-applies it from its document")
            }
        }
    }

    pub fn remove(&mut self, id: &str) {
        let Some(store) = &self.store else {
            return;
        };
        if !self.persisted.contains_key(id) {
            return;
        }
        match store.remove(id) {
            Ok(()) => {
                self.persisted.remove(id);
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot remove an applied-deployment record")
            }
        }
    }

    /// Drops the records of deployments that no longer run.
    pub fn sync(&mut self, runs: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
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
