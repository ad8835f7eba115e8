//! A deployed component: its pre-instantiated form, its triggers and the per-request /
//! per-event instance lifecycle. Every request or event gets a fresh `Store` and
//! instance from the pool, and nothing a guest does survives its call except what it
//! wrote through the platform services, unless the component opts into instance reuse
//! for its HTTP requests ([`reuse`]).

mod body;
mod event;
mod http;
mod outbound;
mod output;
mod reuse;
mod state;

pub use body::{
    BodyRate, GRACE as BODY_GRACE, MIN_RATE as BODY_MIN_RATE, PREFETCH as BODY_PREFETCH,
};
pub use event::{EventExport, Tick, Trigger};
pub use http::{error_response, ResponseBody};
pub use outbound::OutboundPolicy;
pub use reuse::InstanceReuse;
pub use state::InstanceState;

use crate::sandbox::{MemoryDenial, Partition};
use crate::telemetry::{FailureKind, WorkloadMetrics};
use crate::types::DeploymentId;
use state::GuestClock;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmgate_host_api::{ConfigVars, Platform, PlatformInputs};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::WasiHttpCtx;

/// The interfaces every guest can import. Guests built with Rust `std` import
/// `wasi:cli` and `wasi:filesystem` even when they only serve HTTP, so all of WASI p2
/// is linked, granting nothing by default: no environment, no preopens, no sockets.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    wasmgate_host_api::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Everything about a workload that is decided at deploy time.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    pub deployment_id: DeploymentId,
    pub deployment_name: String,
    pub component: String,
    pub partition: Arc<Partition>,
    pub config: Arc<ConfigVars>,
    /// Most linear memory one instance may use.
    pub memory_limit: u64,
    /// Deadline of one request or event.
    pub timeout: Duration,
    /// Preopen the deployment's private directory as `/data`.
    pub data_dir: bool,
    pub outbound: Arc<[String]>,
    /// Serve HTTP requests from reused instances instead of one instance each.
    pub reuse: Option<InstanceReuse>,
}

impl WorkloadSpec {
    /// `name (component)` for messages.
    pub fn label(&self) -> String {
        format!(
            "deployment {} component {}",
            self.deployment_name, self.component
        )
    }
}

/// Why an invocation produced no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvocationError {
    #[error("{label}: {source}")]
    Busy {
        label: String,
        source: crate::sandbox::AdmissionError,
    },
    #[error("{label} exceeded its deadline of {timeout:?} and was stopped")]
    Timeout { label: String, timeout: Duration },
    #[error("{label} exceeded its instance memory limit of {} (asked for {})", crate::units::ByteSize(*limit), crate::units::ByteSize(*requested))]
    InstanceMemory {
        label: String,
        limit: u64,
        requested: u64,
    },
    #[error("{label}: partition {partition} memory budget of {} is exhausted by other live instances; retry later", crate::units::ByteSize(*limit))]
    PartitionMemory {
        label: String,
        partition: String,
        limit: u64,
    },
    #[error("{label} trapped: {message}")]
    Trap { label: String, message: String },
    #[error("{label} failed: {message}")]
    Failed { label: String, message: String },
}

impl InvocationError {
    /// The HTTP status that tells a client what happened.
    pub fn status(&self) -> u16 {
        match self {
            Self::Busy { .. } | Self::InstanceMemory { .. } | Self::PartitionMemory { .. } => 503,
            Self::Timeout { .. } => 504,
            Self::Trap { .. } | Self::Failed { .. } => 500,
        }
    }

    pub fn retryable(&self) -> bool {
        matches!(self, Self::Busy { .. } | Self::PartitionMemory { .. })
    }

    /// The `kind` label this failure is counted under.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Busy { .. } => FailureKind::Queue,
            Self::Timeout { .. } => FailureKind::Deadline,
            Self::InstanceMemory { .. } | Self::PartitionMemory { .. } => FailureKind::Memory,
            Self::Trap { .. } => FailureKind::Trap,
            Self::Failed { .. } => FailureKind::Error,
        }
    }
}

pub struct Workload {
    pub spec: WorkloadSpec,
    pre: InstancePre<InstanceState>,
    http: Option<ProxyPre<InstanceState>>,
    event: Option<EventExport>,
    /// Taken once when the workload is built, so a request records without a lookup.
    pub metrics: WorkloadMetrics,
    /// The platform imports, configured once; every instance clones its part.
    platform: Platform,
    /// The `outbound` allow-list, parsed once.
    outbound: OutboundPolicy,
    /// Names this workload's instances parked in its partition.
    owner: u64,
}

impl Drop for Workload {
    fn drop(&mut self) {
        // A replaced or removed deployment's parked instances end with it.
        self.spec.partition.idle().discard(self.owner);
    }
}

/// Hands out [`Workload::owner`]s.
static OWNERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("spec", &self.spec)
            .finish()
    }
}

/// What a trigger needs from the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exports {
    pub http: bool,
    pub event: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{label}: the component cannot be linked: {message}")]
    Link { label: String, message: String },
    #[error("{label}: {trigger} trigger needs a component that exports {export}, but this one does not ({detail})")]
    MissingExport {
        label: String,
        trigger: &'static str,
        export: &'static str,
        detail: String,
    },
}

impl Workload {
    /// Links `component` and checks it exports what its triggers need.
    pub fn new(
        spec: WorkloadSpec,
        linker: &Linker<InstanceState>,
        component: &Component,
        needs: Exports,
    ) -> Result<Self, WorkloadError> {
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| WorkloadError::Link {
                label: spec.label(),
                message: format!("{e:#}"),
            })?;
        let http = if needs.http {
            Some(
                ProxyPre::new(pre.clone()).map_err(|e| WorkloadError::MissingExport {
                    label: spec.label(),
                    trigger: "http",
                    export: "wasi:http/incoming-handler@0.2.x",
                    detail: format!("{e:#}"),
                })?,
            )
        } else {
            None
        };
        let event = if needs.event {
            Some(
                EventExport::find(&pre).map_err(|detail| WorkloadError::MissingExport {
                    label: spec.label(),
                    trigger: "timer",
                    export: "margo:edge/event-handler@0.1.0",
                    detail,
                })?,
            )
        } else {
            None
        };
        let platform = Platform::configure(PlatformInputs {
            deployment_id: &spec.deployment_id,
            deployment: &spec.deployment_name,
            component: &spec.component,
            partition: spec.partition.device_id.as_str(),
            config: spec.config.clone(),
            kv: Some(&spec.partition.kv),
        });
        let outbound = OutboundPolicy::new(&spec.outbound);
        Ok(Self {
            spec,
            pre,
            http,
            event,
            metrics: WorkloadMetrics::detached(),
            platform,
            outbound,
            owner: OWNERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Records into `metrics` (the host's registry) instead of detached counters.
    pub fn with_metrics(mut self, metrics: WorkloadMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn engine(&self) -> &Engine {
        self.pre.engine()
    }

    /// The linked, pre-instantiated component every request or event instantiates.
    pub fn instance_pre(&self) -> &InstancePre<InstanceState> {
        &self.pre
    }

    /// A fresh store with this workload's limits; the deadline starts now. Public so the
    /// benchmarks time the very store every request gets.
    pub fn new_store(&self) -> Result<Store<InstanceState>, InvocationError> {
        let spec = &self.spec;
        // A fresh instance takes a pool slot: parked ones of any workload make way first
        // (timer events included, which never reuse).
        spec.partition.make_room();
        let mut wasi = WasiCtxBuilder::new();
        let log = self.platform.log();
        wasi.stdout(output::GuestOutput::stdout(log.clone()))
            .stderr(output::GuestOutput::stderr(log.clone()));
        if spec.data_dir {
            let dir = spec
                .partition
                .data_dir(&spec.deployment_id)
                .map_err(|e| self.failed(format!("cannot create its data directory: {e}")))?;
            let perms = if spec.partition.storage_full() {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(&dir, "/data", perms)
                .map_err(|e| self.failed(format!("cannot open its data directory: {e:#}")))?;
        }
        let state = InstanceState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            outbound: self.outbound.clone(),
            wasmgate: self.platform.instance(),
            limiter: crate::sandbox::InstanceLimiter::new(
                spec.memory_limit,
                spec.partition.memory.clone(),
            )
            .reclaiming(spec.partition.idle().clone()),
            clock: GuestClock::new(spec.timeout, spec.partition.cpu.clone()),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().clock.on_epoch()));
        Ok(store)
    }

    fn failed(&self, message: String) -> InvocationError {
        InvocationError::Failed {
            label: self.spec.label(),
            message,
        }
    }

    /// Turns a failed call into the most specific explanation the store can give.
    fn classify(&self, state: &InstanceState, err: &wasmtime::Error) -> InvocationError {
        let label = self.spec.label();
        if state.clock.timed_out {
            return InvocationError::Timeout {
                label,
                timeout: self.spec.timeout,
            };
        }
        match &state.limiter.denial {
            Some(MemoryDenial::Instance { limit, requested }) => {
                return InvocationError::InstanceMemory {
                    label,
                    limit: *limit,
                    requested: *requested,
                }
            }
            Some(MemoryDenial::Partition { limit }) => {
                return InvocationError::PartitionMemory {
                    label,
                    partition: self.spec.partition.device_id.to_string(),
                    limit: *limit,
                }
            }
            None => {}
        }
        match err.downcast_ref::<Trap>() {
            Some(trap) => InvocationError::Trap {
                label,
                message: trap.to_string(),
            },
            None => InvocationError::Failed {
                label,
                message: format!("{err:#}"),
            },
        }
    }

    /// Runs `instantiate` and records how long it took as a cold start.
    async fn timed_instantiate<T>(&self, instantiate: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let instance = instantiate.await;
        let elapsed = started.elapsed();
        self.metrics.cold_start(elapsed);
        // On the request's span when there is one (a no-op otherwise).
        tracing::Span::current().record("wasmgate.instantiate_us", elapsed.as_micros() as u64);
        instance
    }

    /// Counts one finished invocation that began at `started`.
    fn record(&self, result: &Result<(), InvocationError>, started: Instant) {
        let failure = result.as_ref().err().map(InvocationError::kind);
        self.metrics.invocation(started.elapsed(), failure);
        if let Err(err) = result {
            tracing::warn!(
                deployment = %self.spec.deployment_name,
                component = %self.spec.component,
                partition = %self.spec.partition.device_id,
                error = %err,
                "invocation failed"
            );
        }
    }
}
