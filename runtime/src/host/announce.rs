//! What the console hears once a pass is done: the routes served and the deployments
//! that failed, printed only when they changed, and the readiness notification.

use super::Host;
use crate::deploy::{Reconciler, StatusBoard};
use arc_swap::ArcSwap;
use std::net::SocketAddr;

impl Host {
    pub(super) fn announce(&mut self, served_at: &ArcSwap<SocketAddr>) {
        announce(
            &self.reconciler,
            &self.status,
            **served_at.load(),
            &mut self.announced,
        );
    }
}

/// Prints what is served and what failed, when that changed since the last time.
pub(super) fn announce(
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
