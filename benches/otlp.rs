//! The request hot path with the OTLP pipeline on and off, end to end over loopback as
//! in `http_e2e`: a keep-alive hyper client, the real ingress and reconciler serving
//! `plain-hello`.
//!
//! - `off`: the workload was deployed before any pipeline existed (its OTLP metric
//!   instruments are no-ops) and the export layers are switched off: what the binary
//!   does with `[telemetry] enabled = false`.
//! - `on`: a second deployment built after the pipeline started (its instruments
//!   record), the export layers on: two spans per request (`http.request`,
//!   `wasmgate.guest`) queued and exported every 100 ms to a loopback receiver.

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt;
use wasmgate::deploy::{Reconciler, StatusBoard};
use wasmgate::engine::AotCache;
use wasmgate::ingress;
use wasmgate::telemetry::{OtlpSettings, Pipeline};
use wasmgate::trigger::{self, HttpTrigger};
use wasmgate_benches::{
    multi_thread_runtime, paired, serve_static, Allocator, BoxedRoutine, Client, OurHost, Routine,
    PLAIN_HELLO,
};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// A reconciler serving `plain-hello` on a fresh ingress listener.
async fn serve(host: &OurHost) -> (std::net::SocketAddr, Reconciler) {
    let routes = trigger::shared_routes();
    let aot = AotCache::new(&host.engine.engine, host.state_dir.path().join("aot"));
    let mut reconciler = Reconciler::new(
        host.engine.clone(),
        aot,
        wasmgate_benches::DEVICE.to_owned(),
        host.partitions.clone(),
        routes.clone(),
        Arc::new(StatusBoard::default()),
    )
    .expect("reconciler");
    let document =
        wasmgate::host::single_component_document(Path::new(PLAIN_HELLO), None).expect("document");
    reconciler.apply(vec![document]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ingress::serve(
        listener,
        HttpTrigger {
            routes,
            max_body: 16 << 20,
        },
    ));
    (addr, reconciler)
}

fn otlp(c: &mut Criterion) {
    let rt = multi_thread_runtime();
    let off_host = OurHost::new(1, Allocator::Pooling).expect("benchmark host");
    let on_host = OurHost::new(1, Allocator::Pooling).expect("benchmark host");
    let (off_addr, _off) = rt.block_on(serve(&off_host));

    // The collector: answers every export 200 with an empty body.
    let collector = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_static(listener, b""));
        addr
    });
    let pipeline = Pipeline::start(&OtlpSettings {
        endpoint: Some(format!("http://{collector}")),
        export_interval: Some(Duration::from_millis(100)),
        device_id: Some(wasmgate_benches::DEVICE.to_owned()),
    })
    .expect("pipeline")
    .expect("an endpoint is set");
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(wasmgate::telemetry::export_layers(&pipeline, || {
            EXPORTING.load(Ordering::Relaxed)
        }));
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
    let (on_addr, _on) = rt.block_on(serve(&on_host));

    let mut routines: Vec<(&str, BoxedRoutine<'_>)> =
        [("off", off_addr, false), ("on", on_addr, true)]
            .into_iter()
            .map(|(name, addr, exporting)| {
                let mut client = rt.block_on(async {
                    let mut client = Client::connect(addr).await.expect("connect");
                    client.get("/").await.expect("first request");
                    client
                });
                let rt = &rt;
                let routine = move |iters: u64| {
                    EXPORTING.store(exporting, Ordering::Relaxed);
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            client.get("/").await.expect("request");
                        }
                        start.elapsed()
                    })
                };
                (name, Box::new(routine) as BoxedRoutine<'_>)
            })
            .collect();
    {
        let mut variants: Vec<(&str, Routine<'_>)> = routines
            .iter_mut()
            .map(|(name, routine)| (*name, routine.as_mut() as Routine<'_>))
            .collect();
        paired("otlp", &mut variants);
    }
    let mut group = c.benchmark_group("otlp");
    for (name, routine) in routines.iter_mut() {
        group.bench_function(*name, |b| b.iter_custom(&mut *routine));
    }
    group.finish();
    EXPORTING.store(false, Ordering::Relaxed);
    eprintln!(
        "otlp: spans dropped {} (queue full or export failed)",
        wasmgate::telemetry::otlp::dropped_total(wasmgate::telemetry::Signal::Traces)
    );
    pipeline.shutdown(Duration::from_secs(2));
}

criterion_group!(benches, otlp);
criterion_main!(benches);
