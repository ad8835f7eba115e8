//! Applying a desired state of N deployments over 8 partitions, from local YAMLs (read and
//! parsed each time, as local mode does), with the component already in the AOT cache.
//!
//! - `apply/wasmgate/N`: a fresh reconciler brought from nothing to N deployments
//!   (`deploy::local::scan` + `Reconciler::apply`).
//! - `apply/bare_wasmtime/N`: the wasmtime work those N deployments cannot avoid: read the
//!   component, map the cached compiled code, link it (`instantiate_pre` + `ProxyPre`).
//! - `change_1_of_1000/*`: one of 1000 running deployments gets a new parameter value;
//!   the folder is polled by one `FolderWatch` kept across passes, as `wasmgate up` does
//!   (a fresh scan per pass re-read all 1000 YAMLs, which local mode never does).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmgate::deploy::{local, DeploymentState, Reconciler, StatusBoard};
use wasmgate::engine::AotCache;
use wasmgate_benches::{bare, deployment_yaml, paired, Allocator, OurHost, PLAIN_HELLO};
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

const PARTITIONS: usize = 8;
const SIZES: [usize; 3] = [10, 100, 1000];

fn reconciler(host: &OurHost, aot_dir: &Path) -> Reconciler {
    Reconciler::new(
        host.engine.clone(),
        AotCache::new(&host.engine.engine, aot_dir),
        wasmgate_benches::DEVICE.to_owned(),
        host.partitions.clone(),
        wasmgate::trigger::shared_routes(),
        Arc::new(StatusBoard::default()),
    )
    .expect("reconciler")
}

fn write_deployments(dir: &Path, count: usize, component: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        std::fs::write(
            dir.join(format!("d{i:04}.yaml")),
            deployment_yaml(i, PARTITIONS, component, "Hello"),
        )
        .unwrap();
    }
}

/// Scans `dir` and applies it, as one pass of local mode does.
async fn reconcile(reconciler: &mut Reconciler, dir: &Path) {
    let scan = local::scan(dir, &reconciler.watched_files()).expect("scan");
    reconciler.apply(scan.documents).await;
}

fn assert_installed(reconciler: &Reconciler, count: usize) {
    let snapshot = reconciler.status().snapshot();
    let installed = snapshot
        .deployments
        .iter()
        .filter(|d| d.state == DeploymentState::Installed)
        .count();
    if installed != count {
        let failure = snapshot.deployments.iter().find_map(|d| d.error.as_ref());
        panic!("{installed} of {count} deployments installed; first error: {failure:?}");
    }
}

fn reconcile_benches(c: &mut Criterion) {
    let rt = wasmgate_benches::multi_thread_runtime();
    let host = OurHost::new(PARTITIONS, Allocator::Pooling).expect("benchmark host");
    let engine = host.engine.engine.clone();
    let scratch = tempfile::tempdir().unwrap();
    let component_path = scratch.path().join("plain-hello.wasm");
    std::fs::copy(PLAIN_HELLO, &component_path).unwrap();
    let aot_dir = scratch.path().join("aot");

    // Warm the AOT cache (components cached) and find its entry for the baseline.
    AotCache::new(&engine, &aot_dir)
        .load_or_compile(&engine, &std::fs::read(&component_path).unwrap())
        .expect("compiles");
    let entry = std::fs::read_dir(&aot_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("cache entry");
    let bare_linker = bare::linker(&engine).unwrap();
    let bare_deploy = |count: usize| {
        for _ in 0..count {
            black_box(std::fs::read(&component_path).unwrap());
            // SAFETY: written above by `precompile_component` of this engine.
            let component = unsafe { Component::deserialize_file(&engine, &entry) }.unwrap();
            let pre = bare_linker.instantiate_pre(&component).unwrap();
            black_box(ProxyPre::new(pre).unwrap());
        }
    };

    let mut group = c.benchmark_group("reconcile");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for count in SIZES {
        let dir = scratch.path().join(format!("deployments-{count}"));
        write_deployments(&dir, count, &component_path);
        let mut bare_routine = |iters: u64| {
            let start = Instant::now();
            for _ in 0..iters {
                bare_deploy(count);
            }
            start.elapsed()
        };
        let mut ours_routine = |iters: u64| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut r = reconciler(&host, &aot_dir);
                let start = Instant::now();
                rt.block_on(reconcile(&mut r, &dir));
                total += start.elapsed();
                assert_installed(&r, count);
                // Tearing down the deployments is not part of applying them.
                drop(r);
            }
            total
        };
        paired(
            &format!("reconcile/apply/{count}"),
            &mut [
                ("bare_wasmtime", &mut bare_routine),
                ("wasmgate", &mut ours_routine),
            ],
        );
        group.bench_function(BenchmarkId::new("apply/bare_wasmtime", count), |b| {
            b.iter_custom(&mut bare_routine)
        });
        group.bench_function(BenchmarkId::new("apply/wasmgate", count), |b| {
            b.iter_custom(&mut ours_routine)
        });
    }

    let dir = scratch.path().join("deployments-1000");
    let mut r = reconciler(&host, &aot_dir);
    let mut watch = local::FolderWatch::new(&dir);
    let pass = |r: &mut Reconciler, watch: &mut local::FolderWatch| {
        watch.poll(&r.watched_files()).expect("poll");
        rt.block_on(r.apply(watch.documents()));
    };
    pass(&mut r, &mut watch);
    assert_installed(&r, 1000);
    let mut version = 0u64;
    let mut bare_routine = |iters: u64| {
        let start = Instant::now();
        for _ in 0..iters {
            bare_deploy(1);
        }
        start.elapsed()
    };
    let mut ours_routine = |iters: u64| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            version += 1;
            let yaml = deployment_yaml(500, PARTITIONS, &component_path, &format!("Hi{version}"));
            std::fs::write(dir.join("d0500.yaml"), yaml).unwrap();
            let start = Instant::now();
            pass(&mut r, &mut watch);
            total += start.elapsed();
        }
        total
    };
    paired(
        "reconcile/change_1_of_1000",
        &mut [
            ("bare_wasmtime", &mut bare_routine),
            ("wasmgate", &mut ours_routine),
        ],
    );
    group.bench_function("change_1_of_1000/bare_wasmtime", |b| {
        b.iter_custom(&mut bare_routine)
    });
    group.bench_function("change_1_of_1000/wasmgate", |b| {
        b.iter_custom(&mut ours_routine)
    });
    group.finish();
    assert_installed(&r, 1000);
}

criterion_group!(benches, reconcile_benches);
criterion_main!(benches);
