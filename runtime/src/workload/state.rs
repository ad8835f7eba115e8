//! The data of one instance's `Store`: WASI contexts, platform services, limits and the
//! clock that enforces the deadline and CPU share. Built fresh for every instance and
//! dropped with it; a reused instance restarts the clock per request.

use super::outbound::OutboundPolicy;
use crate::engine::EPOCH_TICK;
use crate::sandbox::{CpuShare, InstanceLimiter};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmgate_host_api::{WasmgateCtx, WasmgateCtxView, WasmgateView};
use wasmtime::component::ResourceTable;
use wasmtime::UpdateDeadline;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub struct InstanceState {
    pub(super) table: ResourceTable,
    pub(super) wasi: WasiCtx,
    pub(super) http: WasiHttpCtx,
    pub(super) outbound: OutboundPolicy,
    pub(super) wasmgate: WasmgateCtx,
    pub(super) limiter: InstanceLimiter,
    pub(super) clock: GuestClock,
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl WasmgateView for InstanceState {
    fn wasmgate(&mut self) -> WasmgateCtxView<'_> {
        WasmgateCtxView {
            ctx: &mut self.wasmgate,
            table: &mut self.table,
        }
    }
}

/// Runs at every epoch tick while the guest executes.
pub(super) struct GuestClock {
    deadline: Instant,
    last_check: Instant,
    cpu: Arc<CpuShare>,
    pub(super) timed_out: bool,
}

impl GuestClock {
    pub(super) fn new(timeout: Duration, cpu: Arc<CpuShare>) -> Self {
        let now = Instant::now();
        Self {
            deadline: now + timeout,
            last_check: now,
            cpu,
            timed_out: false,
        }
    }

    /// Starts the next request of a reused instance: its own deadline from now.
    pub(super) fn restart(&mut self, timeout: Duration) {
        let now = Instant::now();
        self.deadline = now + timeout;
        self.last_check = now;
        self.timed_out = false;
    }

    pub(super) fn on_epoch(&mut self) -> UpdateDeadline {
        let now = Instant::now();
        if now >= self.deadline {
            self.timed_out = true;
            return UpdateDeadline::Interrupt;
        }
        // A guest that was suspended in a host call for a while resumes with a large gap
        // since the last check; it only ran for about a tick of that.
        let ran = now
            .saturating_duration_since(self.last_check)
            .min(EPOCH_TICK * 2);
        match self.cpu.charge(ran, now) {
            Some(pause) => {
                let pause = pause.min(self.deadline.saturating_duration_since(now));
                self.last_check = now + pause;
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause)))
            }
            None => {
                self.last_check = now;
                // Yielding every tick keeps a spinning guest from monopolising a
                // runtime worker thread that other requests need.
                UpdateDeadline::Yield(1)
            }
        }
    }
}
