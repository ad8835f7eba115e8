//! The slow part of applying a deployment, run off the reconcile pass and in parallel
//! with other installs: resolve every component to a digest, fetch and verify its
//! bytes, compile it (or map its cached code). Bounded: at most [`FETCHES`] installs
//! resolve or fetch at a time and at most [`COMPILES`] compile, each compile holding a
//! blocking thread. What the install produces is committed by the reconciler, in order.

use super::gc::Gc;
use super::plan::fingerprint;
use super::report::Failure;
use super::DesiredDeployment;
use crate::deploy::artifact::{local_path, Artifact, ArtifactError, Artifacts};
use crate::deploy::model::{ComponentSpec, Deployment};
use crate::deploy::store::Pin;
use crate::engine::{AotCache, Shipped, WasmEngine};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify, Semaphore};
use wasmtime::component::Component;

/// Installs resolving or fetching at once. Network bound: a registry that stalls
/// holds one slot for its pull timeout, so there are a few.
pub const FETCHES: usize = 4;
/// Compiles at once. CPU bound (and Cranelift already compiles functions in
/// parallel): two keep a small component from queueing behind a large one on a
/// 2-core device while leaving the request path its share.
pub const COMPILES: usize = 2;

/// One component compiled and ready to build a workload from.
pub struct ReadyComponent {
    pub component: Component,
    pub digest: String,
    /// The local file it came from, when it is watched for changes.
    pub watch: Option<PathBuf>,
}

pub struct Built {
    pub fingerprint: String,
    pub pins: Vec<Pin>,
    /// In the deployment's component order, up to the first that failed to compile:
    /// that failure is reported where a sequential apply would have met it, after
    /// placement and the checks of the components before it.
    pub components: Vec<Result<ReadyComponent, Failure>>,
}

pub enum Outcome {
    /// Resolved to exactly what runs: nothing was fetched or compiled.
    Unchanged {
        fingerprint: String,
    },
    Built(Built),
    Failed {
        failure: Failure,
        /// Worth retrying without a change of the document (a failed pull).
        retry: bool,
        /// Local component files that could not be read: watched, so that their
        /// appearance is a change of desired state.
        waiting_for: Vec<PathBuf>,
    },
}

pub enum Event {
    /// Resolved to something new; fetching and compiling now.
    Installing,
    Done(Outcome),
}

/// What one install is asked to do.
pub struct Job {
    pub install: u64,
    pub item: DesiredDeployment,
    pub deployment: Deployment,
    /// Pins of an earlier application of the same document: they stand in for the
    /// registry lookup (and, restoring, for reading local files).
    pub pins: Option<Vec<Pin>>,
    pub restore: bool,
    /// The fingerprint of what runs under this id, if anything does.
    pub running: Option<String>,
}

/// Starts installs; each reports on one channel that the reconciler drains.
pub struct Installer {
    pub artifacts: Arc<Artifacts>,
    pub engine: WasmEngine,
    pub aot: AotCache,
    pub gc: Arc<Gc>,
    fetches: Arc<Semaphore>,
    compiles: Arc<Semaphore>,
    events: mpsc::UnboundedSender<(u64, Event)>,
    notify: Arc<Notify>,
}

/// An install in flight; abandoned (its task aborted) when dropped.
pub struct Running {
    handle: tokio::task::AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Installer {
    pub fn new(
        artifacts: Arc<Artifacts>,
        engine: WasmEngine,
        aot: AotCache,
        gc: Arc<Gc>,
        notify: Arc<Notify>,
    ) -> (Self, mpsc::UnboundedReceiver<(u64, Event)>) {
        let (events, received) = mpsc::unbounded_channel();
        let installer = Self {
            artifacts,
            engine,
            aot,
            gc,
            fetches: Arc::new(Semaphore::new(FETCHES)),
            compiles: Arc::new(Semaphore::new(COMPILES)),
            events,
            notify,
        };
        (installer, received)
    }

    /// Starts `job`; its events arrive tagged with `job.install`, at most two of them,
    /// so the channel holds at most two per deployment in flight.
    pub fn start(&self, job: Job) -> Running {
        let task = Task {
            artifacts: self.artifacts.clone(),
            engine: self.engine.clone(),
            aot: self.aot.clone(),
            gc: self.gc.clone(),
            fetches: self.fetches.clone(),
            compiles: self.compiles.clone(),
            events: self.events.clone(),
            notify: self.notify.clone(),
        };
        let handle = tokio::spawn(async move {
            let mut done = Done {
                task: &task,
                install: job.install,
                sent: false,
            };
            let outcome = task.run(job).await;
            done.sent = true;
            task.send(done.install, Event::Done(outcome));
        });
        Running {
            handle: handle.abort_handle(),
        }
    }
}

/// Reports a failure if the install panics, so a pass waiting for it ends; an
/// aborted install reports nothing (nobody waits for it).
struct Done<'a> {
    task: &'a Task,
    install: u64,
    sent: bool,
}

impl Drop for Done<'_> {
    fn drop(&mut self) {
        if !self.sent && std::thread::panicking() {
            let failure = Failure::new("wasmgate.artifact", "the install task failed");
            self.task.send(self.install, Event::Done(refused(failure)));
        }
    }
}

struct Task {
    artifacts: Arc<Artifacts>,
    engine: WasmEngine,
    aot: AotCache,
    gc: Arc<Gc>,
    fetches: Arc<Semaphore>,
    compiles: Arc<Semaphore>,
    events: mpsc::UnboundedSender<(u64, Event)>,
    notify: Arc<Notify>,
}

fn failed(c: &ComponentSpec, e: ArtifactError, waiting_for: Vec<PathBuf>) -> Outcome {
    Outcome::Failed {
        retry: e.retryable(),
        failure: Failure::new(e.code(), e.to_string()).in_component(&c.name),
        waiting_for,
    }
}

fn refused(failure: Failure) -> Outcome {
    Outcome::Failed {
        failure,
        retry: false,
        waiting_for: Vec::new(),
    }
}

impl Task {
    fn send(&self, install: u64, event: Event) {
        // A closed channel means the reconciler is gone; nothing is left to tell.
        let _ = self.events.send((install, event));
        self.notify.notify_one();
    }

    async fn run(&self, job: Job) -> Outcome {
        let Ok(fetching) = self.fetches.clone().acquire_owned().await else {
            return refused(Failure::new(
                "wasmgate.artifact",
                "the installer is stopping",
            ));
        };
        let deployment = &job.deployment;
        let mut resolved = Vec::new();
        for c in &deployment.components {
            let pin = job
                .pins
                .as_deref()
                .and_then(|p| p.iter().find(|p| p.component == c.name));
            let result = match (job.restore, pin) {
                (true, Some(pin)) => self.artifacts.resolve_pinned(pin),
                _ => self.artifacts.resolve(c, &job.item.base_dir, pin).await,
            };
            match result {
                Ok(r) => resolved.push(r),
                Err(e) => {
                    let files = deployment
                        .components
                        .iter()
                        .filter_map(|c| local_path(&c.repository, &job.item.base_dir).ok())
                        .collect();
                    return failed(c, e, files);
                }
            }
        }
        let fingerprint = fingerprint(
            &job.item.yaml,
            resolved.iter().map(|r| r.pin.digest.as_str()),
        );
        if job.running.as_deref() == Some(fingerprint.as_str()) {
            return Outcome::Unchanged { fingerprint };
        }
        self.send(job.install, Event::Installing);
        let pins: Vec<Pin> = resolved.iter().map(|r| r.pin.clone()).collect();
        let _hold = self.gc.hold(job.install, &pins);
        if let Err(failure) = self.gc.make_room(&pins).await {
            return refused(failure);
        }
        let mut artifacts: Vec<Artifact> = Vec::new();
        for (c, r) in deployment.components.iter().zip(resolved) {
            match self.artifacts.load(r).await {
                Ok(artifact) => artifacts.push(artifact),
                Err(e) => return failed(c, e, Vec::new()),
            }
        }
        drop(fetching);
        let mut components = Vec::new();
        for (c, artifact) in deployment.components.iter().zip(artifacts) {
            let compiled = self
                .compile(c, &artifact)
                .await
                .map(|component| ReadyComponent {
                    component,
                    digest: artifact.digest.to_string(),
                    watch: artifact.watch.then(|| artifact.path.clone()),
                });
            let stop = compiled.is_err();
            components.push(compiled);
            if stop {
                break;
            }
        }
        Outcome::Built(Built {
            fingerprint,
            pins,
            components,
        })
    }

    async fn compile(&self, c: &ComponentSpec, artifact: &Artifact) -> Result<Component, Failure> {
        let fail =
            |code: &'static str, message: String| Failure::new(code, message).in_component(&c.name);
        let permit = self
            .compiles
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| fail("wasmgate.compile", "the installer is stopping".into()))?;
        let (engine, aot) = (self.engine.clone(), self.aot.clone());
        let bytes = artifact.bytes.clone();
        let shipped = artifact.precompiled.clone();
        let digest = artifact.digest.clone();
        // The permit moves into the blocking task: an abandoned install cannot stop a
        // compile under way, and the bound must hold until it really ends.
        let compiled = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let shipped = shipped.as_ref().map(|s| Shipped {
                path: &s.path,
                bytes: &s.bytes,
            });
            aot.load_component(&engine, &bytes, &digest, shipped)
        })
        .await
        .map_err(|e| fail("wasmgate.compile", format!("compiler task failed: {e}")))?
        .map_err(|e| fail(e.code(), format!("component {}: {e}", c.name)))?;
        let (component, outcome) = compiled;
        tracing::debug!(component = %c.name, digest = %artifact.digest, ?outcome, "component ready");
        Ok(component)
    }
}
