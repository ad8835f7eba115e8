//! Memory budgets: one per partition for all its live instances, one per instance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A partition's memory budget shared by its instances.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|after| *after <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Which limit stopped a memory from growing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryDenial {
    /// The instance asked for more than its own limit.
    Instance { limit: u64, requested: u64 },
    /// The partition's live instances together would exceed its budget.
    Partition { limit: u64 },
}

/// The `ResourceLimiter` of one instance: enforces its own limit and charges its
/// linear memory to the partition budget until the store is dropped.
#[derive(Debug)]
pub struct InstanceLimiter {
    instance_limit: u64,
    budget: Arc<MemoryBudget>,
    reserved: u64,
    pub denial: Option<MemoryDenial>,
    /// Parked instances of the partition, ended to make room before a growth is denied.
    idle: Option<Arc<super::IdlePool>>,
}

/// Table growth beyond this is refused: function tables of real programs stay far below.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl InstanceLimiter {
    pub fn new(instance_limit: u64, budget: Arc<MemoryBudget>) -> Self {
        Self {
            instance_limit,
            budget,
            reserved: 0,
            denial: None,
            idle: None,
        }
    }

    /// Before denying a growth for the partition's budget, ends instances parked in
    /// `idle`, oldest first: a request that runs matters more than one that may come.
    pub fn reclaiming(mut self, idle: Arc<super::IdlePool>) -> Self {
        self.idle = Some(idle);
        self
    }

    fn reserve(&self, delta: u64) -> bool {
        if self.budget.try_reserve(delta) {
            return true;
        }
        let Some(idle) = &self.idle else {
            return false;
        };
        while idle.evict_oldest() {
            if self.budget.try_reserve(delta) {
                return true;
            }
        }
        false
    }

    /// Starts the next request of a reused instance: what the last one was denied is
    /// not this one's failure.
    pub fn clear_denial(&mut self) {
        self.denial = None;
    }
}

impl wasmtime::ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let (current, desired) = (current as u64, desired as u64);
        if desired > self.instance_limit {
            self.denial = Some(MemoryDenial::Instance {
                limit: self.instance_limit,
                requested: desired,
            });
            return Ok(false);
        }
        let delta = desired.saturating_sub(current);
        if !self.reserve(delta) {
            self.denial = Some(MemoryDenial::Partition {
                limit: self.budget.limit(),
            });
            return Ok(false);
        }
        self.reserved += delta;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl Drop for InstanceLimiter {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn budget_is_shared_and_released() {
        let budget = Arc::new(MemoryBudget::new(100));
        let mut a = InstanceLimiter::new(80, budget.clone());
        let mut b = InstanceLimiter::new(80, budget.clone());
        assert!(a.memory_growing(0, 60, None).unwrap());
        assert!(!b.memory_growing(0, 60, None).unwrap());
        assert_eq!(b.denial, Some(MemoryDenial::Partition { limit: 100 }));
        assert!(!a.memory_growing(60, 90, None).unwrap());
        assert!(matches!(
            a.denial,
            Some(MemoryDenial::Instance { limit: 80, .. })
        ));
        drop(a);
        assert_eq!(budget.used(), 0);
        assert!(b.memory_growing(0, 60, None).unwrap());
    }

    #[test]
    fn a_growth_the_budget_denies_first_ends_parked_instances() {
        let budget = Arc::new(MemoryBudget::new(100));
        let idle = Arc::new(super::super::IdlePool::default());
        let mut parked = InstanceLimiter::new(80, budget.clone());
        assert!(parked.memory_growing(0, 60, None).unwrap());
        idle.park(1, Box::new(parked), std::time::Duration::from_secs(60), 4);
        let mut running = InstanceLimiter::new(80, budget.clone()).reclaiming(idle.clone());
        assert!(running.memory_growing(0, 60, None).unwrap());
        assert!(idle.is_empty(), "the parked instance made room");
        assert_eq!(budget.used(), 60);
        assert!(running.memory_growing(60, 80, None).unwrap());
        assert_eq!(budget.used(), 80);
        // Nothing left to end: the budget decides.
        let mut other = InstanceLimiter::new(80, budget.clone()).reclaiming(idle);
        assert!(!other.memory_growing(0, 60, None).unwrap());
        assert_eq!(other.denial, Some(MemoryDenial::Partition { limit: 100 }));
    }
}
