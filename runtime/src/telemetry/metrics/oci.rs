//! The OCI pull families: bytes received, and the duration of each manifest and layer
//! request by outcome.

use super::timing::{slow_histogram, HistogramFamily, KindOutcomeLabels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::time::Duration;

/// What an OCI request fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciPull {
    Manifest,
    Layer,
}

/// Pulls of Wasm components from OCI registries.
#[derive(Debug, Clone)]
pub struct OciMetrics {
    pub(super) bytes: Counter,
    pub(super) duration: HistogramFamily<KindOutcomeLabels>,
}

impl Default for OciMetrics {
    fn default() -> Self {
        Self {
            bytes: Counter::default(),
            duration: Family::new_with_constructor(slow_histogram),
        }
    }
}

impl OciMetrics {
    /// One manifest or layer request, successful or not, and how long it took.
    pub fn pull(&self, what: OciPull, ok: bool, elapsed: Duration) {
        let labels = KindOutcomeLabels {
            kind: match what {
                OciPull::Manifest => "manifest",
                OciPull::Layer => "layer",
            },
            outcome: if ok { "ok" } else { "error" },
        };
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Layer bytes received from a registry.
    pub fn bytes(&self, n: u64) {
        self.bytes.inc_by(n);
    }

    pub fn bytes_total(&self) -> u64 {
        self.bytes.get()
    }
}
