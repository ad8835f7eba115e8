//! Building the host before it serves: the state dir, the partitions, the engine's
//! instance pool, the reconciler and the capabilities it checks deployments against,
//! and the open-file check on the connection limit.

use super::{ConfigSource, Host};
use crate::config::Config;
use crate::deploy::{Reconciler, StatusBoard};
use crate::engine::{PoolSizing, WasmEngine};
use crate::ingress;
use crate::sandbox::Partition;
use crate::trigger;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::Arc;

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
pub(super) fn eligibility_documents(
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
}

/// An explicit `max-connections` above what the open-file limit allows is honoured, but
/// the operator hears that an idle flood can then exhaust descriptors for everything.
pub(super) fn warn_if_over_fd_limit(max_connections: usize) {
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
