//! Status reports waiting for the WFM, on disk so that nothing is lost while it is
//! unreachable or across a crash. Reports are delivered in the order they were made;
//! a report identical to the last one made for the same deployment is not queued
//! again, so a restart does not re-report a state the WFM already has.
//!
//! Each report is one [`StateDir`] record `queue/<20-digit sequence>`; the last report
//! per deployment is the record `last-reported`. Every disk access runs on a blocking
//! thread, one at a time in the order the client awaits them. A queue entry that
//! cannot be read is moved aside (`queue/<seq>.corrupt-<unix seconds>`), logged and
//! counted, and the others are delivered; a damaged `last-reported` costs at most a
//! repeated report.

use super::state::{load_advisory, quarantine};
use super::types::{DeploymentId, StatusReport};
use crate::fsutil::{StateDir, StateError};
use crate::telemetry::WfmMetrics;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use crate::fsutil::StateError as OutboxError;

const QUEUE: &str = "queue";
const LAST: &str = "last-reported";
/// Width of the zero-padded sequence number: the sorted keys are the delivery order.
const SEQ_DIGITS: usize = 20;

pub struct Outbox {
    store: StateDir,
    next: u64,
    /// The last report made (queued or delivered) per deployment id.
    last: BTreeMap<DeploymentId, StatusReport>,
    /// Queued reports, kept in memory so that `/status` and metrics never read the disk.
    depth: usize,
    /// Entries that could not be read nor moved aside: logged and counted once each.
    stuck: BTreeSet<String>,
    metrics: WfmMetrics,
}

/// One queued report.
#[derive(Debug, Clone)]
pub struct Pending {
    pub key: String,
    pub report: StatusReport,
}

fn queue_key(seq: u64) -> String {
    format!("{QUEUE}/{seq:0width$}", width = SEQ_DIGITS)
}

/// The sequence number of a queue record key; `None` for anything else in the folder
/// (moved-aside entries, files of earlier versions).
fn sequence(key: &str) -> Option<u64> {
    let name = key.strip_prefix(QUEUE)?.strip_prefix('/')?;
    (name.len() == SEQ_DIGITS && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// Converts `queue/<seq>.json` files of the bare-JSON versions into records, keeping
/// their sequence numbers (and so their order).
fn migrate_queue(store: &StateDir) -> Result<usize, StateError> {
    let mut converted = 0;
    for key in store.keys(QUEUE)? {
        let Some(seq) = key
            .strip_suffix(".json")
            .and_then(|k| sequence(k).map(|_| k))
        else {
            continue;
        };
        if store.migrate_legacy(&key, seq)? {
            converted += 1;
        }
    }
    Ok(converted)
}

/// What one read of the queue found.
struct Scan {
    pending: Vec<Pending>,
    /// Keys that could not be read nor moved aside.
    stuck: Vec<String>,
}

fn scan(
    store: &StateDir,
    known_stuck: &BTreeSet<String>,
    metrics: &WfmMetrics,
) -> Result<Scan, StateError> {
    let mut scan = Scan {
        pending: Vec::new(),
        stuck: Vec::new(),
    };
    for key in store.keys(QUEUE)? {
        if sequence(&key).is_none() {
            continue;
        }
        match store.get_json::<StatusReport>(&key) {
            Ok(Some(report)) => scan.pending.push(Pending { key, report }),
            Ok(None) => {}
            Err(err) => {
                if known_stuck.contains(&key) {
                    scan.stuck.push(key);
                } else if !quarantine(store, &key, "outbox-entry", &err, metrics) {
                    metrics.state_damaged("outbox-entry");
                    scan.stuck.push(key);
                }
            }
        }
    }
    Ok(scan)
}

impl Outbox {
    /// Opens the outbox under `dir`, converting the files of earlier versions once and
    /// moving aside entries that cannot be read.
    pub async fn open(dir: &Path, metrics: WfmMetrics) -> Result<Self, OutboxError> {
        let opened = metrics.clone();
        let (store, loaded) = StateDir::open_with(dir, move |store| {
            let converted = migrate_queue(store)?;
            if converted > 0 {
                tracing::info!(
                    converted,
                    "converted queued status reports into checksummed records"
                );
            }
            let last: BTreeMap<DeploymentId, StatusReport> =
                load_advisory(store, "last-reported.json", LAST, "last-reported", &opened);
            let scan = scan(store, &BTreeSet::new(), &opened)?;
            // Past every key seen, moved-aside and stuck ones included, so that a new
            // report never takes the name of an old one.
            let seen = store
                .keys(QUEUE)?
                .iter()
                .filter_map(|k| sequence(k.get(..QUEUE.len() + 1 + SEQ_DIGITS)?))
                .max();
            Ok::<_, StateError>((last, scan, seen))
        })
        .await?;
        let (last, scan, seen) = loaded?;
        let mut outbox = Self {
            store,
            next: seen.map_or(0, |n| n + 1),
            last,
            depth: 0,
            stuck: scan.stuck.into_iter().collect(),
            metrics,
        };
        outbox.set_depth(scan.pending.len());
        Ok(outbox)
    }

    fn set_depth(&mut self, depth: usize) {
        self.depth = depth;
        self.metrics.outbox_depth(depth);
    }

    /// Queues `report` unless it repeats the last report for its deployment. The entry
    /// is durable before the "last reported" record moves on, so a crash between the
    /// two can repeat a report but never lose one.
    pub async fn push(&mut self, report: StatusReport) -> Result<bool, OutboxError> {
        if self.last.get(&report.deployment_id) == Some(&report) {
            return Ok(false);
        }
        let key = queue_key(self.next);
        let mut last = self.last.clone();
        last.insert(report.deployment_id.clone(), report.clone());
        let record = last.clone();
        self.store
            .blocking(move |store| {
                store.put_json(&key, &report)?;
                store.put_json(LAST, &record)
            })
            .await?;
        self.next += 1;
        self.last = last;
        self.set_depth(self.depth + 1);
        Ok(true)
    }

    /// Queued reports, oldest first. Entries that cannot be read are moved aside (or,
    /// when even that fails, skipped), never in the way of the others.
    pub async fn pending(&mut self) -> Result<Vec<Pending>, OutboxError> {
        let known = self.stuck.clone();
        let metrics = self.metrics.clone();
        let scan = self
            .store
            .blocking(move |store| scan(store, &known, &metrics))
            .await?;
        self.stuck = scan.stuck.into_iter().collect();
        self.set_depth(scan.pending.len());
        Ok(scan.pending)
    }

    /// Removes a delivered (or permanently refused) report.
    pub async fn done(&mut self, pending: &Pending) -> Result<(), OutboxError> {
        let key = pending.key.clone();
        self.store.blocking(move |store| store.delete(&key)).await?;
        self.set_depth(self.depth.saturating_sub(1));
        Ok(())
    }

    /// Queued reports (as of the last change or read; no disk access).
    pub fn len(&self) -> usize {
        self.depth
    }

    pub fn is_empty(&self) -> bool {
        self.depth == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::margo::types::{StatusBody, StatusReport};

    fn report(id: &str, state: &str) -> StatusReport {
        StatusReport {
            deployment_id: DeploymentId::parse(id).unwrap(),
            device_id: None,
            adopted_manifest_version: crate::types::ManifestVersion::of_manifest(1).unwrap(),
            status: StatusBody {
                state: state.into(),
                error: None,
            },
            components: vec![],
        }
    }

    fn states(pending: &[Pending]) -> Vec<(&str, &str)> {
        pending
            .iter()
            .map(|p| {
                (
                    p.report.deployment_id.as_str(),
                    p.report.status.state.as_str(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn survives_reopen_in_order_without_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(dir.path(), WfmMetrics::default())
            .await
            .unwrap();
        assert!(outbox.push(report("a", "pending")).await.unwrap());
        assert!(outbox.push(report("a", "installing")).await.unwrap());
        assert!(!outbox.push(report("a", "installing")).await.unwrap());
        assert!(outbox.push(report("b", "installed")).await.unwrap());
        drop(outbox);
        let mut outbox = Outbox::open(dir.path(), WfmMetrics::default())
            .await
            .unwrap();
        assert_eq!(outbox.len(), 3);
        let pending = outbox.pending().await.unwrap();
        assert_eq!(
            states(&pending),
            [("a", "pending"), ("a", "installing"), ("b", "installed")]
        );
        outbox.done(&pending[0]).await.unwrap();
        assert!(
            !outbox.push(report("b", "installed")).await.unwrap(),
            "repeat after restart"
        );
        assert!(outbox.push(report("a", "installed")).await.unwrap());
        let last = outbox
            .pending()
            .await
            .unwrap()
            .last()
            .unwrap()
            .report
            .clone();
        assert_eq!(last.status.state, "installed");
        assert_eq!(outbox.len(), 3);
    }

    #[tokio::test]
    async fn a_damaged_entry_is_moved_aside_counted_and_blocks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = WfmMetrics::default();
        let mut outbox = Outbox::open(dir.path(), metrics.clone()).await.unwrap();
        for state in ["pending", "installing", "installed"] {
            outbox.push(report("a", state)).await.unwrap();
        }
        let pending = outbox.pending().await.unwrap();
        // Damage the middle one on disk (one flipped byte), and put a link to a
        // directory where the last one was.
        let middle = dir.path().join(&pending[1].key);
        let mut raw = std::fs::read(&middle).unwrap();
        let at = raw.len() - 2;
        raw[at] ^= 1;
        std::fs::write(&middle, raw).unwrap();
        let newest = dir.path().join(&pending[2].key);
        std::fs::remove_file(&newest).unwrap();
        std::os::unix::fs::symlink(dir.path(), &newest).unwrap();

        let pending = outbox.pending().await.unwrap();
        assert_eq!(states(&pending), [("a", "pending")]);
        assert_eq!(outbox.len(), 1);
        assert_eq!(metrics.damaged("outbox-entry"), 2);
        let names: Vec<String> = std::fs::read_dir(dir.path().join(QUEUE))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.iter().filter(|n| n.contains(".corrupt-")).count(),
            2,
            "{names:?}"
        );
        // Not counted again, and new reports do not reuse the names.
        outbox.pending().await.unwrap();
        assert_eq!(metrics.damaged("outbox-entry"), 2);
        drop(outbox);
        let mut outbox = Outbox::open(dir.path(), metrics.clone()).await.unwrap();
        assert!(outbox.push(report("b", "installed")).await.unwrap());
        let pending = outbox.pending().await.unwrap();
        assert_eq!(states(&pending), [("a", "pending"), ("b", "installed")]);
        assert_eq!(pending[1].key, queue_key(3));
    }

    #[tokio::test]
    async fn bare_json_files_of_earlier_versions_are_converted_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let queue = dir.path().join(QUEUE);
        std::fs::create_dir_all(&queue).unwrap();
        // Exactly what the bare-JSON version wrote: one file per report, and the map.
        for (seq, state) in [(4, "pending"), (5, "installing"), (11, "installed")] {
            let bytes = serde_json::to_vec(&report("a", state)).unwrap();
            std::fs::write(queue.join(format!("{seq:020}.json")), bytes).unwrap();
        }
        std::fs::write(queue.join(format!("{:020}.json", 7)), b"{torn").unwrap();
        let last: BTreeMap<_, _> = [("a".to_string(), report("a", "installed"))].into();
        std::fs::write(
            dir.path().join("last-reported.json"),
            serde_json::to_vec(&last).unwrap(),
        )
        .unwrap();

        let metrics = WfmMetrics::default();
        let mut outbox = Outbox::open(dir.path(), metrics.clone()).await.unwrap();
        let pending = outbox.pending().await.unwrap();
        assert_eq!(
            states(&pending),
            [("a", "pending"), ("a", "installing"), ("a", "installed")]
        );
        assert_eq!(metrics.damaged("outbox-entry"), 1, "the torn one");
        assert!(
            !outbox.push(report("a", "installed")).await.unwrap(),
            "last-reported kept"
        );
        assert!(outbox.push(report("a", "removed")).await.unwrap());
        assert_eq!(
            outbox.pending().await.unwrap().last().unwrap().key,
            queue_key(12)
        );
        let leftovers: Vec<String> = std::fs::read_dir(&queue)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(!dir.path().join("last-reported.json").exists());
    }
}
