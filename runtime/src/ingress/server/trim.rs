//! Giving the heap a crowd of connections left behind back to the OS.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Hands freed connection memory back to the OS after a crowd of connections left.
/// glibc keeps freed heap in its per-thread arenas, fragmented by the connections'
/// buffers: without a trim, a burst of big half-sent heads leaves its peak behind.
pub(super) struct Trimmer {
    /// Open connections at most since the last trim.
    high_water: AtomicUsize,
}

/// Bursts smaller than this are not worth a trim.
const TRIM_MIN_CONNECTIONS: usize = 64;

impl Trimmer {
    pub(super) fn new() -> Self {
        Self {
            high_water: AtomicUsize::new(0),
        }
    }

    pub(super) fn opened(&self, open: usize) {
        self.high_water.fetch_max(open, Ordering::Relaxed);
    }

    /// Trims once the open connections fell to a quarter of their high-water mark.
    pub(super) fn closed(&self, open: usize) {
        let high = self.high_water.load(Ordering::Relaxed);
        if high < TRIM_MIN_CONNECTIONS || open * 4 > high {
            return;
        }
        // One trim per fall: whoever resets the mark runs it.
        if self
            .high_water
            .compare_exchange(high, open, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // malloc_trim walks every arena under its lock: not on an async worker.
            tokio::task::spawn_blocking(trim_heap);
        }
    }
}

fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
