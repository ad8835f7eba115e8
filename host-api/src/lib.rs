//! Host side of the `margo:edge` platform imports.
//!
//! Every wasmgate world imports the same platform services; this crate implements them
//! for a wasmtime [`Store`](wasmtime::Store) whose data implements [`WasmgateView`]:
//!
//! - [`config`]: `wasi:config/store`, backed by the deployment's `parameters`;
//! - [`keyvalue`]: `wasi:keyvalue/store` + `atomics`, backed by a durable per-partition
//!   [`KvStore`] on disk with a storage quota;
//! - [`logging`]: `wasi:logging/logging`, forwarded to `tracing` with deployment,
//!   component and partition fields.
//!
//! Each capability has two steps, as Spin's factors do: [`Platform::configure`] runs once
//! per workload (a component placed in a partition) and does everything that costs
//! something: the config map, the key-value scope, the log context with its line budget.
//! [`Platform::instance`] then gives every fresh instance its [`WasmgateCtx`] by cloning
//! `Arc`s, so a fresh instance per request costs no parsing, allocation of names or file
//! I/O here.
//!
//! Adding a capability touches this crate only: a module with its host implementation,
//! its line in [`add_to_linker`], its per-workload part in [`Platform`] (and in
//! [`PlatformInputs`] if it needs something the embedder decides at deploy time), and its
//! per-instance part in [`WasmgateCtx`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use wasmtime::component::{Linker, ResourceTable};
//! use wasmgate_host_api::{ConfigVars, KvStore, Platform, PlatformInputs, WasmgateCtx, WasmgateCtxView, WasmgateView};
//!
//! struct State { table: ResourceTable, wasmgate: WasmgateCtx }
//! impl WasmgateView for State {
//!     fn wasmgate(&mut self) -> WasmgateCtxView<'_> {
//!         WasmgateCtxView { ctx: &mut self.wasmgate, table: &mut self.table }
//!     }
//! }
//!
//! # fn main() -> wasmtime::Result<()> {
//! let engine = wasmtime::Engine::default();
//! let mut linker = Linker::<State>::new(&engine);
//! wasmgate_host_api::add_to_linker(&mut linker)?;
//! let store = KvStore::open("/var/lib/wasmgate/p1/kv.redb".as_ref(), 64 << 20)?;
//! // Once per workload ...
//! let platform = Platform::configure(PlatformInputs {
//!     deployment_id: "a1b2",
//!     deployment: "my-deployment",
//!     component: "hello",
//!     partition: "edge-01/p1",
//!     config: Arc::new(ConfigVars::from_iter([("greeting", "Hello")])),
//!     kv: Some(&store),
//! });
//! // ... and for every instance.
//! let state = State { table: ResourceTable::new(), wasmgate: platform.instance() };
//! # Ok(()) }
//! ```

pub mod config;
pub mod keyvalue;
pub mod logging;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "margo:edge/platform",
        // Key-value calls wait on disk: async, so they never block the thread a guest
        // runs on.
        imports: { "wasi:keyvalue": async | trappable, default: trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::keyvalue::Bucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => crate::keyvalue::KvError,
            "wasi:config/store.error" => crate::config::ConfigError,
        },
    });
}

use std::sync::Arc;
use wasmtime::component::{HasData, Linker, ResourceTable};

pub use config::ConfigVars;
pub use keyvalue::{KvScope, KvStore, KvStoreError};
pub use logging::LogContext;

/// The per-instance state behind the platform imports.
pub struct WasmgateCtx {
    /// Values for `wasi:config/store`.
    pub config: Arc<ConfigVars>,
    /// The deployment's key-value namespace; `None` denies `wasi:keyvalue` with
    /// `access-denied` (for embedders that give a guest no store).
    pub kv: Option<KvScope>,
    /// Fields attached to every log line the guest emits.
    pub log: Arc<LogContext>,
}

/// What the embedder decides about one workload at deploy time.
pub struct PlatformInputs<'a> {
    /// The deployment's id: its key-value namespace.
    pub deployment_id: &'a str,
    /// The deployment's name, the component and the partition's device id: the fields of
    /// every log line.
    pub deployment: &'a str,
    pub component: &'a str,
    pub partition: &'a str,
    /// Values for `wasi:config/store`.
    pub config: Arc<ConfigVars>,
    /// The partition's store; `None` denies `wasi:keyvalue`.
    pub kv: Option<&'a Arc<KvStore>>,
}

/// The platform imports configured for one workload, shared by all its instances.
#[derive(Debug, Clone)]
pub struct Platform {
    config: Arc<ConfigVars>,
    kv: Option<KvScope>,
    log: Arc<LogContext>,
}

impl Platform {
    /// Once per workload: everything an instance will only clone.
    pub fn configure(inputs: PlatformInputs<'_>) -> Self {
        Self {
            config: inputs.config,
            kv: inputs.kv.map(|store| store.scope(inputs.deployment_id)),
            log: Arc::new(LogContext::new(
                inputs.deployment,
                inputs.component,
                inputs.partition,
            )),
        }
    }

    /// Per instance: cheap, `Arc` clones only.
    pub fn instance(&self) -> WasmgateCtx {
        WasmgateCtx {
            config: self.config.clone(),
            kv: self.kv.clone(),
            log: self.log.clone(),
        }
    }

    /// The workload's log context, for what the embedder logs on the guest's behalf
    /// (its stdout and stderr lines) under the same fields and line budget.
    pub fn log(&self) -> &Arc<LogContext> {
        &self.log
    }
}

/// A borrowed view of the store data that the host implementations work on.
pub struct WasmgateCtxView<'a> {
    pub ctx: &'a mut WasmgateCtx,
    pub table: &'a mut ResourceTable,
}

/// Implemented by the embedder's store data to hand its [`WasmgateCtx`] to this crate.
pub trait WasmgateView: Send {
    fn wasmgate(&mut self) -> WasmgateCtxView<'_>;
}

struct HasWasmgate;

impl HasData for HasWasmgate {
    type Data<'a> = WasmgateCtxView<'a>;
}

/// Adds every platform import (`wasi:config`, `wasi:keyvalue`, `wasi:logging`) to `linker`.
pub fn add_to_linker<T: WasmgateView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    let get: fn(&mut T) -> WasmgateCtxView<'_> = |t| t.wasmgate();
    bindings::wasi::config::store::add_to_linker::<T, HasWasmgate>(linker, get)?;
    bindings::wasi::keyvalue::store::add_to_linker::<T, HasWasmgate>(linker, get)?;
    bindings::wasi::keyvalue::atomics::add_to_linker::<T, HasWasmgate>(linker, get)?;
    bindings::wasi::logging::logging::add_to_linker::<T, HasWasmgate>(linker, get)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Configured once, every instance gets the same config map and log context (one
    /// line budget for the workload), and the deployment's key-value scope.
    #[test]
    fn instances_share_what_the_workload_configured() {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(&dir.path().join("kv.redb"), 1 << 20).unwrap();
        let inputs = |kv| PlatformInputs {
            deployment_id: "d-1",
            deployment: "hello",
            component: "greeter",
            partition: "edge-01/apps",
            config: Arc::new(ConfigVars::from_iter([("greeting", "Hi")])),
            kv,
        };
        let platform = Platform::configure(inputs(Some(&store)));
        let (a, b) = (platform.instance(), platform.instance());
        assert!(Arc::ptr_eq(&a.config, &b.config));
        assert!(Arc::ptr_eq(&a.log, &b.log));
        assert!(Arc::ptr_eq(&a.log, platform.log()));
        assert_eq!(a.config.get("greeting"), Some("Hi"));
        assert_eq!(
            (
                a.log.deployment.as_str(),
                a.log.component.as_str(),
                a.log.partition.as_str()
            ),
            ("hello", "greeter", "edge-01/apps")
        );
        assert_eq!(a.kv.as_ref().map(KvScope::namespace), Some("d-1"));
        assert!(Platform::configure(inputs(None)).instance().kv.is_none());
    }
}
