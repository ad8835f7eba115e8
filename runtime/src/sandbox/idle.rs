//! Instances parked between requests by workloads that reuse them.
//!
//! A parked instance keeps its pool slot and the memory it grew, so the partition
//! bounds them: parked and running instances together never exceed its concurrency
//! (the pool is sized from it), the oldest parked one goes first when a request needs a
//! fresh instance or memory, and each leaves after its idle timeout. The pool holds
//! opaque values: what an instance is (a wasmtime store) is the workload's business.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Anything a workload parks; dropping it ends the instance.
pub type ParkedInstance = Box<dyn Any + Send>;

struct Entry {
    owner: u64,
    expires: Instant,
    instance: ParkedInstance,
}

#[derive(Default)]
pub struct IdlePool {
    entries: Mutex<VecDeque<Entry>>,
    /// Wakes the reaper when an instance is parked: its expiry may be the nearest.
    parked: tokio::sync::Notify,
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePool")
            .field("parked", &self.len())
            .finish()
    }
}

impl IdlePool {
    fn entries(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Instances parked now.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recently parked instance of `owner` that has not expired. Expired
    /// entries met on the way are dropped (outside the lock: ending a store takes time).
    pub fn take(&self, owner: u64) -> Option<ParkedInstance> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut entries = self.entries();
            expired.extend(drain_expired(&mut entries, now));
            let at = entries.iter().rposition(|e| e.owner == owner);
            at.and_then(|at| entries.remove(at))
        };
        drop(expired);
        found.map(|e| e.instance)
    }

    /// Parks `instance` for `idle`, first evicting the oldest entries until at most
    /// `room - 1` others are parked (`room` is how many instances may be parked at all).
    pub fn park(&self, owner: u64, instance: ParkedInstance, idle: Duration, room: usize) {
        if room == 0 {
            return;
        }
        let evicted = {
            let mut entries = self.entries();
            let over = (entries.len() + 1).saturating_sub(room);
            // Entries are in parking order: the front is the least recently used.
            let evicted: Vec<Entry> = entries.drain(..over).collect();
            entries.push_back(Entry {
                owner,
                expires: Instant::now() + idle,
                instance,
            });
            evicted
        };
        self.parked.notify_one();
        drop(evicted);
    }

    /// Ends the least recently parked instance, if any (memory is short).
    pub fn evict_oldest(&self) -> bool {
        let oldest = self.entries().pop_front();
        oldest.is_some()
    }

    /// Drops the oldest entries until at most `keep` remain; returns how many went.
    pub fn trim(&self, keep: usize) -> usize {
        let evicted: Vec<Entry> = {
            let mut entries = self.entries();
            let over = entries.len().saturating_sub(keep);
            entries.drain(..over).collect()
        };
        evicted.len()
    }

    /// Drops every instance `owner` parked (its deployment is gone or replaced).
    pub fn discard(&self, owner: u64) {
        let evicted = {
            let mut entries = self.entries();
            let (gone, kept): (VecDeque<Entry>, VecDeque<Entry>) =
                entries.drain(..).partition(|e| e.owner == owner);
            *entries = kept;
            gone
        };
        drop(evicted);
    }

    /// Drops entries as they expire. Runs on the partition's runtime and ends with it
    /// (the runtime is the last thing a partition drops).
    pub(super) async fn reap(pool: Arc<IdlePool>) {
        loop {
            let next = pool.entries().iter().map(|e| e.expires).min();
            let woken = pool.parked.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = woken => {}
                    }
                }
                None => woken.await,
            }
            let expired = drain_expired(&mut pool.entries(), Instant::now());
            drop(expired);
        }
    }
}

/// Removes the entries expired at `now`, keeping the others' order.
fn drain_expired(entries: &mut VecDeque<Entry>, now: Instant) -> VecDeque<Entry> {
    if !entries.iter().any(|e| e.expires <= now) {
        return VecDeque::new();
    }
    let (expired, kept): (VecDeque<Entry>, VecDeque<Entry>) =
        entries.drain(..).partition(|e| e.expires <= now);
    *entries = kept;
    expired
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(pool: &IdlePool, owner: u64) -> Option<u32> {
        pool.take(owner).map(|b| *b.downcast::<u32>().unwrap())
    }

    #[test]
    fn the_newest_instance_of_an_owner_is_taken_and_room_is_kept() {
        let pool = IdlePool::default();
        let idle = Duration::from_secs(60);
        pool.park(1, Box::new(10u32), idle, 3);
        pool.park(2, Box::new(20u32), idle, 3);
        pool.park(1, Box::new(11u32), idle, 3);
        assert_eq!(token(&pool, 1), Some(11));
        assert_eq!(token(&pool, 3), None);
        // Room for two: the oldest (owner 1's first) makes way.
        pool.park(2, Box::new(21u32), idle, 2);
        assert_eq!(pool.len(), 2);
        assert_eq!(token(&pool, 1), None);
        assert_eq!(token(&pool, 2), Some(21));
        assert_eq!(pool.trim(0), 1);
        assert!(pool.is_empty());
        // No room at all: nothing is parked.
        pool.park(1, Box::new(12u32), idle, 0);
        assert!(pool.is_empty());
    }

    #[test]
    fn expired_and_discarded_instances_are_never_taken() {
        let pool = IdlePool::default();
        pool.park(1, Box::new(1u32), Duration::ZERO, 4);
        assert_eq!(token(&pool, 1), None);
        assert!(pool.is_empty());
        pool.park(1, Box::new(2u32), Duration::from_secs(60), 4);
        pool.park(2, Box::new(3u32), Duration::from_secs(60), 4);
        pool.discard(1);
        assert_eq!(token(&pool, 1), None);
        assert_eq!(token(&pool, 2), Some(3));
    }

    #[tokio::test]
    async fn the_reaper_ends_instances_at_their_idle_timeout() {
        let pool = Arc::new(IdlePool::default());
        let reaper = tokio::spawn(IdlePool::reap(pool.clone()));
        tokio::task::yield_now().await;
        // A long-lived entry parked first must not hold back a short one's reaping.
        pool.park(1, Box::new(1u32), Duration::from_secs(600), 4);
        pool.park(2, Box::new(2u32), Duration::from_millis(30), 4);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.len() > 1 {
            assert!(Instant::now() < deadline, "never reaped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(token(&pool, 1), Some(1));
        reaper.abort();
    }
}
