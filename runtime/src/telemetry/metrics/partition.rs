//! The partition budgets: a custom collector that encodes the samples handed to the
//! scrape in progress, so budget use is read when scraped rather than kept current.

use super::lock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::Mutex;

/// Budget use of one partition, read when `/metrics` is scraped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionSample {
    /// `DEVICE/PARTITION`.
    pub partition: String,
    pub memory_used: u64,
    pub memory_limit: u64,
    pub cpu_throttled_seconds: f64,
    pub storage_used: u64,
    pub storage_quota: u64,
    pub active_instances: u32,
    pub concurrency_limit: u32,
}

/// Encodes the partition samples of the scrape in progress.
#[derive(Debug, Default)]
pub(super) struct PartitionCollector {
    pub(super) samples: Mutex<Vec<PartitionSample>>,
}

enum Sampled {
    Gauge(fn(&PartitionSample) -> f64),
    Counter(fn(&PartitionSample) -> f64),
}

const PARTITION_METRICS: [(&str, &str, Sampled); 7] = [
    (
        "wasmgate_partition_memory_bytes",
        "Linear memory held by the partition's live instances",
        Sampled::Gauge(|s| s.memory_used as f64),
    ),
    (
        "wasmgate_partition_memory_limit_bytes",
        "The partition's memory budget for all its live instances",
        Sampled::Gauge(|s| s.memory_limit as f64),
    ),
    (
        "wasmgate_partition_cpu_throttled_seconds",
        "Time the partition's guests were held back by its CPU share",
        Sampled::Counter(|s| s.cpu_throttled_seconds),
    ),
    (
        "wasmgate_partition_storage_bytes",
        "Bytes the partition stores: key-value data and files",
        Sampled::Gauge(|s| s.storage_used as f64),
    ),
    (
        "wasmgate_partition_storage_quota_bytes",
        "The partition's storage quota",
        Sampled::Gauge(|s| s.storage_quota as f64),
    ),
    (
        "wasmgate_partition_active_instances",
        "Instances running in the partition now",
        Sampled::Gauge(|s| f64::from(s.active_instances)),
    ),
    (
        "wasmgate_partition_concurrency_limit",
        "Most instances the partition runs at once",
        Sampled::Gauge(|s| f64::from(s.concurrency_limit)),
    ),
];

impl Collector for PartitionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = lock(&self.samples);
        for (name, help, read) in &PARTITION_METRICS {
            let kind = match read {
                Sampled::Gauge(_) => MetricType::Gauge,
                Sampled::Counter(_) => MetricType::Counter,
            };
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for s in samples.iter() {
                let labels = [("partition", s.partition.as_str())];
                let metric = family.encode_family(&labels)?;
                match read {
                    Sampled::Gauge(f) => ConstGauge::new(f(s)).encode(metric)?,
                    Sampled::Counter(f) => ConstCounter::new(f(s)).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}
