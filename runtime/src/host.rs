//! Wires the pieces together for `wasmgate up` and `wasmgate run`: partitions, engine,
//! reconciler, ingress and admin listeners, and the local-mode folder watch.

use crate::config::Config;
use crate::deploy::{local, DesiredDeployment, Reconciler, StatusBoard};
use crate::engine::{PoolSizing, WasmEngine};
use crate::ingress::{self, AdminState, Ingress};
use crate::sandbox::Partition;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
            .unwrap_or(crate::config::DEFAULT_INSTANCE_MEMORY),
    }
}

pub struct Host {
    config: Config,
    reconciler: Reconciler,
    partitions: Vec<Arc<Partition>>,
    routes: ingress::SharedRoutes,
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
        let engine = WasmEngine::new(pool_sizing(&config))?;
        let ticker = engine.start_epoch_ticker();
        let aot = engine.aot_cache(config.state_dir.join("aot"));
        let routes = ingress::shared_routes();
        let status = Arc::new(StatusBoard::default());
        let reconciler = Reconciler::new(
            engine,
            aot,
            device_id,
            partitions.clone(),
            routes.clone(),
            status.clone(),
        )
        .map_err(|e| anyhow::anyhow!("cannot set up the component linker: {e:#}"))?
        .with_state(&config.state_dir, &config)
        .with_context(|| {
            format!(
                "cannot open the artifact store under {}",
                config.state_dir.display()
            )
        })?;
        let mut reconciler = reconciler;
        let identity = crate::margo::capabilities::DeviceIdentity::from_config(&config);
        reconciler.set_capabilities(
            config
                .partitions
                .iter()
                .map(|p| {
                    let doc = crate::margo::capabilities::partition_document(
                        &config,
                        &identity,
                        p,
                        crate::margo::Profile::Rc3,
                    );
                    (p.id.clone(), doc)
                })
                .collect(),
        );
        Ok(Self {
            config,
            reconciler,
            partitions,
            routes,
            status,
            announced: Vec::new(),
            _ticker: ticker,
        })
    }

    /// Serves until SIGTERM / SIGINT, then drains (see [`handle_signals`]).
    pub async fn run(mut self, source: DesiredSource) -> anyhow::Result<()> {
        let signals = Signals::install().context("cannot install the signal handlers")?;
        ingress::raise_fd_limit();
        let limits = self.config.http.connection_limits();
        warn_if_over_fd_limit(limits.max_connections);
        let listener = tokio::net::TcpListener::bind(self.config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.config.http.listen))?;
        let addr = listener.local_addr()?;
        println!("wasmgate: listening on http://{addr}");
        let ingress = Ingress {
            routes: self.routes.clone(),
            max_body: self.config.http.max_request_body.0,
        };
        let shutdown = ingress::Shutdown::new();
        let mut drained = vec![tokio::spawn(ingress::serve_until(
            listener,
            ingress,
            limits,
            shutdown.clone(),
        ))];
        if let Some(admin) = self.config.http.admin {
            let listener = tokio::net::TcpListener::bind(admin)
                .await
                .with_context(|| format!("cannot listen on admin address {admin}"))?;
            println!("wasmgate: admin on http://{}", listener.local_addr()?);
            drained.push(tokio::spawn(ingress::serve_admin(
                listener,
                AdminState {
                    device_id: self.config.device_id(),
                    status: self.status.clone(),
                    partitions: self.partitions.clone(),
                    routes: self.routes.clone(),
                    metrics: self.reconciler.metrics().clone(),
                    allowed_hosts: self.config.http.admin_hosts.clone(),
                },
                limits.admin(),
                shutdown.clone(),
            )));
        }
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
                self.reconciler.apply(vec![document]).await;
                self.announce(addr);
                shutdown.await;
            }
            DesiredSource::Wfm(settings) => {
                let events = self.status.subscribe();
                let metrics = self.reconciler.metrics().wfm.clone();
                let client =
                    crate::margo::WfmClient::new(*settings, self.config.clone(), events, metrics)
                        .await
                        .context("cannot start the Margo WFM client")?;
                let (status, announced) = (self.status.clone(), &mut self.announced);
                client
                    .run(&mut self.reconciler, shutdown, |reconciler| {
                        announce(reconciler, &status, addr, announced)
                    })
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
                    // (retrying a failed pull, collecting garbage).
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
                            self.announce(addr);
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
                    let progressed = tokio::select! {
                        _ = tokio::time::sleep(interval) => false,
                        _ = self.reconciler.install_progress() => true,
                        _ = &mut shutdown => break,
                    };
                    if progressed {
                        self.reconciler.advance().await;
                        self.announce(addr);
                    }
                }
            }
        }
        println!("wasmgate: shutting down");
        for listener in drained {
            let _ = listener.await;
        }
        println!("wasmgate: stopped");
        Ok(())
    }

    fn announce(&mut self, addr: SocketAddr) {
        announce(&self.reconciler, &self.status, addr, &mut self.announced);
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
