//! The "stop accepting and drain" signal shared by the listeners and the desired-state
//! source. Triggered once; every clone sees it.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once [`trigger`](Self::trigger) was called (at once if it already was).
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.0.subscribe();
        // Holding the sender keeps `wait_for` from ending early because every other
        // handle was dropped: an untriggered shutdown never resolves.
        let keep = self.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
            drop(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn resolves_only_after_trigger_even_when_other_handles_are_dropped() {
        let shutdown = Shutdown::new();
        let waiting = shutdown.triggered();
        let early = tokio::time::timeout(Duration::from_millis(50), shutdown.clone().triggered());
        assert!(early.await.is_err(), "resolved before trigger");
        let handle = shutdown.clone();
        drop(shutdown);
        assert!(!handle.is_triggered());
        handle.trigger();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("trigger wakes earlier waiters");
        tokio::time::timeout(Duration::from_secs(1), handle.triggered())
            .await
            .expect("later waiters resolve at once");
    }
}
