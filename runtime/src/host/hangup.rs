//! SIGHUP: the signal, and the task that runs one reload per hangup (see `reload` for
//! what a reload does) until the host shuts down.

use super::listeners::Listeners;
use super::reload::Reloader;
use crate::ingress;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Reloads at each SIGHUP, one at a time, until the host shuts down; then hands the
/// listeners back so that the host can wait for them to drain.
pub(super) async fn reload_on_hangup(
    mut hangups: Hangups,
    mut reloader: Reloader,
    served_at: Arc<ArcSwap<SocketAddr>>,
    shutdown: ingress::Shutdown,
) -> Listeners {
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
pub(super) struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    pub(super) fn install() -> std::io::Result<Self> {
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
