//! The threads guests run on. Each partition gets its own tokio runtime, apart from the
//! runtime that accepts connections and serves the admin endpoints: a partition whose
//! guests spin, or wait on storage, then only queues its own work, and the OS scheduler
//! shares the cores between the ingress and every partition's threads.

use std::future::Future;
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
#[error("cannot start the guest threads of partition {partition}: {source}")]
pub struct GuestRuntimeError {
    pub partition: String,
    #[source]
    pub source: std::io::Error,
}

/// A partition's own runtime.
pub struct GuestRuntime {
    /// `Option` only so that `Drop` can move it out.
    runtime: Option<Runtime>,
    handle: Handle,
    workers: usize,
}

impl std::fmt::Debug for GuestRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRuntime")
            .field("workers", &self.workers)
            .finish()
    }
}

/// Worker threads for a partition with a CPU share of `cores`: enough to use the share,
/// never more than the machine has. The CPU token bucket still enforces the share; the
/// thread count only bounds how many cores a partition can occupy at any instant.
pub fn workers_for(cores: f64) -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores.ceil() as usize).clamp(1, available)
}

impl GuestRuntime {
    pub fn new(partition: &str, cores: f64) -> Result<Self, GuestRuntimeError> {
        let workers = workers_for(cores);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(format!("guest-{partition}"))
            .enable_all()
            .build()
            .map_err(|source| GuestRuntimeError {
                partition: partition.into(),
                source,
            })?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
            workers,
        })
    }

    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    pub fn workers(&self) -> usize {
        self.workers
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        // A plain drop blocks until tasks finish and panics inside an async context,
        // where the last `Arc<Partition>` may well be released.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
