//! The one wasmtime [`Engine`] of the process: compiler and allocator settings, the epoch
//! ticker that drives deadlines and CPU shares, and the on-disk AOT cache.

mod aot;

pub use aot::{AotCache, AotEntry, AotError, AotOutcome};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. Every running guest hands control back to the host
/// once per tick (for deadlines and CPU accounting), so this is both the precision of
/// those limits and their overhead.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Guest call-stack limit. Deep enough for real programs, small enough that a runaway
/// recursion traps fast.
const MAX_WASM_STACK: usize = 1 << 20;
/// Host stack for a guest running asynchronously; must exceed `MAX_WASM_STACK` plus
/// room for host frames.
const ASYNC_STACK: usize = 2 << 20;
/// Linear memories or tables a single component may create. Rust components use one
/// memory; adapters and componentize-py a few more.
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 8;
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
/// Guard region after each linear memory: bounds checks are explicit for memories
/// smaller than 4 GiB, so the guard only needs to catch small overshoots.
const MEMORY_GUARD: u64 = 64 << 10;

/// What the instance pool must hold, derived from the sandbox partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizing {
    /// Component instances alive at once (sum of partition concurrency).
    pub instances: u32,
    /// The largest linear memory any instance may grow to.
    pub max_instance_memory: u64,
}

impl PoolSizing {
    /// Virtual address space the pool reserves for linear memories.
    pub fn reserved_bytes(&self) -> u64 {
        u64::from(self.instances)
            * u64::from(MEMORIES_PER_COMPONENT)
            * (round_to_page(self.max_instance_memory) + MEMORY_GUARD)
    }
}

fn round_to_page(bytes: u64) -> u64 {
    const PAGE: u64 = 64 << 10;
    bytes.div_ceil(PAGE) * PAGE
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot configure the wasmtime engine: {0:#}")]
    Config(wasmtime::Error),
}

/// The engine plus what was decided while building it.
#[derive(Clone)]
pub struct WasmEngine {
    pub engine: Engine,
    /// `false` when the pool could not be reserved and instances come from the
    /// on-demand allocator instead.
    pub pooling: bool,
    pub sizing: PoolSizing,
}

fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    config.async_stack_size(ASYNC_STACK);
    config.parallel_compilation(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

fn pooling_config(sizing: PoolSizing) -> Config {
    let mut config = base_config();
    let memory = round_to_page(sizing.max_instance_memory);
    let slots = sizing.instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(slots * MEMORIES_PER_COMPONENT)
        .total_tables(slots * TABLES_PER_COMPONENT)
        .total_stacks(slots)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memory_size(memory as usize)
        // Keeping a little of each slot resident makes the next instance in that slot
        // cheaper without pinning whole memories.
        .linear_memory_keep_resident(64 << 10)
        .table_keep_resident(16 << 10);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config.memory_reservation(memory);
    config.memory_guard_size(MEMORY_GUARD);
    config.memory_reservation_for_growth(0);
    config
}

fn on_demand_config(sizing: PoolSizing) -> Config {
    let mut config = base_config();
    // Even without a pool, never reserve the default 4 GiB per memory: small ARM boards
    // have 39-bit address spaces.
    config.memory_reservation(round_to_page(sizing.max_instance_memory));
    config.memory_guard_size(MEMORY_GUARD);
    config
}

impl WasmEngine {
    /// Builds the engine with a pool sized by `sizing`, falling back to on-demand
    /// allocation (with a warning) when the address space cannot be reserved.
    pub fn new(sizing: PoolSizing) -> Result<Self, EngineError> {
        match Engine::new(&pooling_config(sizing)) {
            Ok(engine) => {
                tracing::info!(
                    instances = sizing.instances,
                    max_instance_memory = sizing.max_instance_memory,
                    reserved_mib = sizing.reserved_bytes() >> 20,
                    "pooling allocator ready"
                );
                Ok(Self {
                    engine,
                    pooling: true,
                    sizing,
                })
            }
            Err(err) => {
                tracing::warn!(
                    error = %format!("{err:#}"),
                    reserved_mib = sizing.reserved_bytes() >> 20,
                    "cannot reserve the instance pool; falling back to on-demand allocation (slower cold starts)"
                );
                Self::on_demand(sizing)
            }
        }
    }

    /// An engine with the on-demand allocator (also used by benchmarks as a baseline).
    pub fn on_demand(sizing: PoolSizing) -> Result<Self, EngineError> {
        let engine = Engine::new(&on_demand_config(sizing)).map_err(EngineError::Config)?;
        Ok(Self {
            engine,
            pooling: false,
            sizing,
        })
    }

    /// Starts the thread that advances the epoch every [`EPOCH_TICK`]; it stops when the
    /// returned guard is dropped.
    pub fn start_epoch_ticker(&self) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = self.engine.clone();
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop }
    }
}

/// Keeps the epoch ticker running while alive.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reservation_is_bounded_by_partition_budgets() {
        let sizing = PoolSizing {
            instances: 64,
            max_instance_memory: 128 << 20,
        };
        // 64 instances x 4 memories x (128 MiB + 64 KiB): about 32 GiB of address space,
        // well inside a 39-bit (512 GiB) ARM address space.
        assert!(sizing.reserved_bytes() < 40 << 30);
        let engine = WasmEngine::new(sizing).unwrap();
        assert!(engine.pooling);
    }
}
