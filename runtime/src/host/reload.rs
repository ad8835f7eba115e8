//! SIGHUP: read the configuration file again and apply what changed while serving.
//!
//! A reload is all or nothing. Everything that can fail is done first (reading and
//! checking the file, opening new partitions, binding moved listeners); only then does
//! anything change. A refused reload leaves the running configuration exactly as it
//! was and says why; see [`crate::config::restart_only_changes`] for what only a
//! restart applies.

use super::listeners::Listeners;
use crate::config::Config;
use crate::deploy::Reconfiguration;
use crate::engine::PoolSizing;
use crate::margo::Reconfigured;
use crate::sandbox::{Partition, SharedPartitions};
use crate::telemetry::{LogFilterChange, ReloadResult};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Command-line settings that win over the file's, at start and at every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

impl Overrides {
    pub fn apply(&self, config: &mut Config) {
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        if let Some(listen) = self.listen {
            config.http.listen = listen;
        }
        if self.admin.is_some() {
            config.http.admin = self.admin;
        }
    }
}

/// Where the configuration comes from, for reloads.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `None`: the embedded default, which never changes.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("started without --config: there is no file to read again")]
    NoFile,
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigError),
    #[error("these settings changed and only a restart applies them: {}", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    #[error("the partitions need an instance pool of {want} instances of up to {want_memory} bytes; the pool was sized at start for {have} of up to {have_memory}: restart to apply")]
    PoolTooSmall {
        want: u32,
        want_memory: u64,
        have: u32,
        have_memory: u64,
    },
    #[error("cannot set up partition {partition}: {message}")]
    Partition { partition: String, message: String },
    #[error("{0:#}")]
    Listener(anyhow::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Owns the running configuration and applies reloads to the listeners, the
/// partitions and the log filter; the reconciler's owner gets a [`Reconfiguration`].
pub struct Reloader {
    pub config: Config,
    pub source: ConfigSource,
    pub pool: PoolSizing,
    pub partitions: SharedPartitions,
    pub listeners: Listeners,
    pub metrics: Arc<crate::telemetry::Metrics>,
    pub reconfigure: mpsc::UnboundedSender<Reconfigured>,
}

/// What a reload changed, for the log line that says so.
#[derive(Debug, Default)]
struct Changes {
    added: Vec<String>,
    removed: Vec<String>,
    resized: Vec<String>,
}

impl Reloader {
    /// One SIGHUP: applied or refused, and said so on stderr and in
    /// `wasmgate_config_reloads_total`.
    pub async fn reload(&mut self) {
        crate::service::reloading();
        match self.try_reload().await {
            Ok(summary) => {
                self.metrics.config_reload(ReloadResult::Applied);
                crate::service::reloaded(&format!("configuration reloaded ({summary})"));
                println!("wasmgate: configuration reloaded ({summary})");
                tracing::info!(%summary, "configuration reloaded");
            }
            Err(err) => {
                self.metrics.config_reload(ReloadResult::Refused);
                crate::service::reloaded(
                    "configuration reload refused; the running configuration stays",
                );
                eprintln!(
                    "wasmgate: configuration reload refused; the running configuration stays: {err}"
                );
                tracing::error!(error = %err, "configuration reload refused; the running configuration stays");
            }
        }
    }

    async fn try_reload(&mut self) -> Result<String, ReloadError> {
        let path = self.source.path.clone().ok_or(ReloadError::NoFile)?;
        let mut new = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| {
                ReloadError::Internal(format!("the task reading the file failed: {e}"))
            })??;
        self.source.overrides.apply(&mut new);
        let restart = crate::config::restart_only_changes(&self.config, &new);
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        let want = super::pool_sizing(&new);
        if want.instances > self.pool.instances
            || want.max_instance_memory > self.pool.max_instance_memory
        {
            return Err(ReloadError::PoolTooSmall {
                want: want.instances,
                want_memory: want.max_instance_memory,
                have: self.pool.instances,
                have_memory: self.pool.max_instance_memory,
            });
        }
        let current = self.partitions.load_full();
        let (partitions, changes) = prepare_partitions(&new, &current).await?;
        let bound = self
            .listeners
            .bind_changes(new.http.listen, new.http.admin)
            .await
            .map_err(ReloadError::Listener)?;

        // Nothing below fails the reload.
        let (ingress_moved, admin_moved) = (bound.moves_ingress(), bound.moves_admin());
        if let Err(err) = self.listeners.switch(bound) {
            tracing::error!(error = %format!("{err:#}"), "cannot serve on a moved listener");
        }
        if new.log_filter != self.config.log_filter {
            match crate::telemetry::set_log_filter(new.log_filter.as_deref()) {
                Ok(LogFilterChange::OverriddenByEnvironment) => tracing::warn!(
                    "log-filter changed, but WASMGATE_LOG is set and keeps deciding what is logged"
                ),
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, "cannot change the log filter"),
            }
        }
        for p in &partitions {
            // Resized partitions share their store with the version they replace.
            p.kv.set_quota_bytes(p.config.storage.0);
        }
        self.partitions.store(Arc::new(partitions.clone()));
        let device = new.device_profile();
        let capabilities = super::startup::eligibility_documents(&device);
        let _ = self.reconfigure.send(Reconfigured {
            device,
            deploy: Reconfiguration {
                partitions,
                capabilities,
            },
        });
        self.config = new;
        let moved = Moved {
            ingress: ingress_moved.then(|| self.listeners.addr()),
            admin: admin_moved.then(|| self.listeners.admin_addr()),
        };
        Ok(summary(&changes, &moved))
    }
}

/// The partitions `config` names, in its order: unchanged ones as they run, changed
/// ones resized (same data), new ones opened. Blocking work (opening stores, starting
/// guest threads) runs off the async workers; an error leaves everything as it was.
async fn prepare_partitions(
    config: &Config,
    current: &[Arc<Partition>],
) -> Result<(Vec<Arc<Partition>>, Changes), ReloadError> {
    let device_id = config.device_id();
    let state_dir = config.state_dir.clone();
    let wanted = config.partitions.clone();
    let current = current.to_vec();
    let result = tokio::task::spawn_blocking(move || {
        let mut changes = Changes::default();
        let mut next = Vec::with_capacity(wanted.len());
        for p in &wanted {
            let failed = |e: crate::sandbox::SandboxError| ReloadError::Partition {
                partition: p.id.to_string(),
                message: e.to_string(),
            };
            let partition = match current.iter().find(|c| c.id == p.id) {
                Some(old) if old.config == *p => old.clone(),
                Some(old) => {
                    changes.resized.push(old.device_id.to_string());
                    old.resized(p).map_err(failed)?
                }
                None => {
                    let opened = Partition::open(&device_id, p, &state_dir).map_err(failed)?;
                    changes.added.push(opened.device_id.to_string());
                    opened
                }
            };
            next.push(partition);
        }
        changes.removed = current
            .iter()
            .filter(|c| !wanted.iter().any(|p| p.id == c.id))
            .map(|c| c.device_id.to_string())
            .collect();
        Ok((next, changes))
    })
    .await;
    result.unwrap_or_else(|e| {
        Err(ReloadError::Internal(format!(
            "the task preparing the partitions failed: {e}"
        )))
    })
}

/// The listeners a reload moved, at their new addresses.
#[derive(Debug, Default)]
struct Moved {
    ingress: Option<SocketAddr>,
    /// `Some(None)`: the admin listener was turned off.
    admin: Option<Option<SocketAddr>>,
}

fn summary(changes: &Changes, moved: &Moved) -> String {
    let mut parts = Vec::new();
    for (what, list) in [
        ("added", &changes.added),
        ("removed", &changes.removed),
        ("resized", &changes.resized),
    ] {
        if !list.is_empty() {
            parts.push(format!("partitions {what}: {}", list.join(", ")));
        }
    }
    if let Some(addr) = moved.ingress {
        parts.push(format!("listening on {addr}"));
    }
    match moved.admin {
        Some(Some(addr)) => parts.push(format!("admin on {addr}")),
        Some(None) => parts.push("admin listener off".into()),
        None => {}
    }
    if parts.is_empty() {
        "no partition or listener changed".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_what_changed() {
        let changes = Changes {
            added: vec!["edge/b".into()],
            removed: vec!["edge/c".into()],
            resized: vec![],
        };
        assert_eq!(
            summary(
                &changes,
                &Moved {
                    ingress: Some("127.0.0.1:9000".parse().unwrap()),
                    admin: None
                }
            ),
            "partitions added: edge/b; partitions removed: edge/c; listening on 127.0.0.1:9000"
        );
        // Only the admin listener moved: the summary says that, not "listening on".
        let admin_only = Moved {
            ingress: None,
            admin: Some(Some("127.0.0.1:9001".parse().unwrap())),
        };
        assert_eq!(
            summary(&Changes::default(), &admin_only),
            "admin on 127.0.0.1:9001"
        );
        let admin_off = Moved {
            ingress: None,
            admin: Some(None),
        };
        assert_eq!(
            summary(&Changes::default(), &admin_off),
            "admin listener off"
        );
        assert_eq!(
            summary(&Changes::default(), &Moved::default()),
            "no partition or listener changed"
        );
    }

    #[test]
    fn command_line_settings_win_at_every_reload() {
        let mut config = Config::default();
        let overrides = Overrides {
            state_dir: Some("/srv/state".into()),
            listen: Some("127.0.0.1:1".parse().unwrap()),
            admin: None,
        };
        config.http.admin = Some("127.0.0.1:2".parse().unwrap());
        overrides.apply(&mut config);
        assert_eq!(config.state_dir, PathBuf::from("/srv/state"));
        assert_eq!(config.http.listen.port(), 1);
        // No --admin: the file's admin address stands.
        assert_eq!(config.http.admin.map(|a| a.port()), Some(2));
    }
}
