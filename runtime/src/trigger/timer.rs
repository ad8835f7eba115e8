//! The timer trigger: runs a workload's event handler every period.

use crate::workload::{Tick, Workload};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `trigger.timer` of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerSchedule {
    pub every: Duration,
}

/// A running timer; stops when dropped.
pub struct TimerHandle {
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for TimerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Runs `workload` every `every`, one event at a time; a slow handler skips ticks
/// rather than piling them up.
pub fn start_timer(workload: Arc<Workload>, every: Duration) -> TimerHandle {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sequence = 0u64;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopped.changed() => break,
            }
            let scheduled_at_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let tick = Tick {
                sequence,
                scheduled_at_ms,
                period_ms: every.as_millis() as u64,
            };
            // Failures are logged and counted by the workload; the timer keeps going.
            let _ = workload.invoke_tick(tick).await;
            sequence += 1;
        }
    });
    TimerHandle { stop }
}
