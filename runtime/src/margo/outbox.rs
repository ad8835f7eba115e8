//! Status reports waiting for the WFM, on disk so that nothing is lost while it is
//! unreachable or across a crash. Reports are delivered in the order they were made;
//! a report identical to the last one made for the same deployment is not queued
//! again, so a restart does not re-report a state the WFM already has.

use super::types::StatusReport;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("status outbox {path}: {message}")]
pub struct OutboxError {
    path: PathBuf,
    message: String,
}

pub struct Outbox {
    dir: PathBuf,
    next: u64,
    /// The last report made (queued or delivered) per deployment id.
    last: BTreeMap<String, StatusReport>,
    last_file: PathBuf,
}

/// One queued report.
#[derive(Debug, Clone)]
pub struct Pending {
    pub path: PathBuf,
    pub report: StatusReport,
}

impl Outbox {
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        let err = |message: String| OutboxError {
            path: dir.to_owned(),
            message,
        };
        std::fs::create_dir_all(dir.join("queue")).map_err(|e| err(e.to_string()))?;
        let last_file = dir.join("last-reported.json");
        let last = match std::fs::read(&last_file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| err(format!("last-reported.json: {e}")))?,
            Err(_) => BTreeMap::new(),
        };
        let mut outbox = Self {
            dir: dir.to_owned(),
            next: 0,
            last,
            last_file,
        };
        outbox.next = outbox
            .pending()?
            .last()
            .and_then(|p| p.path.file_stem()?.to_str()?.parse::<u64>().ok())
            .map_or(0, |n| n + 1);
        Ok(outbox)
    }

    fn queue_dir(&self) -> PathBuf {
        self.dir.join("queue")
    }

    /// Queues `report` unless it repeats the last report for its deployment.
    pub fn push(&mut self, report: StatusReport) -> Result<bool, OutboxError> {
        if self.last.get(&report.deployment_id) == Some(&report) {
            return Ok(false);
        }
        let path = self.queue_dir().join(format!("{:020}.json", self.next));
        let bytes = serde_json::to_vec(&report).map_err(|e| self.error(e.to_string()))?;
        crate::fsutil::write_atomic(&path, &bytes).map_err(|e| self.error(e.to_string()))?;
        self.next += 1;
        self.last.insert(report.deployment_id.clone(), report);
        self.save_last()?;
        Ok(true)
    }

    /// Whether `report` is what the deployment last reported.
    pub fn is_last(&self, report: &StatusReport) -> bool {
        self.last.get(&report.deployment_id) == Some(report)
    }

    fn save_last(&self) -> Result<(), OutboxError> {
        let bytes = serde_json::to_vec(&self.last).map_err(|e| self.error(e.to_string()))?;
        crate::fsutil::write_atomic(&self.last_file, &bytes).map_err(|e| self.error(e.to_string()))
    }

    fn error(&self, message: String) -> OutboxError {
        OutboxError {
            path: self.dir.clone(),
            message,
        }
    }

    /// Queued reports, oldest first.
    pub fn pending(&self) -> Result<Vec<Pending>, OutboxError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.queue_dir())
            .map_err(|e| self.error(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        let mut pending = Vec::new();
        for path in paths {
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(report) => pending.push(Pending { path, report }),
                None => {
                    // Only a torn write could leave this; the rename makes that
                    // impossible, so this is damage from outside: keep it aside.
                    tracing::error!(path = %path.display(), "unreadable status report moved aside");
                    let _ = std::fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        Ok(pending)
    }

    /// Removes a delivered (or permanently refused) report.
    pub fn done(&self, pending: &Pending) -> Result<(), OutboxError> {
        std::fs::remove_file(&pending.path).map_err(|e| self.error(e.to_string()))
    }

    pub fn len(&self) -> usize {
        self.pending().map(|p| p.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::margo::types::{StatusBody, StatusReport};

    fn report(id: &str, state: &str) -> StatusReport {
        StatusReport {
            deployment_id: id.into(),
            device_id: None,
            adopted_manifest_version: 1,
            status: StatusBody {
                state: state.into(),
                error: None,
            },
            components: vec![],
        }
    }

    #[test]
    fn survives_reopen_in_order_without_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path()).unwrap();
        assert!(outbox.push(report("a", "pending")).unwrap());
        assert!(outbox.push(report("a", "installing")).unwrap());
        assert!(!outbox.push(report("a", "installing")).unwrap());
        assert!(outbox.push(report("b", "installed")).unwrap());
        drop(outbox);
        let mut outbox = Outbox::open(dir.path()).unwrap();
        let pending = outbox.pending().unwrap();
        let states: Vec<_> = pending
            .iter()
            .map(|p| {
                (
                    p.report.deployment_id.as_str(),
                    p.report.status.state.as_str(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [("a", "pending"), ("a", "installing"), ("b", "installed")]
        );
        outbox.done(&pending[0]).unwrap();
        assert!(
            !outbox.push(report("b", "installed")).unwrap(),
            "repeat after restart"
        );
        assert!(outbox.push(report("a", "installed")).unwrap());
        let last = outbox.pending().unwrap().last().unwrap().report.clone();
        assert_eq!(last.status.state, "installed");
        assert_eq!(outbox.len(), 3);
    }
}
