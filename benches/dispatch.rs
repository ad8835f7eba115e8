//! Warm dispatch: calling `margo:edge/event-handler.handle` (it returns at once) on an
//! instance that is already instantiated, so only the cost of a call is measured.
//!
//! - `wasmgate`: `Workload::call_tick` in a store from `Workload::new_store` (limits, CPU
//!   clock, epoch deadline callback), exactly as a timer event is delivered.
//! - `bare_wasmtime_async`: a cached `TypedFunc` and `call_async` in a bare store on the same
//!   engine.
//! - `bare_wasmtime_async_lookup_per_call`: `get_typed_func` + `call_async` per call, as
//!   `wasmgate` does (once per fresh instance in production).
//! - `bare_wasmtime_sync`: a cached `TypedFunc` with a plain synchronous `call` (synchronous
//!   WASI host functions): the cheapest call wasmtime offers.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};
use wasmgate::workload::{Exports, Tick};
use wasmgate_benches::{bare, current_thread_runtime, paired, Allocator, OurHost, PLAIN_HELLO};

const EVENT_ONLY: Exports = Exports {
    http: false,
    event: true,
};
const TICK: Tick = Tick {
    sequence: 7,
    scheduled_at_ms: 1_700_000_000_000,
    period_ms: 1000,
};
const BARE_TICK: bare::Tick = bare::Tick {
    sequence: 7,
    scheduled_at_ms: 1_700_000_000_000,
    period_ms: 1000,
};

fn dispatch(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let host = OurHost::new(1, Allocator::Pooling).expect("benchmark host");
    let engine = host.engine.engine.clone();
    let component = host.compile(PLAIN_HELLO).expect("plain-hello compiles");
    let workload = host.workload(&component, EVENT_ONLY).expect("workload");

    let (_, interface) = component
        .get_export(None, "margo:edge/event-handler@0.1.0")
        .expect("plain-hello exports the event handler");
    let (_, handle) = component
        .get_export(Some(&interface), "handle")
        .expect("event-handler.handle");
    let bare_pre = bare::linker(&engine)
        .and_then(|l| l.instantiate_pre(&component))
        .expect("bare linker");
    let sync_pre = bare::sync_linker(&engine)
        .and_then(|l| l.instantiate_pre(&component))
        .expect("bare sync linker");

    // No epoch yields (a synchronous call cannot yield): a deadline far away.
    let mut sync_store = wasmtime::Store::new(&engine, bare::BareState::new());
    sync_store.set_epoch_deadline(1 << 40);
    let sync_instance = sync_pre
        .instantiate(&mut sync_store)
        .expect("bare instance");
    let sync_func = sync_instance
        .get_typed_func::<(bare::Trigger,), (Result<(), String>,)>(&mut sync_store, &handle)
        .expect("handle has the expected type");
    let mut bare_sync = |iters: u64| {
        let start = Instant::now();
        for _ in 0..iters {
            let (outcome,) = sync_func
                .call(&mut sync_store, (bare::Trigger::Timer(BARE_TICK),))
                .expect("bare call");
            outcome.expect("handler succeeds");
        }
        start.elapsed()
    };

    let mut async_store = bare::store(&engine);
    let async_instance = rt
        .block_on(bare_pre.instantiate_async(&mut async_store))
        .expect("bare instance");
    let async_func = async_instance
        .get_typed_func::<(bare::Trigger,), (Result<(), String>,)>(&mut async_store, &handle)
        .expect("handle has the expected type");
    let mut bare_async = |iters: u64| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let (outcome,) = async_func
                    .call_async(&mut async_store, (bare::Trigger::Timer(BARE_TICK),))
                    .await
                    .expect("bare call");
                outcome.expect("handler succeeds");
            }
            start.elapsed()
        })
    };

    // What `get_typed_func` (export lookup + type check) adds when done per call, as
    // wasmgate does once per fresh instance (and wasmtime's bindgen'd `*Pre` types too).
    let mut lookup_store = bare::store(&engine);
    let lookup_instance = rt
        .block_on(bare_pre.instantiate_async(&mut lookup_store))
        .expect("bare instance");
    let mut bare_lookup = |iters: u64| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                let func = lookup_instance
                    .get_typed_func::<(bare::Trigger,), (Result<(), String>,)>(
                        &mut lookup_store,
                        &handle,
                    )
                    .expect("handle has the expected type");
                let (outcome,) = func
                    .call_async(&mut lookup_store, (bare::Trigger::Timer(BARE_TICK),))
                    .await
                    .expect("bare call");
                outcome.expect("handler succeeds");
            }
            start.elapsed()
        })
    };

    // A store's deadline runs from its creation (30 s by default): renew the store and
    // instance between batches once it is 10 s old, never inside a timed batch.
    let mut ours_state: Option<(Instant, wasmtime::Store<_>, wasmtime::component::Instance)> = None;
    let mut ours = |iters: u64| {
        rt.block_on(async {
            if ours_state
                .as_ref()
                .is_none_or(|(born, _, _)| born.elapsed() > Duration::from_secs(10))
            {
                let mut store = workload.new_store().expect("store");
                let instance = workload
                    .instance_pre()
                    .instantiate_async(&mut store)
                    .await
                    .expect("instance");
                ours_state = Some((Instant::now(), store, instance));
            }
            let (_, store, instance) = ours_state.as_mut().expect("just set");
            let start = Instant::now();
            for _ in 0..iters {
                workload
                    .call_tick(store, instance, TICK)
                    .await
                    .expect("wasmgate call")
                    .expect("handler succeeds");
            }
            start.elapsed()
        })
    };

    paired(
        "dispatch",
        &mut [
            ("bare_wasmtime_async", &mut bare_async),
            ("bare_wasmtime_sync", &mut bare_sync),
            ("bare_wasmtime_async_lookup_per_call", &mut bare_lookup),
            ("wasmgate", &mut ours),
        ],
    );
    let mut group = c.benchmark_group("dispatch");
    group.bench_function("bare_wasmtime_sync", |b| b.iter_custom(&mut bare_sync));
    group.bench_function("bare_wasmtime_async", |b| b.iter_custom(&mut bare_async));
    group.bench_function("bare_wasmtime_async_lookup_per_call", |b| {
        b.iter_custom(&mut bare_lookup)
    });
    group.bench_function("wasmgate", |b| b.iter_custom(&mut ours));
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
