//! Fixtures shared by the wasmgate benchmarks (`cargo bench -p wasmgate-benches`; method and
//! figures in `BENCHMARKS.md`).
//!
//! Every benchmark pairs wasmgate's own code path ([`OurHost`]: the engine, partitions,
//! linker and [`Workload`] the runtime uses) with a baseline written with bare wasmtime API
//! calls ([`bare`]) on the same engine configuration, measured in the same run, so results
//! are ratios rather than absolute times that only hold on one machine.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmgate::config::Config;
use wasmgate::engine::{EpochTicker, PoolSizing, WasmEngine};
use wasmgate::sandbox::Partition;
use wasmgate::sandbox::PartitionSettings;
use wasmgate::workload::{Exports, InstanceState, Workload, WorkloadSpec};
use wasmgate_host_api::ConfigVars;
use wasmtime::component::{Component, Linker};

pub use wasmgate_examples::PLAIN_HELLO;

/// Turns a `wasmtime::Error` (its own type since wasmtime 48, not `anyhow::Error`) into an
/// `anyhow::Error` that keeps the whole message.
pub trait WasmtimeResultExt<T> {
    fn wt(self) -> anyhow::Result<T>;
}

impl<T> WasmtimeResultExt<T> for wasmtime::Result<T> {
    fn wt(self) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!("{e:#}"))
    }
}

/// The device id of every benchmark host.
pub const DEVICE: &str = "bench";

/// `count` partitions `p0`, `p1`, ... as a config file would declare them: 1 core, 1 GiB,
/// default concurrency (32) and per-instance memory (128 MiB).
pub fn partition_configs(count: usize) -> Vec<PartitionSettings> {
    let mut toml = format!("[device]\nid = \"{DEVICE}\"\n");
    for i in 0..count {
        toml.push_str(&format!(
            "[[partition]]\nid = \"p{i}\"\ncpu = 1.0\nmemory = \"1Gi\"\nstorage = \"64Mi\"\n"
        ));
    }
    Config::parse(&toml)
        .expect("benchmark partition config is valid")
        .partitions
}

/// The pool sizing `wasmgate up` derives from `partitions` (see `host.rs`): one slot per
/// unit of partition concurrency, memories as large as the largest per-instance limit.
pub fn pool_sizing(partitions: &[PartitionSettings]) -> PoolSizing {
    PoolSizing {
        instances: partitions.iter().map(|p| p.concurrency()).sum(),
        max_instance_memory: partitions
            .iter()
            .map(|p| p.instance_memory())
            .max()
            .unwrap_or(wasmgate::sandbox::DEFAULT_INSTANCE_MEMORY),
    }
}

/// Which instance allocator the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    Pooling,
    OnDemand,
}

impl Allocator {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pooling => "pooling",
            Self::OnDemand => "on-demand",
        }
    }
}

/// wasmgate's own objects: the engine as `wasmgate up` builds it (epoch ticker running),
/// partitions opened in a private state directory and the runtime's linker.
pub struct OurHost {
    pub engine: WasmEngine,
    pub partitions: Vec<Arc<Partition>>,
    pub linker: Linker<InstanceState>,
    pub state_dir: tempfile::TempDir,
    _ticker: EpochTicker,
}

impl OurHost {
    pub fn new(partitions: usize, allocator: Allocator) -> anyhow::Result<Self> {
        let configs = partition_configs(partitions);
        let sizing = pool_sizing(&configs);
        let engine = match allocator {
            Allocator::Pooling => WasmEngine::new(sizing)?,
            Allocator::OnDemand => WasmEngine::on_demand(sizing)?,
        };
        anyhow::ensure!(
            (allocator == Allocator::Pooling) == engine.pooling,
            "asked for the {} allocator but the engine has pooling = {}",
            allocator.name(),
            engine.pooling
        );
        let ticker = engine.start_epoch_ticker();
        let state_dir = tempfile::tempdir()?;
        let device = wasmgate::types::DeviceId::parse(DEVICE)?;
        let partitions = configs
            .iter()
            .map(|c| Partition::open(&device, c, state_dir.path()))
            .collect::<Result<Vec<_>, _>>()?;
        let linker = wasmgate::workload::linker(&engine.engine).wt()?;
        Ok(Self {
            engine,
            partitions,
            linker,
            state_dir,
            _ticker: ticker,
        })
    }

    pub fn compile(&self, path: &str) -> anyhow::Result<Component> {
        Component::from_file(&self.engine.engine, path).wt()
    }

    /// A workload as the reconciler builds it: partition `p0`, no parameters, the
    /// partition's default limits.
    pub fn workload(&self, component: &Component, needs: Exports) -> anyhow::Result<Arc<Workload>> {
        self.workload_reusing(component, needs, None)
    }

    /// [`Self::workload`] with `x-wasmgate-extensions.reuse` as given.
    pub fn workload_reusing(
        &self,
        component: &Component,
        needs: Exports,
        reuse: Option<wasmgate::workload::InstanceReuse>,
    ) -> anyhow::Result<Arc<Workload>> {
        let partition = self.partitions[0].clone();
        let spec = WorkloadSpec {
            deployment_id: wasmgate::types::DeploymentId::parse(
                "00000000-0000-4000-8000-000000000001",
            )?,
            deployment_name: "bench".into(),
            component: "plain-hello".into(),
            memory_limit: partition.config.instance_memory(),
            timeout: partition.config.timeout(),
            partition,
            config: Arc::new(ConfigVars::new()),
            data_dir: false,
            outbound: Arc::from(Vec::<String>::new()),
            reuse,
        };
        Ok(Arc::new(Workload::new(
            spec,
            &self.linker,
            component,
            needs,
        )?))
    }
}

/// `GET http://localhost/` with an empty body.
pub fn get_request() -> hyper::Request<Empty<Bytes>> {
    hyper::Request::builder()
        .uri("http://localhost/")
        .body(Empty::new())
        .expect("static request is valid")
}

/// Reads a whole response body, failing on anything but `200`.
pub async fn read_ok<B>(response: hyper::Response<B>) -> anyhow::Result<Bytes>
where
    B: hyper::body::Body,
    B::Error: std::fmt::Display,
{
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
        .to_bytes();
    anyhow::ensure!(
        status == 200,
        "status {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// A single-threaded tokio runtime: every cost of a request (including the spawned guest
/// task and the store drop) is paid on the thread being timed.
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The runtime `wasmgate` itself runs on (multi-threaded, one worker per core).
pub fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// One ApplicationDeployment YAML serving `component` at `/d{index}` from partition
/// `p{index % partitions}`; `greeting` becomes a `wasi:config` parameter, so changing it
/// changes the deployment without changing the component.
pub fn deployment_yaml(
    index: usize,
    partitions: usize,
    component: &Path,
    greeting: &str,
) -> String {
    format!(
        r#"id: 00000000-0000-4000-8000-{index:012x}
metadata:
  name: bench-{index}
  namespace: bench
  deviceId: {DEVICE}/p{partition}
spec:
  applicationId: bench-{index}
  deploymentProfile:
    type: custom
    components:
      - name: web
        properties:
          repository: file:{component}
          revision: "0.1.0"
        x-wasmgate-extensions:
          trigger:
            http:
              route: /d{index}
          limits:
            memory: 16Mi
            timeout: 5s
  parameters:
    greeting:
      value: {greeting}
      targets:
        - pointer: greeting
          components: [web]
"#,
        partition = index % partitions,
        component = component.display(),
    )
}

/// Waits until every instance of `partition` has finished (its spawned guest task has
/// dropped its store and slot).
pub async fn drain(partition: &Partition) {
    let mut spins = 0u32;
    while partition.active_instances() > 0 {
        tokio::task::yield_now().await;
        spins += 1;
        if spins > 1_000_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// One keep-alive HTTP/1.1 connection to a server on loopback.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    /// `GET path`, whole body read; anything but `200` is an error.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Bytes> {
        self.sender.ready().await?;
        let request = hyper::Request::builder()
            .uri(path)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::new())?;
        read_ok(self.sender.send_request(request).await?).await
    }
}

/// The floor under every HTTP figure: hyper answering `body` from memory, no Wasm at all.
pub async fn serve_static(listener: tokio::net::TcpListener, body: &'static [u8]) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request| async move {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    Bytes::from_static(body),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The baseline: the same requests and calls written with bare wasmtime, wasmtime-wasi and
/// wasmtime-wasi-http API calls, the way `wasmtime serve` handles a WASIp2 request.
pub mod bare {
    use super::WasmtimeResultExt;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use std::convert::Infallible;
    use wasmtime::component::{Linker, ResourceTable};
    use wasmtime::{Engine, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
    use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
    use wasmtime_wasi_http::p2::bindings::ProxyPre;
    use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
    use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

    /// The least per-instance state a `wasi:http` host needs.
    pub struct BareState {
        table: ResourceTable,
        wasi: WasiCtx,
        http: WasiHttpCtx,
    }

    impl BareState {
        pub fn new() -> Self {
            Self {
                table: ResourceTable::new(),
                wasi: WasiCtx::builder().build(),
                http: WasiHttpCtx::new(),
            }
        }
    }

    impl Default for BareState {
        fn default() -> Self {
            Self::new()
        }
    }

    impl WasiView for BareState {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl WasiHttpView for BareState {
        fn http(&mut self) -> WasiHttpCtxView<'_> {
            WasiHttpCtxView {
                ctx: &mut self.http,
                table: &mut self.table,
                hooks: wasmtime_wasi_http::default_hooks(),
            }
        }
    }

    /// WASI p2 plus `wasi:http`, as `wasmtime serve` links a p2 proxy.
    pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<BareState>> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Ok(linker)
    }

    /// The same interfaces with synchronous host functions, for a plain synchronous call
    /// (instances from an async linker must be called with `call_async`).
    pub fn sync_linker(engine: &Engine) -> wasmtime::Result<Linker<BareState>> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
        Ok(linker)
    }

    /// A store with no limits; the engine interrupts on epochs, so it needs a deadline,
    /// set (like `wasmtime serve --wasm timeout=...`) to yield at every tick.
    pub fn store(engine: &Engine) -> Store<BareState> {
        let mut store = Store::new(engine, BareState::new());
        store.epoch_deadline_async_yield_and_update(1);
        store.set_epoch_deadline(1);
        store
    }

    /// One request in a fresh instance: new store, request and response resources,
    /// instantiate, call `handle` in a spawned task, read the whole response, and wait for
    /// the task so the store is dropped before returning.
    pub async fn request(pre: &ProxyPre<BareState>) -> anyhow::Result<Bytes> {
        let mut store = store(pre.engine());
        let request = super::get_request().map(|body: Empty<Bytes>| {
            body.map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} })
        });
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .wt()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let out = store.data_mut().http().new_response_outparam(tx).wt()?;
        let pre = pre.clone();
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        });
        let response = rx
            .await?
            .map_err(|code| anyhow::anyhow!("guest error {code:?}"))?;
        let body = super::read_ok(response).await?;
        task.await?.wt()?;
        Ok(body)
    }

    /// Serves `pre` on `listener` the way `wasmtime serve` does for a WASIp2 proxy: hyper
    /// HTTP/1.1 with keep-alive, one fresh instance per request in a spawned task.
    pub async fn serve(listener: tokio::net::TcpListener, pre: ProxyPre<BareState>) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let pre = pre.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| handle(pre.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(
        pre: ProxyPre<BareState>,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> anyhow::Result<hyper::Response<HyperOutgoingBody>> {
        let mut store = store(pre.engine());
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .wt()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let out = store.data_mut().http().new_response_outparam(tx).wt()?;
        tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        });
        rx.await?
            .map_err(|code| anyhow::anyhow!("guest error {code:?}"))
    }

    /// The `margo:edge/event-handler` types are plain component values, the same for
    /// the baseline and the host.
    pub use wasmgate::workload::{Tick, Trigger};
}

/// A timed routine: runs `iters` iterations, returns the time they took.
pub type Routine<'a> = &'a mut dyn FnMut(u64) -> Duration;
/// An owned [`Routine`].
pub type BoxedRoutine<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// Interleaved A/B timing, the source of the ratios in `BENCHMARKS.md`.
///
/// Criterion times one function after the other; on a shared 2-core machine the load of
/// other processes drifts between those windows and moves the ratio. Here every round
/// times a batch (about 10 ms) of each variant in turn, rotating the order, so all
/// variants see the same conditions; the ratio of each variant to the first (the
/// baseline) is taken per round, and its median and interquartile range are printed.
///
/// Runs 30 rounds (10 with `--quick`); skipped when a criterion filter is given that does
/// not match `label`. With `WASMGATE_PAIRED_OUT=FILE` the lines are appended to FILE too.
pub fn paired(label: &str, variants: &mut [(&str, Routine<'_>)]) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let filters: Vec<&String> = args
        .iter()
        .filter(|a| !a.starts_with('-') && a.parse::<f64>().is_err())
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| label.contains(f.as_str())) {
        return;
    }
    let rounds = if args.iter().any(|a| a == "--quick") {
        10
    } else {
        30
    };
    const ROUND: Duration = Duration::from_millis(10);

    // Calibrate a batch size per variant (this also warms it up).
    let batches: Vec<u64> = variants
        .iter_mut()
        .map(|(_, routine)| {
            let mut iters = 1u64;
            loop {
                let took = routine(iters);
                if took >= ROUND / 2 || iters >= 1 << 24 {
                    let per = took.as_secs_f64() / iters as f64;
                    return ((ROUND.as_secs_f64() / per) as u64).max(1);
                }
                iters *= 2;
            }
        })
        .collect();
    let n = variants.len();
    let mut per_iter = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let v = (round + k) % n;
            let took = (variants[v].1)(batches[v]);
            per_iter[v].push(took.as_secs_f64() / batches[v] as f64);
        }
    }

    let quantile = |values: &mut Vec<f64>, q: f64| {
        values.sort_by(f64::total_cmp);
        let pos = q * (values.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
    };
    let mut lines = vec![format!(
        "paired {label}: {rounds} interleaved rounds; median time per iteration; ratio to {} per round: median (interquartile range)",
        variants[0].0
    )];
    for v in 0..n {
        let mut times = per_iter[v].clone();
        let median = quantile(&mut times, 0.5);
        let mut line = format!("  {:<40} {:>12}", variants[v].0, human(median));
        if v > 0 {
            let mut ratios: Vec<f64> = (0..rounds)
                .map(|r| per_iter[v][r] / per_iter[0][r])
                .collect();
            line.push_str(&format!(
                "   {:.3}x ({:.3}..{:.3})",
                quantile(&mut ratios, 0.5),
                quantile(&mut ratios, 0.25),
                quantile(&mut ratios, 0.75)
            ));
        }
        lines.push(line);
    }
    let text = lines.join("\n") + "\n";
    print!("{text}");
    if let Some(path) = std::env::var_os("WASMGATE_PAIRED_OUT") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = file.write_all(text.as_bytes());
        }
    }
}

/// `seconds` with a unit a person reads at a glance.
fn human(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.3} s")
    } else if seconds >= 1e-3 {
        format!("{:.3} ms", seconds * 1e3)
    } else if seconds >= 1e-6 {
        format!("{:.2} us", seconds * 1e6)
    } else {
        format!("{:.1} ns", seconds * 1e9)
    }
}
