//! End to end over loopback: an in-process hyper client sends `GET` on one keep-alive
//! connection, the server runs a fresh instance of `plain-hello`, and the whole response
//! comes back. Servers run on a multi-threaded tokio runtime like the `wasmgate` binary.
//!
//! - `wasmgate`: the real ingress (`wasmgate::ingress::serve`) with routes published by
//!   the real reconciler from the document `wasmgate run` builds.
//! - `bare_wasmtime`: hyper plus bare wasmtime-wasi-http calls on the same engine, the way
//!   `wasmtime serve` handles a WASIp2 request.
//! - `hyper_static`: hyper answering the same bytes from memory; the floor.

use criterion::{criterion_group, criterion_main, Criterion};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use wasmgate::deploy::{Reconciler, StatusBoard};
use wasmgate::engine::AotCache;
use wasmgate::ingress;
use wasmgate::trigger::{self, HttpTrigger};
use wasmgate_benches::{
    bare, multi_thread_runtime, paired, serve_static, Allocator, BoxedRoutine, Client, OurHost,
    Routine, PLAIN_HELLO,
};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

const BODY: &[u8] = b"Hello, world!\n";

fn http_e2e(c: &mut Criterion) {
    let rt = multi_thread_runtime();
    let host = OurHost::new(1, Allocator::Pooling).expect("benchmark host");
    let engine = host.engine.engine.clone();

    let (ours, bare_addr, static_addr, _reconciler) = rt.block_on(async {
        // wasmgate: reconciler + ingress, as `wasmgate run plain_hello.wasm` sets them up.
        let routes = trigger::shared_routes();
        let aot = AotCache::new(&engine, host.state_dir.path().join("aot"));
        let mut reconciler = Reconciler::new(
            host.engine.clone(),
            aot,
            wasmgate_benches::DEVICE.to_owned(),
            host.partitions.clone(),
            routes.clone(),
            Arc::new(StatusBoard::default()),
        )
        .expect("reconciler");
        let document = wasmgate::host::single_component_document(Path::new(PLAIN_HELLO), None)
            .expect("document");
        reconciler.apply(vec![document]).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = listener.local_addr().unwrap();
        tokio::spawn(ingress::serve(
            listener,
            HttpTrigger {
                routes,
                max_body: 16 << 20,
            },
        ));

        let component = host.compile(PLAIN_HELLO).expect("compiles");
        let pre = ProxyPre::new(
            bare::linker(&engine)
                .and_then(|l| l.instantiate_pre(&component))
                .expect("bare linker"),
        )
        .expect("proxy");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_addr = listener.local_addr().unwrap();
        tokio::spawn(bare::serve(listener, pre));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let static_addr = listener.local_addr().unwrap();
        tokio::spawn(serve_static(listener, BODY));
        (ours, bare_addr, static_addr, reconciler)
    });

    let clients: Vec<(&str, Client)> = [
        ("hyper_static", static_addr),
        ("bare_wasmtime", bare_addr),
        ("wasmgate", ours),
    ]
    .into_iter()
    .map(|(name, addr)| {
        rt.block_on(async {
            let mut client = Client::connect(addr).await.expect("connect");
            let body = client.get("/").await.expect("first request");
            assert_eq!(&body[..], BODY, "{name} answers");
            (name, client)
        })
    })
    .collect();
    let mut routines: Vec<(&str, BoxedRoutine<'_>)> = clients
        .into_iter()
        .map(|(name, mut client)| {
            let rt = &rt;
            let routine = move |iters: u64| {
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
    // Baseline first: bare_wasmtime, then the static floor and wasmgate.
    routines.swap(0, 1);
    {
        let mut variants: Vec<(&str, Routine<'_>)> = routines
            .iter_mut()
            .map(|(name, routine)| (*name, routine.as_mut() as Routine<'_>))
            .collect();
        paired("http_e2e", &mut variants);
    }
    let mut group = c.benchmark_group("http_e2e");
    for (name, routine) in routines.iter_mut() {
        group.bench_function(*name, |b| b.iter_custom(&mut *routine));
    }
    group.finish();
}

criterion_group!(benches, http_e2e);
criterion_main!(benches);
