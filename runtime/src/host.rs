//! Wires the pieces together for `wasmgate up` and `wasmgate run`: partitions, engine,
//! reconciler, ingress and admin listeners, the local-mode folder watch, and the
//! signals (SIGTERM / SIGINT drain, SIGHUP reloads the configuration).
//!
//! Split by job: `startup` (building the host: partitions, engine pool, reconciler and
//! the capabilities it checks), `listeners` (the ingress and admin listeners, and moving
//! them on a reload), `admin` (`/healthz`, `/status`, `/metrics`), `local_mode` (the
//! fixed document and the watched folder), `wfm` (handing the reconciler to the Margo
//! client), `announce` (what the console hears after a pass), `reload` (applying a
//! reloaded configuration), `hangup` (SIGHUP and the reload task) and `shutdown` (the
//! bounded drain on SIGTERM / SIGINT).

mod admin;
mod announce;
mod hangup;
mod listeners;
mod local_mode;
mod reload;
mod shutdown;
mod startup;
mod wfm;

pub use local_mode::single_component_document;
pub use reload::{ConfigSource, Overrides};
pub use shutdown::EXIT_SHUTDOWN_TIMEOUT;
pub use startup::pool_sizing;

use crate::config::Config;
use crate::deploy::{DesiredDeployment, Reconciler, StatusBoard};
use crate::engine::PoolSizing;
use crate::ingress;
use crate::sandbox::SharedPartitions;
use crate::trigger::{self, HttpTrigger};
use admin::AdminState;
use anyhow::Context;
use arc_swap::ArcSwap;
use hangup::{reload_on_hangup, Hangups};
use shutdown::{handle_signals, Signals};
use startup::warn_if_over_fd_limit;
use std::path::PathBuf;
use std::sync::Arc;
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
                self.serve_fixed(document, &served_at, shutdown, &mut reconfigured)
                    .await
            }
            DesiredSource::Wfm(settings) => {
                self.serve_wfm(*settings, &served_at, shutdown, &mut reconfigured)
                    .await?
            }
            DesiredSource::Folder(dir) => {
                self.watch_folder(dir, &served_at, shutdown, &mut reconfigured)
                    .await
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
}
