//! `[[partition]]`: one sandbox partition's budgets and limits, as the configuration
//! file gives them, with the defaults of what it leaves out.

use crate::types::PartitionId;
use crate::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PartitionSettings {
    pub id: PartitionId,
    /// CPU share in cores (0.5 = half of one core on average).
    pub cpu: f64,
    /// Memory budget for all live instances of the partition together.
    pub memory: ByteSize,
    /// Quota for the partition's key-value data and files.
    pub storage: ByteSize,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Most memory one instance may use; defaults to min(memory, 128Mi).
    pub instance_memory: Option<ByteSize>,
    /// Most instances running at once; requests beyond wait up to `queue-timeout`.
    pub concurrency: Option<u32>,
    /// Default per-request deadline; a deployment may ask for less, never more.
    pub timeout: Option<HumanDuration>,
    /// How long a request may wait for a free instance slot or memory before 503.
    pub queue_timeout: Option<HumanDuration>,
    /// Margo capability `interfaces` / `peripherals`, passed through to the WFM (whose
    /// schema `margo::device` checks them against).
    #[serde(default)]
    pub interfaces: Vec<serde_json::Value>,
    #[serde(default)]
    pub peripherals: Vec<serde_json::Value>,
}

/// Limits applied when a partition does not set them.
pub const DEFAULT_CONCURRENCY: u32 = 32;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_INSTANCE_MEMORY: u64 = 128 << 20;

impl PartitionSettings {
    /// A partition of `cpu` cores, `memory` and `storage` bytes with every other limit
    /// at its default.
    pub fn new(id: PartitionId, cpu: f64, memory: u64, storage: u64) -> Self {
        Self {
            id,
            cpu,
            memory: ByteSize(memory),
            storage: ByteSize(storage),
            labels: BTreeMap::new(),
            instance_memory: None,
            concurrency: None,
            timeout: None,
            queue_timeout: None,
            interfaces: Vec::new(),
            peripherals: Vec::new(),
        }
    }

    pub fn instance_memory(&self) -> u64 {
        self.instance_memory
            .map(|b| b.0)
            .unwrap_or(DEFAULT_INSTANCE_MEMORY)
            .min(self.memory.0)
    }

    pub fn concurrency(&self) -> u32 {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.map(|d| d.0).unwrap_or(DEFAULT_TIMEOUT)
    }

    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_QUEUE_TIMEOUT)
    }

    /// What the partition itself must satisfy (its id is valid by type); `at` names it
    /// in the message (its place in the file and its id).
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if !(self.cpu.is_finite() && self.cpu > 0.0 && self.cpu <= 1024.0) {
            return Err(format!(
                "{at} cpu = {}: expected a number of cores > 0, e.g. 0.5",
                self.cpu
            ));
        }
        if self.memory.0 < (1 << 20) {
            return Err(format!(
                "{at} memory = {}: expected at least 1Mi",
                self.memory
            ));
        }
        if self.concurrency() == 0 || self.concurrency() > 10_000 {
            return Err(format!("{at} concurrency: expected 1 to 10000"));
        }
        if self.timeout().is_zero() {
            return Err(format!("{at} timeout: expected more than 0s"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_is_left_out() {
        let p = PartitionSettings::new(PartitionId::parse("a").unwrap(), 0.5, 64 << 20, 1 << 20);
        assert_eq!(
            p.instance_memory(),
            64 << 20,
            "capped by the partition's memory"
        );
        assert_eq!(p.concurrency(), DEFAULT_CONCURRENCY);
        assert_eq!(p.timeout(), DEFAULT_TIMEOUT);
        assert_eq!(p.queue_timeout(), DEFAULT_QUEUE_TIMEOUT);
        assert!(p.validate("p").is_ok());
    }

    #[test]
    fn bad_limits_name_the_field() {
        let base = PartitionSettings::new(PartitionId::parse("a").unwrap(), 1.0, 64 << 20, 1 << 20);
        type Spoil = fn(&mut PartitionSettings);
        let cases: [(Spoil, &str); 4] = [
            (|p| p.cpu = f64::NAN, "cpu"),
            (|p| p.memory = ByteSize(1000), "memory"),
            (|p| p.concurrency = Some(0), "concurrency"),
            (
                |p| p.timeout = Some(HumanDuration(Duration::ZERO)),
                "timeout",
            ),
        ];
        for (spoil, field) in cases {
            let mut p = base.clone();
            spoil(&mut p);
            let err = p.validate("[[partition]] #1").unwrap_err();
            assert!(
                err.starts_with(&format!("[[partition]] #1 {field}")),
                "{err}"
            );
        }
    }
}
