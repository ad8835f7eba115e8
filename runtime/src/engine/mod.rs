//! The one wasmtime [`Engine`] of the process: compiler and allocator settings, the epoch
//! ticker that drives deadlines and CPU shares, and the on-disk AOT cache.

mod aot;
pub mod precompiled;

pub use aot::{AotCache, AotEntry, AotError, AotOutcome, Shipped};
pub use precompiled::{Arch, CodeProfile, PrecompiledError};

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

/// Elements per table slot: wasmtime's pooling default, which the pool keeps.
const TABLE_ELEMENTS: u64 = 20_000;
/// Host page size assumed for the guard pages of stacks and the rounding of tables.
const HOST_PAGE: u64 = 4 << 10;
/// Below this many slots a pool caps concurrency harder than it speeds up cold starts:
/// the on-demand allocator serves better.
const MIN_POOL_INSTANCES: u32 = 4;
/// The pool takes at most this share (1 / n) of the address space found free at start;
/// the rest is left to the heap, thread stacks, compiled code and later mappings.
const POOL_SHARE: u64 = 2;
/// The probe stops refining once its window is this narrow.
const PROBE_PRECISION: u64 = 64 << 20;

/// What the instance pool must hold, derived from the sandbox partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizing {
    /// Component instances alive at once (sum of partition concurrency).
    pub instances: u32,
    /// The largest linear memory any instance may grow to.
    pub max_instance_memory: u64,
}

impl PoolSizing {
    /// Virtual address space the pool reserves: linear memories, tables and async
    /// stacks of every slot.
    pub fn reserved_bytes(&self) -> u64 {
        u64::from(self.instances) * self.slot_bytes()
    }

    fn slot_bytes(&self) -> u64 {
        let memories = u64::from(MEMORIES_PER_COMPONENT)
            * (round_to_page(self.max_instance_memory) + MEMORY_GUARD);
        let tables =
            u64::from(TABLES_PER_COMPONENT) * (TABLE_ELEMENTS * 8).next_multiple_of(HOST_PAGE);
        let stack = (ASYNC_STACK as u64).next_multiple_of(HOST_PAGE) + HOST_PAGE;
        memories + tables + stack
    }
}

/// Fits the wanted pool into `reservable` bytes of address space (what the start-up
/// probe found): all wanted slots when they take at most 1 / [`POOL_SHARE`] of it, fewer
/// slots of the same memory size when not, and `None` (on-demand allocation) when not
/// even [`MIN_POOL_INSTANCES`] slots fit. Memory per slot is never cut: it is the limit
/// the partitions promise their guests.
pub fn plan_pool(wanted: PoolSizing, reservable: u64) -> Option<PoolSizing> {
    let budget = reservable / POOL_SHARE;
    let fit = budget / wanted.slot_bytes().max(1);
    let instances = u32::try_from(fit)
        .unwrap_or(u32::MAX)
        .min(wanted.instances.max(1));
    (instances >= MIN_POOL_INSTANCES.min(wanted.instances.max(1))).then_some(PoolSizing {
        instances,
        ..wanted
    })
}

/// The largest reservation up to `want` bytes that `try_reserve` grants: `want` itself,
/// else halving until one succeeds, then bisecting between that and the last refusal
/// to within [`PROBE_PRECISION`]. Returns 0 when not even `floor` bytes can be reserved.
fn largest_reservable(want: u64, floor: u64, mut try_reserve: impl FnMut(u64) -> bool) -> u64 {
    if try_reserve(want) {
        return want;
    }
    let mut refused = want;
    let mut granted = want / 2;
    while !try_reserve(granted) {
        refused = granted;
        granted /= 2;
        if granted < floor.max(1) {
            return 0;
        }
    }
    while refused - granted > PROBE_PRECISION {
        let mid = granted + (refused - granted) / 2;
        if try_reserve(mid) {
            granted = mid;
        } else {
            refused = mid;
        }
    }
    granted
}

/// Whether the kernel grants a contiguous, inaccessible reservation of `bytes` now, the
/// way the pool reserves its slots (honours `RLIMIT_AS` and the address-space size,
/// e.g. 512 GiB on 39-bit ARM kernels). Nothing is committed; the mapping is dropped
/// at once.
fn can_reserve(bytes: u64) -> bool {
    let Ok(len) = usize::try_from(bytes) else {
        return false;
    };
    use rustix::mm::{mmap_anonymous, munmap, MapFlags, ProtFlags};
    // SAFETY: a new anonymous mapping at an address the kernel picks overlaps nothing
    // that exists, and it is unmapped before anything else can see it.
    unsafe {
        match mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        ) {
            Ok(addr) => {
                let _ = munmap(addr, len);
                true
            }
            Err(_) => false,
        }
    }
}

/// The address-space limit of this process, if one is set (`ulimit -v`).
fn address_space_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::As).current
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
    /// What code this engine runs: precompiled components must match it.
    pub profile: CodeProfile,
}

/// The settings that shape compiled code, shared by the device's engine and by
/// `wasmgate compile`, so that code compiled on a build host fits the device exactly.
/// Everything here is part of [`CodeProfile::fingerprint`]. `target` is the triple to
/// compile for (`None`: this host's native code).
pub(crate) fn code_config(
    profile: &CodeProfile,
    target: Option<&str>,
) -> Result<Config, wasmtime::Error> {
    let mut config = Config::new();
    if let Some(target) = target {
        // Explicit even where wasmtime would pick Pulley by itself, so that the device and
        // a build host cross-compiling for it derive the same defaults from the triple.
        config.target(target)?;
    }
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    config.async_stack_size(ASYNC_STACK);
    // Never the default 4 GiB per memory: small ARM boards have 39-bit address spaces.
    // A memory never grows past its reservation (it is the per-instance limit), so no
    // extra room for growth is reserved either.
    config.memory_reservation(profile.memory_reservation);
    config.memory_guard_size(MEMORY_GUARD);
    config.memory_reservation_for_growth(0);
    #[cfg(feature = "compiler")]
    {
        config.parallel_compilation(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    }
    Ok(config)
}

/// The triple this host's engine compiles for: Pulley's where it interprets
/// ([`precompiled::PULLEY`]), else none (native code, wasmtime's default).
pub(crate) fn native_target() -> Option<&'static str> {
    precompiled::PULLEY.then_some(precompiled::PULLEY_HOST_TRIPLE)
}

fn pooling_config(sizing: PoolSizing) -> Result<Config, wasmtime::Error> {
    let memory = round_to_page(sizing.max_instance_memory);
    let mut config = code_config(&code_profile(sizing), native_target())?;
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
    Ok(config)
}

fn on_demand_config(sizing: PoolSizing) -> Result<Config, wasmtime::Error> {
    // Same code settings as the pool, so compiled code (cached or precompiled) fits both.
    code_config(&code_profile(sizing), native_target())
}

/// The code this machine's engine runs for partitions of `sizing`.
fn code_profile(sizing: PoolSizing) -> CodeProfile {
    CodeProfile::native(round_to_page(sizing.max_instance_memory))
}

impl WasmEngine {
    /// Builds the engine with a pool sized by `wanted`, shrunk to fit the address space
    /// probed now, falling back to on-demand allocation (with a warning) when not even a
    /// minimal pool fits or the reservation still fails.
    pub fn new(wanted: PoolSizing) -> Result<Self, EngineError> {
        // Probing for twice the pool tells whether it fits with the room to spare that
        // `plan_pool` asks for.
        let floor = PoolSizing {
            instances: MIN_POOL_INSTANCES,
            ..wanted
        }
        .reserved_bytes();
        let probe = wanted.reserved_bytes().saturating_mul(POOL_SHARE);
        let reservable = largest_reservable(probe, floor, can_reserve);
        let rlimit_as_mib = address_space_limit().map(|b| b >> 20);
        let Some(sizing) = plan_pool(wanted, reservable) else {
            tracing::warn!(
                wanted_instances = wanted.instances,
                wanted_reserved_mib = wanted.reserved_bytes() >> 20,
                reservable_mib = reservable >> 20,
                rlimit_as_mib,
                "address space too short for an instance pool; using on-demand allocation (slower cold starts)"
            );
            return Self::on_demand(wanted);
        };
        if sizing.instances < wanted.instances {
            // Partition admission still allows `wanted.instances`; the pool refuses
            // instances beyond its slots, so that is the host-wide concurrency now.
            tracing::warn!(
                instances = sizing.instances,
                wanted_instances = wanted.instances,
                reservable_mib = reservable >> 20,
                rlimit_as_mib,
                "address space is short: the instance pool holds fewer instances than the partitions allow"
            );
        }
        match pooling_config(sizing).and_then(|config| Engine::new(&config)) {
            Ok(engine) => {
                tracing::info!(
                    instances = sizing.instances,
                    wanted_instances = wanted.instances,
                    max_instance_memory = sizing.max_instance_memory,
                    reserved_mib = sizing.reserved_bytes() >> 20,
                    reservable_mib = reservable >> 20,
                    rlimit_as_mib,
                    "pooling allocator ready"
                );
                Ok(Self {
                    engine,
                    pooling: true,
                    sizing,
                    profile: code_profile(sizing),
                })
            }
            Err(err) => {
                tracing::warn!(
                    error = %format!("{err:#}"),
                    reserved_mib = sizing.reserved_bytes() >> 20,
                    reservable_mib = reservable >> 20,
                    "cannot reserve the instance pool; falling back to on-demand allocation (slower cold starts)"
                );
                Self::on_demand(wanted)
            }
        }
    }

    /// An engine with the on-demand allocator (also used by benchmarks as a baseline).
    pub fn on_demand(sizing: PoolSizing) -> Result<Self, EngineError> {
        let engine = on_demand_config(sizing)
            .and_then(|config| Engine::new(&config))
            .map_err(EngineError::Config)?;
        Ok(Self {
            engine,
            pooling: false,
            sizing,
            profile: code_profile(sizing),
        })
    }

    /// The AOT cache under `dir` for this engine's code: entries keyed by its
    /// [`CodeProfile::fingerprint`], which a device build computes without a compiler.
    pub fn aot_cache(&self, dir: impl Into<std::path::PathBuf>) -> AotCache {
        AotCache::with_fingerprint(dir, self.profile.fingerprint())
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

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    /// What a 39-bit kernel (Raspberry Pi OS, many ARM boards) gives a process.
    const VA_39_BIT: u64 = 512 * GIB;

    /// The examples' two partitions at the default concurrency and instance memory.
    const EXAMPLES: PoolSizing = PoolSizing {
        instances: 64,
        max_instance_memory: 128 * MIB,
    };

    #[test]
    fn pool_reservation_is_bounded_by_partition_budgets() {
        // 64 instances x (4 memories x (128 MiB + 64 KiB) + tables + stack): about
        // 32 GiB of address space, well inside a 39-bit ARM address space.
        let reserved = EXAMPLES.reserved_bytes();
        assert!(reserved > 32 * GIB && reserved < 33 * GIB, "{reserved}");
        let engine = WasmEngine::new(EXAMPLES).unwrap();
        assert!(engine.pooling);
        assert_eq!(engine.sizing, EXAMPLES);
    }

    #[test]
    fn a_39_bit_address_space_holds_the_examples_pool_whole() {
        assert_eq!(plan_pool(EXAMPLES, VA_39_BIT), Some(EXAMPLES));
        // Most of it already taken by the binary, heap and stacks: still whole.
        assert_eq!(plan_pool(EXAMPLES, VA_39_BIT - 16 * GIB), Some(EXAMPLES));
    }

    #[test]
    fn a_39_bit_address_space_shrinks_a_large_pool_to_half_of_it() {
        // 16 partitions x 64 instances of 128 MiB: about 512 GiB wanted.
        let wanted = PoolSizing {
            instances: 1024,
            max_instance_memory: 128 * MIB,
        };
        assert!(wanted.reserved_bytes() > VA_39_BIT);
        let plan = plan_pool(wanted, VA_39_BIT).unwrap();
        assert_eq!(plan.max_instance_memory, wanted.max_instance_memory);
        assert!(plan.reserved_bytes() <= VA_39_BIT / 2);
        // Not wastefully small either: one more slot would exceed the half.
        let one_more = PoolSizing {
            instances: plan.instances + 1,
            ..plan
        };
        assert!(one_more.reserved_bytes() > VA_39_BIT / 2);
        assert!(plan.instances > 400 && plan.instances < 512, "{plan:?}");
    }

    #[test]
    fn a_pool_is_whole_only_with_room_to_spare() {
        let wanted = EXAMPLES.reserved_bytes();
        assert_eq!(plan_pool(EXAMPLES, 2 * wanted), Some(EXAMPLES));
        let tight = plan_pool(EXAMPLES, 2 * wanted - 1).unwrap();
        assert_eq!(tight.instances, EXAMPLES.instances - 1);
        // Exactly the wanted size is not enough room: half the slots.
        assert_eq!(plan_pool(EXAMPLES, wanted).unwrap().instances, 32);
    }

    #[test]
    fn on_demand_only_when_not_even_a_minimal_pool_fits() {
        let minimal = PoolSizing {
            instances: MIN_POOL_INSTANCES,
            ..EXAMPLES
        };
        let needed = 2 * minimal.reserved_bytes();
        assert_eq!(plan_pool(EXAMPLES, needed), Some(minimal));
        assert_eq!(plan_pool(EXAMPLES, needed - 1), None);
        assert_eq!(plan_pool(EXAMPLES, 0), None);
        // A host that wants fewer slots than the minimum still gets a pool of them.
        let small = PoolSizing {
            instances: 2,
            max_instance_memory: 16 * MIB,
        };
        assert_eq!(plan_pool(small, 2 * small.reserved_bytes()), Some(small));
    }

    #[test]
    fn other_address_spaces() {
        // 48-bit x86_64 / ARM with 4-level tables (128 TiB): whole.
        assert_eq!(plan_pool(EXAMPLES, 128 << 40), Some(EXAMPLES));
        // 36-bit (64 GiB) kernels or `ulimit -v 64G`: whole, just.
        assert_eq!(plan_pool(EXAMPLES, 66 * GIB), Some(EXAMPLES));
        // `ulimit -v 5G`: the minimal pool of 128 MiB memories (about 516 MiB a slot).
        assert_eq!(
            plan_pool(EXAMPLES, 5 * GIB).unwrap().instances,
            MIN_POOL_INSTANCES
        );
        // 32-bit-sized address space: no pool.
        assert_eq!(plan_pool(EXAMPLES, 4 * GIB), None);
    }

    #[test]
    fn a_32_bit_address_space_pools_small_memories_only() {
        // About 3 GiB usable on 32-bit ARM; the examples' 128 MiB memories take about
        // 516 MiB a slot, so not even the minimal pool fits in half of it: on demand.
        let va_32_bit = 3 * GIB;
        assert_eq!(plan_pool(EXAMPLES, va_32_bit), None);
        // 16 MiB memories (about 67 MiB a slot): a pool of 22 instances.
        let small = PoolSizing {
            instances: 64,
            max_instance_memory: 16 * MIB,
        };
        let plan = plan_pool(small, va_32_bit).unwrap();
        assert_eq!(plan.instances, 22, "{plan:?}");
        assert!(plan.reserved_bytes() <= va_32_bit / 2);
    }

    #[test]
    fn the_engine_interprets_pulley_exactly_when_the_build_says_so() {
        let engine = WasmEngine::on_demand(PoolSizing {
            instances: 1,
            max_instance_memory: 16 * MIB,
        })
        .unwrap();
        assert_eq!(engine.engine.is_pulley(), precompiled::PULLEY);
        assert_eq!(
            engine.profile.target.starts_with("pulley"),
            precompiled::PULLEY,
            "{}",
            engine.profile.target
        );
    }

    /// A fake kernel that grants any reservation up to `limit`, counting the probes.
    fn probe_against(want: u64, floor: u64, limit: u64) -> (u64, u32) {
        let mut probes = 0;
        let got = largest_reservable(want, floor, |bytes| {
            probes += 1;
            bytes <= limit
        });
        (got, probes)
    }

    #[test]
    fn the_probe_finds_the_limit_closely_and_quickly() {
        let want = 2 * EXAMPLES.reserved_bytes();
        assert_eq!(probe_against(want, GIB, VA_39_BIT), (want, 1));
        for limit in [40 * GIB, 20 * GIB, 5 * GIB + 123 * MIB, 2 * GIB] {
            let (got, probes) = probe_against(want, GIB, limit);
            assert!(got <= limit, "{limit}: {got}");
            assert!(limit - got <= PROBE_PRECISION, "{limit}: {got}");
            assert!(probes < 16, "{limit}: {probes} probes");
        }
        assert_eq!(probe_against(want, GIB, GIB - 1).0, 0);
    }

    #[test]
    fn the_real_probe_grants_a_small_reservation_and_refuses_an_impossible_one() {
        assert!(can_reserve(64 * MIB));
        // More than any 64-bit address space offers.
        assert!(!can_reserve(1 << 62));
        let found = largest_reservable(1 << 62, 64 * MIB, can_reserve);
        assert!(found >= 64 * MIB, "{found}");
    }
}
