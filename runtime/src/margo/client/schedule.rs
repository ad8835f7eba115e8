//! When to talk to the WFM: back-off after failures, the next round after success,
//! and the downtime and polling windows the settings declare.

use super::{CycleError, WfmClient};
use std::time::{Duration, Instant, SystemTime};

/// Longest wait between attempts while the WFM is away.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// `poll` doubled per consecutive failure, at most [`MAX_BACKOFF`], never below `poll`.
pub(super) fn exponential_backoff(poll: Duration, failures: u32) -> Duration {
    poll.saturating_mul(1u32 << failures.min(8))
        .min(MAX_BACKOFF)
        .max(poll)
}

impl WfmClient {
    pub(super) fn backoff(&self, err: &CycleError, failures: u32) -> Duration {
        let poll = self.settings.poll_interval;
        let exponential = exponential_backoff(poll, failures);
        let base = match err {
            // A retired or refused client stops hammering the WFM.
            e if e.is_unauthorized() => MAX_BACKOFF,
            CycleError::Rejected(_) => poll,
            _ => exponential,
        };
        err.retry_after().map_or(base, |r| r.max(poll))
    }

    /// After a complete cycle: the poll interval, or sooner when a refused
    /// capabilities report is due again.
    pub(super) fn next_wait(&self) -> Duration {
        let poll = self.settings.poll_interval;
        let now = Instant::now();
        self.refused_reports
            .values()
            .map(|r| r.next_attempt.saturating_duration_since(now))
            .min()
            .map_or(poll, |due| due.min(poll))
    }

    fn minute_of_day(now: SystemTime) -> u32 {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        ((secs % 86_400) / 60) as u32
    }

    pub(super) fn in_downtime(&self) -> bool {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.settings
            .downtime_once
            .iter()
            .any(|d| (d.from_unix..d.until_unix).contains(&secs))
            || self
                .settings
                .downtime_daily
                .iter()
                .any(|w| w.contains(Self::minute_of_day(now)))
    }

    pub(super) fn in_polling_window(&self) -> bool {
        self.settings
            .polling_window
            .is_none_or(|w| w.contains(Self::minute_of_day(SystemTime::now())))
    }
}
