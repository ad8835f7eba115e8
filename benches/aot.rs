//! Compiling a component versus loading it from the AOT cache, for every example guest.
//!
//! - `compile/wasmgate`: `AotCache::load_or_compile` on an empty cache: hash, compile with
//!   Cranelift, write the entry atomically, load it (what a first deployment pays).
//! - `compile/bare_wasmtime`: `Component::new` on the same bytes.
//! - `load/wasmgate`: `AotCache::load_or_compile` on a warm cache: hash the bytes, find
//!   the entry, check its sha256, map it (what a restart pays; the table of loaded
//!   components is emptied before each load).
//! - `shared/wasmgate`: the same call while the component is loaded already (what a
//!   second deployment of the same bytes pays: hash the bytes, one table lookup).
//! - `load/bare_wasmtime`: `Component::deserialize_file` of the same entry.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};
use wasmgate::engine::AotCache;
use wasmgate_benches::{paired, Allocator, OurHost};
use wasmtime::component::Component;

fn aot(c: &mut Criterion) {
    let host = OurHost::new(1, Allocator::Pooling).expect("benchmark host");
    let engine = host.engine.engine.clone();
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut fresh = 0u64;

    for (name, path) in wasmgate_examples::all() {
        let bytes = std::fs::read(path).expect("example component");
        let mut compile_bare = |iters: u64| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(Component::new(&engine, &bytes).expect("compiles"));
            }
            start.elapsed()
        };
        let mut compile_ours = |iters: u64| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fresh += 1;
                let cache = AotCache::new(&engine, scratch.path().join(format!("cold-{fresh}")));
                let start = Instant::now();
                black_box(cache.load_or_compile(&engine, &bytes).expect("compiles"));
                total += start.elapsed();
            }
            total
        };

        let warm_dir = scratch.path().join(format!("warm-{name}"));
        let warm = AotCache::new(&engine, &warm_dir);
        warm.load_or_compile(&engine, &bytes).expect("compiles");
        let entry = std::fs::read_dir(&warm_dir)
            .expect("cache dir")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .expect("one cache entry");
        let mut load_bare = |iters: u64| {
            let start = Instant::now();
            for _ in 0..iters {
                // SAFETY: written just above by `precompile_component` of this engine.
                black_box(unsafe { Component::deserialize_file(&engine, &entry) }.expect("loads"));
            }
            start.elapsed()
        };
        let mut load_ours = |iters: u64| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                warm.retain_loaded(&BTreeSet::new());
                let start = Instant::now();
                black_box(warm.load_or_compile(&engine, &bytes).expect("loads"));
                total += start.elapsed();
            }
            total
        };
        let mut shared_ours = |iters: u64| {
            warm.load_or_compile(&engine, &bytes).expect("loads");
            let start = Instant::now();
            for _ in 0..iters {
                black_box(warm.load_or_compile(&engine, &bytes).expect("loads"));
            }
            start.elapsed()
        };

        let label = format!("aot/{name}");
        paired(
            &format!("{label}/compile"),
            &mut [
                ("bare_wasmtime", &mut compile_bare),
                ("wasmgate", &mut compile_ours),
            ],
        );
        paired(
            &format!("{label}/load"),
            &mut [
                ("bare_wasmtime", &mut load_bare),
                ("wasmgate", &mut load_ours),
            ],
        );
        let mut group = c.benchmark_group(label);
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .measurement_time(Duration::from_secs(4));
        group.bench_function("compile/bare_wasmtime", |b| {
            b.iter_custom(&mut compile_bare)
        });
        group.bench_function("compile/wasmgate", |b| b.iter_custom(&mut compile_ours));
        group.bench_function("load/bare_wasmtime", |b| b.iter_custom(&mut load_bare));
        group.bench_function("load/wasmgate", |b| b.iter_custom(&mut load_ours));
        group.bench_function("shared/wasmgate", |b| b.iter_custom(&mut shared_ours));
        group.finish();
    }
}

criterion_group!(benches, aot);
criterion_main!(benches);
