//! The drop counters, `wasmgate_telemetry_dropped_total{signal}`: what the queues and
//! the metrics push could not deliver, counted for the operator.

use super::Signal;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::LazyLock;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(in crate::telemetry) struct SignalLabels {
    signal: &'static str,
}

/// The drop counters are process-wide, like the tracing subscriber that feeds them:
/// the pipeline starts before the host's registry exists, and every registry shows
/// the same series.
static DROPPED: LazyLock<Family<SignalLabels, Counter>> = LazyLock::new(|| {
    let family = Family::<SignalLabels, Counter>::default();
    for signal in Signal::ALL {
        // Shown as 0 from the start, so a rise is visible.
        drop(family.get_or_create(&SignalLabels {
            signal: signal.as_str(),
        }));
    }
    family
});

/// `wasmgate_telemetry_dropped_total{signal}` for the Prometheus registry.
pub(in crate::telemetry) fn dropped_family() -> Family<SignalLabels, Counter> {
    DROPPED.clone()
}

pub(super) fn dropped(signal: Signal) -> Counter {
    DROPPED
        .get_or_create(&SignalLabels {
            signal: signal.as_str(),
        })
        .clone()
}

/// Records of `signal` dropped so far.
pub fn dropped_total(signal: Signal) -> u64 {
    dropped(signal).get()
}
