//! Event triggers: calls into `margo:edge/event-handler.handle` in a fresh instance.

use super::{InstanceState, InvocationError, Workload};
use std::sync::Arc;
use wasmtime::component::{Component, ComponentExportIndex, ComponentType, Instance, Lower};
use wasmtime::Store;

const INTERFACE: &str = "margo:edge/event-handler@0.1.0";

/// `margo:edge/event-handler.tick`
#[derive(Debug, Clone, Copy, ComponentType, Lower)]
#[component(record)]
pub struct Tick {
    pub sequence: u64,
    #[component(name = "scheduled-at-ms")]
    pub scheduled_at_ms: u64,
    #[component(name = "period-ms")]
    pub period_ms: u64,
}

/// `margo:edge/event-handler.trigger`
#[derive(Debug, Clone, Copy, ComponentType, Lower)]
#[component(variant)]
pub enum Trigger {
    #[component(name = "timer")]
    Timer(Tick),
}

/// The located `handle` export of a component.
#[derive(Debug, Clone)]
pub struct EventExport {
    handle: ComponentExportIndex,
}

impl EventExport {
    pub fn find(component: &Component) -> Result<Self, String> {
        let (_, interface) = component
            .get_export(None, INTERFACE)
            .ok_or_else(|| format!("no export named {INTERFACE}"))?;
        let (_, handle) = component
            .get_export(Some(&interface), "handle")
            .ok_or_else(|| format!("{INTERFACE} has no function `handle`"))?;
        Ok(Self { handle })
    }
}

/// Calls `handle` of an instantiated component: the warm part of an event invocation.
async fn call_handler(
    store: &mut Store<InstanceState>,
    instance: &Instance,
    export: &EventExport,
    trigger: Trigger,
) -> wasmtime::Result<Result<(), String>> {
    let func = instance
        .get_typed_func::<(Trigger,), (Result<(), String>,)>(&mut *store, &export.handle)?;
    let (outcome,) = func.call_async(&mut *store, (trigger,)).await?;
    Ok(outcome)
}

impl Workload {
    /// Delivers `tick` to an already instantiated component (from [`Self::new_store`] and
    /// [`Self::instance_pre`]) exactly as [`Self::invoke_tick`] does after instantiating;
    /// the warm-dispatch benchmark times this.
    pub async fn call_tick(
        &self,
        store: &mut Store<InstanceState>,
        instance: &Instance,
        tick: Tick,
    ) -> wasmtime::Result<Result<(), String>> {
        let export = self
            .event
            .as_ref()
            .ok_or_else(|| wasmtime::format_err!("the component has no event handler"))?;
        call_handler(store, instance, export, Trigger::Timer(tick)).await
    }

    /// Runs one timer tick in a fresh instance, on the partition's own runtime.
    pub async fn invoke_tick(self: &Arc<Self>, tick: Tick) -> Result<(), InvocationError> {
        let started = std::time::Instant::now();
        let workload = self.clone();
        let result = self
            .spec
            .partition
            .guests()
            .spawn(async move { workload.invoke_event(Trigger::Timer(tick)).await })
            .await
            .unwrap_or_else(|join| Err(self.failed(format!("crashed: {join}"))));
        self.record(&result, started);
        result
    }

    async fn invoke_event(&self, trigger: Trigger) -> Result<(), InvocationError> {
        let export = self
            .event
            .as_ref()
            .ok_or_else(|| self.failed("the component has no event handler".into()))?;
        let _permit =
            self.spec
                .partition
                .admit()
                .await
                .map_err(|source| InvocationError::Busy {
                    label: self.spec.label(),
                    source,
                })?;
        let mut store = self.new_store()?;
        let call = async {
            let instance = self
                .timed_instantiate(self.pre.instantiate_async(&mut store))
                .await?;
            call_handler(&mut store, &instance, export, trigger).await
        };
        // Epoch interruption only fires while wasm runs; this bounds host calls too.
        let outcome =
            tokio::time::timeout(self.spec.timeout + crate::engine::EPOCH_TICK * 10, call).await;
        match outcome {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(message))) => Err(InvocationError::Failed {
                label: self.spec.label(),
                message: format!("handler returned an error: {message}"),
            }),
            Ok(Err(err)) => Err(self.classify(store.data(), &err)),
            Err(_) => Err(InvocationError::Timeout {
                label: self.spec.label(),
                timeout: self.spec.timeout,
            }),
        }
    }
}
