//! Event triggers: calls into `margo:edge/event-handler.handle` in a fresh instance.

use super::{InstanceState, InvocationError, Workload};
use std::sync::Arc;
use wasmtime::component::{Instance, InstancePre};
use wasmtime::Store;

mod bindings {
    // Only the export: the imports of an event function are linked by `super::linker`.
    wasmtime::component::bindgen!({
        path: "../wit",
        inline: "
            package wasmgate:host;
            world event-trigger {
                export margo:edge/event-handler@0.1.0;
            }
        ",
        world: "wasmgate:host/event-trigger",
        exports: { default: async },
    });
}

pub use bindings::exports::margo::edge::event_handler::{Tick, Trigger};

/// The `handle` export of a component, located and type-checked once when the workload
/// is built, so a call only looks up an index.
pub struct EventExport {
    indices: bindings::EventTriggerIndices,
}

impl std::fmt::Debug for EventExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventExport")
    }
}

impl EventExport {
    pub fn find(pre: &InstancePre<InstanceState>) -> Result<Self, String> {
        bindings::EventTriggerIndices::new(pre)
            .map(|indices| Self { indices })
            .map_err(|e| format!("{e:#}"))
    }
}

/// Calls `handle` of an instantiated component: the warm part of an event invocation.
async fn call_handler(
    store: &mut Store<InstanceState>,
    instance: &Instance,
    export: &EventExport,
    trigger: Trigger,
) -> wasmtime::Result<Result<(), String>> {
    let bindings = export.indices.load(&mut *store, instance)?;
    bindings
        .margo_edge_event_handler()
        .call_handle(&mut *store, trigger)
        .await
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
