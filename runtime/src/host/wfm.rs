//! WFM mode: the Margo client owns the reconciler until shutdown, fed the host's
//! status events and announcing after each pass it drives.

use super::announce::announce;
use super::Host;
use crate::margo::{Reconfigured, WfmSettings};
use anyhow::Context;
use arc_swap::ArcSwap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::sync::mpsc;

impl Host {
    /// Serves what the WFM at `settings` wants until shutdown.
    pub(super) async fn serve_wfm(
        &mut self,
        settings: WfmSettings,
        served_at: &ArcSwap<SocketAddr>,
        shutdown: Pin<&mut impl Future<Output = ()>>,
        reconfigured: &mut mpsc::UnboundedReceiver<Reconfigured>,
    ) -> anyhow::Result<()> {
        let events = self.status.subscribe();
        let metrics = self.reconciler.metrics().wfm.clone();
        let client =
            crate::margo::WfmClient::new(settings, self.config.device_profile(), events, metrics)
                .await
                .context("cannot start the Margo WFM client")?;
        let (status, announced) = (self.status.clone(), &mut self.announced);
        client
            .run(&mut self.reconciler, shutdown, reconfigured, |reconciler| {
                announce(reconciler, &status, **served_at.load(), announced)
            })
            .await;
        Ok(())
    }
}
