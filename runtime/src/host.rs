//! Wires the pieces together for `wasmgate up` and `wasmgate run`: partitions, engine,
//! reconciler, ingress and admin listeners, the local-mode folder watch, and the
//! signals (SIGTERM / SIGINT drain, SIGHUP reloads the configuration).

mod admin;
mod listeners;
mod reload;

pub use reload::{ConfigSource, Overrides};

use crate::config::Config;
use crate::deploy::{local, DesiredDeployment, Reconciler, Reconfiguration, StatusBoard};
use crate::engine::{PoolSizing, WasmEngine};
use crate::ingress;
use crate::sandbox::{Partition, SharedPartitions};
use crate::trigger::{self, HttpTrigger};
use admin::AdminState;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where local mode gets its desired state.
pub enum DesiredSource {
    /// A folder of YAMLs, watched for changes.
    Folder(PathBuf),
    /// One fixed document (`wasmgate run`).
    Fixed(DesiredDeployment),
    /// A Margo Workload Fleet Manager.
    Wfm(Box<crate::margo::WfmSettings>),
}

/// What the engine's instance pool must hold for the partitions of `config`; also what
/// `wasmgate compile` builds code for (the memory reservation follows from it).
pub fn pool_sizing(config: &Config) -> PoolSizing {
    PoolSizing {
        instances: config.partitions.iter().map(|p| p.concurrency()).sum(),
        max_instance_memory: config
            .partitions
            .iter()
            .map(|p| p.instance_memory())
            .max()
            .unwrap_or(crate::sandbox::DEFAULT_INSTANCE_MEMORY),
    }
}

/// The capabilities each partition advertises, as deployments' `deviceConstraints`
/// are checked against them (the rc.3 shape, whatever the WFM profile).
fn eligibility_documents(
    device: &crate::margo::DeviceProfile,
) -> BTreeMap<crate::types::PartitionId, serde_json::Value> {
    let identity = crate::margo::capabilities::DeviceIdentity::from_profile(device);
    device
        .partitions
        .iter()
        .map(|p| {
            let doc = crate::margo::capabilities::partition_document(
                device,
                &identity,
                p,
                crate::margo::Profile::Rc3,
            );
            (p.id.clone(), doc)
        })
        .collect()
}

pub struct Host {
    config: Config,
    source: ConfigSource,
    reconciler: Reconciler,
    partitions: SharedPartitions,
    /// The pool the engine was planned for: a reload may not need more.
    pool: PoolSizing,
    routes: trigger::SharedRoutes,
    status: Arc<StatusBoard>,
    announced: Vec<String>,
    _ticker: crate::engine::EpochTicker,
}

impl Host {
    pub fn new(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create state-dir {}", config.state_dir.display()))?;
        let device_id = config.device_id();
        let partitions = config
            .partitions
            .iter()
            .map(|p| Partition::open(&device_id, p, &config.state_dir))
            .collect::<Result<Vec<_>, _>>()?;
        let pool = pool_sizing(&config);
        let engine = WasmEngine::new(pool)?;
        let ticker = engine.start_epoch_ticker();
        let aot = engine.aot_cache(config.state_dir.join("aot"));
        let routes = trigger::shared_routes();
        let status = Arc::new(StatusBoard::default());
        let reconciler = Reconciler::new(
            engine,
            aot,
            device_id.to_string(),
            partitions.clone(),
            routes.clone(),
            status.clone(),
        )
        .map_err(|e| anyhow::anyhow!("cannot set up the component linker: {e:#}"))?
        .with_state(&config.state_dir, &config.artifacts, &config.registries)
        .with_context(|| {
            format!(
                "cannot open the artifact store under {}",
                config.state_dir.display()
            )
        })?;
        let mut reconciler = reconciler;
        reconciler.set_capabilities(eligibility_documents(&config.device_profile()));
        Ok(Self {
            config,
            source: ConfigSource::default(),
            reconciler,
            partitions: Arc::new(ArcSwap::from_pointee(partitions)),
            pool,
            routes,
            status,
            announced: Vec::new(),
            _ticker: ticker,
        })
    }

    /// Where SIGHUP reads the configuration again (and the command-line settings that
    /// win over it). Without it, a reload says there is no file to read.
    pub fn reloading_from(mut self, source: ConfigSource) -> Self {
        self.source = source;
        self
    }

    /// Serves until SIGTERM / SIGINT, then drains (see [`handle_signals`]); reloads the
    /// configuration at each SIGHUP.
    pub async fn run(mut self, source: DesiredSource) -> anyhow::Result<()> {
        let signals = Signals::install().context("cannot install the signal handlers")?;
        // Installed before serving: SIGHUP's default action would end the process.
        let hangups = Hangups::install().context("cannot install the SIGHUP handler")?;
        ingress::raise_fd_limit();
        let limits = self.config.http.connection_limits();
        warn_if_over_fd_limit(limits.max_connections);
        let shutdown = ingress::Shutdown::new();
        let listeners = listeners::Listeners::start(
            self.config.http.listen,
            self.config.http.admin,
            HttpTrigger {
                routes: self.routes.clone(),
                max_body: self.config.http.max_request_body.0,
            },
            AdminState {
                device_id: self.config.device_id(),
                status: self.status.clone(),
                partitions: self.partitions.clone(),
                metrics: self.reconciler.metrics().clone(),
                allowed_hosts: self.config.http.admin_hosts.clone(),
            },
            limits,
            shutdown.clone(),
        )
        .await?;
        println!("wasmgate: listening on http://{}", listeners.addr());
        if let Some(admin) = listeners.admin_addr() {
            println!("wasmgate: admin on http://{admin}");
        }
        let served_at = Arc::new(ArcSwap::from_pointee(listeners.addr()));
        let (reconfigure, mut reconfigured) = mpsc::unbounded_channel();
        let reloader = reload::Reloader {
            config: self.config.clone(),
            source: self.source.clone(),
            pool: self.pool,
            partitions: self.partitions.clone(),
            listeners,
            metrics: self.reconciler.metrics().clone(),
            reconfigure,
        };
        let reloads = tokio::spawn(reload_on_hangup(
            hangups,
            reloader,
            served_at.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(handle_signals(
            signals,
            shutdown.clone(),
            self.config.shutdown_timeout(),
        ));
        // Every source returns soon after this resolves; the WFM client after the
        // exchange in progress, so what it sends before returning (its status outbox)
        // is inside the shutdown bound.
        let shutdown = shutdown.triggered();
        tokio::pin!(shutdown);
        match source {
            DesiredSource::Fixed(document) => {
                self.reconciler.apply(vec![document.clone()]).await;
                self.announce(&served_at);
                loop {
                    tokio::select! {
                        _ = &mut shutdown => break,
                        Some(change) = reconfigured.recv() => {
                            self.reconciler.reconfigure(&change.deploy);
                            self.reconciler.apply(vec![document.clone()]).await;
                            self.announce(&served_at);
                        }
                    }
                }
            }
            DesiredSource::Wfm(settings) => {
                let events = self.status.subscribe();
                let metrics = self.reconciler.metrics().wfm.clone();
                let client = crate::margo::WfmClient::new(
                    *settings,
                    self.config.device_profile(),
                    events,
                    metrics,
                )
                .await
                .context("cannot start the Margo WFM client")?;
                let (status, announced) = (self.status.clone(), &mut self.announced);
                client
                    .run(
                        &mut self.reconciler,
                        shutdown,
                        &mut reconfigured,
                        |reconciler| announce(reconciler, &status, **served_at.load(), announced),
                    )
                    .await;
            }
            DesiredSource::Folder(dir) => {
                let interval = self.config.watch_interval();
                // Polled on a blocking thread: stat and read calls must not hold an
                // async worker, and the watch remembers metadata so an unchanged
                // folder is not read again.
                let watch = Arc::new(std::sync::Mutex::new(local::FolderWatch::new(&dir)));
                let mut last_digest = None;
                loop {
                    let watched = self.reconciler.watched_files();
                    // A changed folder, or the reconciler asks for another pass
                    // (retrying a failed pull, collecting garbage, placing again
                    // after the partitions changed).
                    let due = self.reconciler.pass_due();
                    let poll = {
                        let watch = watch.clone();
                        tokio::task::spawn_blocking(move || {
                            let mut watch = watch.lock().unwrap_or_else(|e| e.into_inner());
                            watch.poll(&watched).map(|digest| {
                                let documents =
                                    (Some(digest) != last_digest || due).then(|| watch.documents());
                                (digest, documents)
                            })
                        })
                    };
                    match poll.await {
                        Ok(Ok((digest, Some(documents)))) => {
                            last_digest = Some(digest);
                            self.reconciler
                                .apply_for(documents, crate::deploy::INSTALL_PATIENCE)
                                .await;
                            self.announce(&served_at);
                        }
                        Ok(Ok((_, None))) => {}
                        Ok(Err(err)) => {
                            tracing::error!(dir = %dir.display(), error = %err, "cannot read the deployments folder")
                        }
                        Err(err) => {
                            tracing::error!(dir = %dir.display(), error = %err, "the deployments folder watch failed")
                        }
                    }
                    // An install that outlived its pass is committed as soon as it is done.
                    let wake = tokio::select! {
                        _ = tokio::time::sleep(interval) => Wake::Timer,
                        _ = self.reconciler.install_progress() => Wake::Progress,
                        Some(change) = reconfigured.recv() => Wake::Reconfigured(Box::new(change.deploy)),
                        _ = &mut shutdown => break,
                    };
                    match wake {
                        Wake::Timer => {}
                        Wake::Progress => {
                            self.reconciler.advance().await;
                            self.announce(&served_at);
                        }
                        // The next round's pass places what the change moved.
                        Wake::Reconfigured(change) => self.reconciler.reconfigure(&change),
                    }
                }
            }
        }
        println!("wasmgate: shutting down");
        let listeners = match reloads.await {
            Ok(listeners) => listeners.into_handles(),
            Err(err) => {
                tracing::error!(error = %err, "the reload task failed; not waiting for the listeners to drain");
                Vec::new()
            }
        };
        for listener in listeners {
            let _ = listener.await;
        }
        println!("wasmgate: stopped");
        Ok(())
    }

    fn announce(&mut self, served_at: &ArcSwap<SocketAddr>) {
        announce(
            &self.reconciler,
            &self.status,
            **served_at.load(),
            &mut self.announced,
        );
    }
}

/// Why the folder watch woke up.
enum Wake {
    Timer,
    Progress,
    Reconfigured(Box<Reconfiguration>),
}

/// Reloads at each SIGHUP, one at a time, until the host shuts down; then hands the
/// listeners back so that the host can wait for them to drain.
async fn reload_on_hangup(
    mut hangups: Hangups,
    mut reloader: reload::Reloader,
    served_at: Arc<ArcSwap<SocketAddr>>,
    shutdown: ingress::Shutdown,
) -> listeners::Listeners {
    let stopping = shutdown.triggered();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            _ = &mut stopping => break,
            received = hangups.recv() => {
                if !received {
                    break;
                }
                println!("wasmgate: SIGHUP received; reloading the configuration");
                reloader.reload().await;
                served_at.store(Arc::new(reloader.listeners.addr()));
            }
        }
    }
    reloader.listeners
}

/// SIGHUP.
struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                signal: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next SIGHUP; `false` when none can come any more.
    async fn recv(&mut self) -> bool {
        #[cfg(unix)]
        {
            self.signal.recv().await.is_some()
        }
        #[cfg(not(unix))]
        {
            std::future::pending::<bool>().await
        }
    }
}

/// Prints what is served and what failed, when that changed since the last time.
fn announce(
    reconciler: &Reconciler,
    status: &StatusBoard,
    addr: SocketAddr,
    announced: &mut Vec<String>,
) {
    {
        let mut lines: Vec<String> = reconciler
            .served_routes()
            .into_iter()
            .map(|(route, name, partition)| {
                format!("wasmgate: serving http://{addr}{route} -> {name} ({partition})")
            })
            .collect();
        lines.sort();
        for d in status.snapshot().deployments {
            if let Some(err) = d.error {
                lines.push(format!(
                    "wasmgate: FAILED {}: [{}] {}",
                    d.source, err.code, err.message
                ));
            }
        }
        if lines != *announced {
            for line in &lines {
                println!("{line}");
            }
            *announced = lines;
        }
    }
    // The first announcement follows the first pass over the desired state on disk.
    crate::service::ready(&format!("serving on http://{addr}"));
}

/// Exit status when a graceful shutdown overran its bound.
pub const EXIT_SHUTDOWN_TIMEOUT: i32 = 124;

/// SIGTERM and SIGINT (Ctrl-C).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name and the exit status that reports being ended by it
    /// (128 + its number, as a shell does).
    async fn next(&mut self) -> (&'static str, i32) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => ("SIGTERM", 128 + 15),
                _ = self.interrupt.recv() => ("SIGINT", 128 + 2),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            ("Ctrl-C", 130)
        }
    }
}

/// First signal: stop accepting and drain (in-flight requests and streaming bodies run
/// to their deadlines); the process exits 0 once everything closed. The drain is bounded
/// by `bound`: past it, or at a second signal, the process exits at once with
/// [`EXIT_SHUTDOWN_TIMEOUT`] or 128 + the signal's number.
async fn handle_signals(mut signals: Signals, shutdown: ingress::Shutdown, bound: Duration) {
    let (name, _) = signals.next().await;
    println!(
        "wasmgate: {name} received; draining for at most {}s (a second signal stops at once)",
        bound.as_secs_f64()
    );
    shutdown.trigger();
    crate::service::stopping();
    // A thread, not a task: the bound holds even if every async worker is stuck.
    let watchdog = std::thread::Builder::new()
        .name("shutdown-bound".into())
        .spawn(move || {
            std::thread::sleep(bound);
            eprintln!(
                "wasmgate: shutdown did not finish within {}s; exiting with in-flight requests cut",
                bound.as_secs_f64()
            );
            std::process::exit(EXIT_SHUTDOWN_TIMEOUT);
        });
    if let Err(err) = watchdog {
        tracing::error!(error = %err, "cannot start the shutdown watchdog; a second signal still stops at once");
    }
    let (name, status) = signals.next().await;
    eprintln!("wasmgate: second signal ({name}); exiting without waiting for in-flight requests");
    std::process::exit(status);
}

/// An explicit `max-connections` above what the open-file limit allows is honoured, but
/// the operator hears that an idle flood can then exhaust descriptors for everything.
fn warn_if_over_fd_limit(max_connections: usize) {
    if let Some(limit) = ingress::fd_limit() {
        if max_connections + ingress::ADMIN_MAX_CONNECTIONS + 64 > limit {
            tracing::warn!(
                max_connections,
                open_file_limit = limit,
                "max-connections leaves too few file descriptors: a connection flood can stop the admin listener and deployments; lower it or raise the limit"
            );
        }
    }
}

/// The one-component document `wasmgate run` serves at `/`.
pub fn single_component_document(component: &std::path::Path) -> anyhow::Result<DesiredDeployment> {
    let path = std::fs::canonicalize(component)
        .with_context(|| format!("cannot find component {}", component.display()))?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        })
        // metadata.name must be a DNS-1123 label: no leading or trailing '-'.
        .map(|s| s.trim_matches('-').to_owned())
        .filter(|s| crate::deploy::model::is_dns_label(s))
        .unwrap_or_else(|| "component".into());
    let document = serde_json::json!({
        "id": "00000000-0000-4000-8000-000000000001",
        "metadata": { "name": name, "namespace": "run" },
        "spec": {
            "applicationId": name,
            "deploymentProfile": {
                "type": "custom",
                "components": [{
                    "name": name,
                    "properties": { "repository": path.display().to_string() },
                    "x-wasmgate-extensions": { "trigger": { "http": { "route": "/" } } },
                }],
            },
        },
    });
    Ok(DesiredDeployment {
        source: path.display().to_string(),
        base_dir: path.parent().map(|p| p.to_owned()).unwrap_or_default(),
        yaml: serde_json::to_vec(&document)?,
        expected_id: None,
        refused: None,
    })
}
