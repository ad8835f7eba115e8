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
//! Per-instance state is cheap to create: it only clones `Arc`s prepared once per
//! workload, so a fresh instance per request costs no parsing or file I/O here.
//!
//! ```no_run
//! use std::sync::Arc;
//! use wasmtime::component::{Linker, ResourceTable};
//! use wasmgate_host_api::{ConfigVars, KvStore, LogContext, WasmgateCtx, WasmgateCtxView, WasmgateView};
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
//! let ctx = WasmgateCtx {
//!     config: Arc::new(ConfigVars::from_iter([("greeting", "Hello")])),
//!     kv: Some(store.scope("my-deployment")),
//!     log: Arc::new(LogContext::new("my-deployment", "hello", "edge-01/p1")),
//! };
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
