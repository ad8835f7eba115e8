//! How durations are recorded: the histogram bucket layouts, one per kind of duration,
//! and the `{kind, outcome}` labels of timed requests. Shared, so families that time
//! alike bucket alike.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct KindOutcomeLabels {
    pub(super) kind: &'static str,
    pub(super) outcome: &'static str,
}

pub(super) type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// One request or event, admission to the guest's return: 0.5 ms .. ~16 s.
pub(super) fn invocation_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Instantiation from the pre-linked component, ~11 us on the pooling allocator:
/// 5 us .. ~80 ms.
pub(super) fn cold_start_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_005, 2.5, 12))
}

/// Compiles, pulls, reconcile passes and WFM round trips: 1 ms .. ~130 s.
pub(super) fn slow_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}
