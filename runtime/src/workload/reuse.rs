//! Instance reuse: a component that opts in (`x-wasmgate-extensions.reuse`) serves
//! several HTTP requests in turn from one instance instead of one instance each.
//!
//! Between requests the instance is parked in its partition (`sandbox::IdlePool`),
//! which bounds how many wait and ends them after the idle timeout, when memory or a
//! pool slot is needed, or when the deployment goes. Each request still gets its own
//! deadline, a clean memory-denial record and its own admission slot (concurrency
//! counts requests, not instances); a trap, a deadline kill or a memory denial ends the
//! instance instead of parking it. What the guest keeps in its own memory between
//! requests (globals, caches) is its choice: the host resets nothing inside it.

use super::state::InstanceState;
use std::time::Duration;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

/// `x-wasmgate-extensions.reuse` of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceReuse {
    /// Most requests one instance serves; then it is replaced by a fresh one.
    pub requests: u32,
    /// How long an instance waits for its next request before it is ended.
    pub idle_timeout: Duration,
}

impl InstanceReuse {
    /// The peers' defaults (`wasmtime serve` and Spin for WASI 0.3 components).
    pub const DEFAULT_REQUESTS: u32 = 128;
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
    /// Bounds of what a deployment may ask for.
    pub const MAX_REQUESTS: u32 = 1_000_000;
    pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
}

impl Default for InstanceReuse {
    fn default() -> Self {
        Self {
            requests: Self::DEFAULT_REQUESTS,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// An instance between two requests.
pub(super) struct Warm {
    pub(super) store: Store<InstanceState>,
    pub(super) proxy: Proxy,
    /// Requests it has served.
    pub(super) served: u32,
}
