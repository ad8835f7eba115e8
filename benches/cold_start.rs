//! Cold start: from the `InstancePre` to a finished minimal `wasi:http` request (whole
//! response body read) and a dropped store, on one thread.
//!
//! - `wasmgate`: `Workload::handle_http`, the path every ingress request takes (partition
//!   admission, store with limits and deadline, request/response resources, guest task).
//! - `bare_wasmtime`: the same request with bare wasmtime-wasi-http calls on the same engine
//!   (see `wasmgate_benches::bare::request`).
//! - `wasmgate_reused`: `Workload::handle_http` of a workload with `reuse` (128 requests
//!   per instance): what instance reuse saves; not a cold start but the same request.
//!
//! Both with the pooling allocator sized as `wasmgate up` sizes it, and with the on-demand
//! allocator (the fallback when the pool cannot be reserved).

use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::Instant;
use wasmgate::workload::{Exports, InstanceReuse, Workload};
use wasmgate_benches::{
    bare, current_thread_runtime, drain, get_request, paired, read_ok, Allocator, OurHost,
    PLAIN_HELLO,
};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

const MAX_BODY: u64 = 16 << 20;
const HTTP_ONLY: Exports = Exports {
    http: true,
    event: false,
};

fn cold_start(c: &mut Criterion) {
    let rt = current_thread_runtime();
    for allocator in [Allocator::Pooling, Allocator::OnDemand] {
        let host = OurHost::new(1, allocator).expect("benchmark host");
        let component = host.compile(PLAIN_HELLO).expect("plain-hello compiles");
        let workload = host.workload(&component, HTTP_ONLY).expect("workload");
        let reusing = host
            .workload_reusing(&component, HTTP_ONLY, Some(InstanceReuse::default()))
            .expect("workload with reuse");
        let partition = host.partitions[0].clone();
        let bare_pre = ProxyPre::new(
            bare::linker(&host.engine.engine)
                .and_then(|l| l.instantiate_pre(&component))
                .expect("bare linker"),
        )
        .expect("plain-hello exports wasi:http");

        // Both paths must answer before either is timed.
        rt.block_on(async {
            let ours = read_ok(workload.clone().handle_http(get_request(), MAX_BODY).await)
                .await
                .expect("wasmgate answers");
            let theirs = bare::request(&bare_pre).await.expect("bare answers");
            assert_eq!(ours, theirs);
            drain(&partition).await;
        });

        let mut bare_routine = |iters: u64| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    bare::request(&bare_pre).await.expect("bare request");
                }
                start.elapsed()
            })
        };
        // `iters` requests through `Workload::handle_http` of `workload`, whole bodies read.
        let requests = |workload: &Arc<Workload>, iters: u64| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let response = workload.clone().handle_http(get_request(), MAX_BODY).await;
                    read_ok(response).await.expect("wasmgate request");
                }
                // The last guest task may still be dropping (or parking) its store.
                drain(&partition).await;
                start.elapsed()
            })
        };
        let mut ours_routine = |iters: u64| requests(&workload, iters);
        let mut reused_routine = |iters: u64| requests(&reusing, iters);

        let label = format!("cold_start/{}", allocator.name());
        paired(
            &label,
            &mut [
                ("bare_wasmtime", &mut bare_routine),
                ("wasmgate", &mut ours_routine),
                ("wasmgate_reused", &mut reused_routine),
            ],
        );
        let mut group = c.benchmark_group(label);
        group.bench_function("bare_wasmtime", |b| b.iter_custom(&mut bare_routine));
        group.bench_function("wasmgate", |b| b.iter_custom(&mut ours_routine));
        group.bench_function("wasmgate_reused", |b| b.iter_custom(&mut reused_routine));
        group.finish();
    }
}

criterion_group!(benches, cold_start);
criterion_main!(benches);
