//! CPU shares. Guests hand control back to the host at every epoch tick; the host
//! charges the time the guest ran since its last check to its partition's token bucket
//! and, when the bucket is empty, parks the guest until the share has refilled. Time a
//! guest spends preempted by the OS is charged too, so a partition errs on the side of
//! using less than its share, never more.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much unused share a partition may bank: short bursts above the share are fine,
/// sustained use is not.
const BURST: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct CpuShare {
    /// Cores (CPU-seconds per wall-clock second).
    cores: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// CPU-seconds available; negative means the partition owes time.
    tokens: f64,
    refilled_at: Instant,
    throttled: Duration,
}

impl CpuShare {
    pub fn new(cores: f64) -> Self {
        Self {
            cores,
            bucket: Mutex::new(Bucket {
                tokens: BURST.as_secs_f64() * cores,
                refilled_at: Instant::now(),
                throttled: Duration::ZERO,
            }),
        }
    }

    pub fn cores(&self) -> f64 {
        self.cores
    }

    /// Charges `ran` of CPU time; returns how long the caller must pause to stay within
    /// the share, if at all.
    pub fn charge(&self, ran: Duration, now: Instant) -> Option<Duration> {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let refill = now.saturating_duration_since(b.refilled_at).as_secs_f64() * self.cores;
        b.refilled_at = now;
        b.tokens = (b.tokens + refill).min(BURST.as_secs_f64() * self.cores) - ran.as_secs_f64();
        if b.tokens >= 0.0 {
            return None;
        }
        let pause = Duration::from_secs_f64(-b.tokens / self.cores);
        b.throttled += pause;
        Some(pause)
    }

    /// Total time guests of this partition were paused to respect the share.
    pub fn throttled(&self) -> Duration {
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .throttled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a guest that runs whenever allowed, with ticks of 2 ms, and checks the
    /// fraction of wall time it ran.
    fn simulated_usage(cores: f64) -> f64 {
        let share = CpuShare::new(cores);
        let start = Instant::now();
        let mut now = start;
        let mut ran = Duration::ZERO;
        let tick = Duration::from_millis(2);
        while now - start < Duration::from_secs(10) {
            now += tick;
            ran += tick;
            if let Some(pause) = share.charge(tick, now) {
                now += pause;
            }
        }
        ran.as_secs_f64() / (now - start).as_secs_f64()
    }

    #[test]
    fn busy_guest_gets_its_share() {
        for cores in [0.25, 0.5, 1.0] {
            let usage = simulated_usage(cores);
            assert!((usage - cores).abs() < 0.02, "cores {cores}: used {usage}");
        }
    }
}
