//! The AOT cache's families: hits, misses, and the compile time a miss costs.

use super::timing::slow_histogram;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::time::Duration;

/// The AOT cache of compiled components.
#[derive(Debug, Clone)]
pub struct AotMetrics {
    pub(super) hits: Counter,
    pub(super) misses: Counter,
    pub(super) compile: Histogram,
}

impl Default for AotMetrics {
    fn default() -> Self {
        Self {
            hits: Counter::default(),
            misses: Counter::default(),
            compile: slow_histogram(),
        }
    }
}

impl AotMetrics {
    /// A component mapped from an intact cache entry, or already loaded.
    pub fn hit(&self) {
        self.hits.inc();
    }

    /// A component compiled (no usable entry), taking `elapsed`.
    pub fn miss(&self, elapsed: Duration) {
        self.misses.inc();
        self.compile.observe(elapsed.as_secs_f64());
    }

    pub fn hits(&self) -> u64 {
        self.hits.get()
    }

    pub fn misses(&self) -> u64 {
        self.misses.get()
    }
}
