//! Wires the pieces together for `wasmgate up` and `wasmgate run`: partitions, engine,
//! reconciler, ingress and admin listeners, and the local-mode folder watch.

use crate::config::Config;
use crate::deploy::{local, DesiredDeployment, Reconciler, StatusBoard};
use crate::engine::{AotCache, PoolSizing, WasmEngine};
use crate::ingress::{self, AdminState, Ingress};
use crate::sandbox::Partition;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Where local mode gets its desired state.
pub enum DesiredSource {
    /// A folder of YAMLs, watched for changes.
    Folder(PathBuf),
    /// One fixed document (`wasmgate run`).
    Fixed(DesiredDeployment),
    /// A Margo Workload Fleet Manager.
    Wfm(Box<crate::margo::WfmSettings>),
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
        let sizing = PoolSizing {
            instances: config.partitions.iter().map(|p| p.concurrency()).sum(),
            max_instance_memory: config
                .partitions
                .iter()
                .map(|p| p.instance_memory())
                .max()
                .unwrap_or(crate::config::DEFAULT_INSTANCE_MEMORY),
        };
        let engine = WasmEngine::new(sizing)?;
        let ticker = engine.start_epoch_ticker();
        let aot = AotCache::new(&engine.engine, config.state_dir.join("aot"));
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

    /// Serves until SIGINT / SIGTERM.
    pub async fn run(mut self, source: DesiredSource) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.config.http.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.config.http.listen))?;
        let addr = listener.local_addr()?;
        println!("wasmgate: listening on http://{addr}");
        let ingress = Ingress {
            routes: self.routes.clone(),
            max_body: self.config.http.max_request_body.0,
        };
        let limits = self.config.http.connection_limits();
        tokio::spawn(ingress::serve(listener, limits, ingress));
        if let Some(admin) = self.config.http.admin {
            let listener = tokio::net::TcpListener::bind(admin)
                .await
                .with_context(|| format!("cannot listen on admin address {admin}"))?;
            println!("wasmgate: admin on http://{}", listener.local_addr()?);
            tokio::spawn(ingress::serve_admin(
                listener,
                limits.admin(),
                AdminState {
                    device_id: self.config.device_id(),
                    status: self.status.clone(),
                    partitions: self.partitions.clone(),
                    routes: self.routes.clone(),
                    metrics: self.reconciler.metrics().clone(),
                },
            ));
        }
        let shutdown = shutdown_signal();
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
                            self.reconciler.apply(documents).await;
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
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = &mut shutdown => break,
                    }
                }
            }
        }
        println!("wasmgate: shutting down");
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
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
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
