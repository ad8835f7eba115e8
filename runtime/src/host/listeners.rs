//! The ingress and admin listeners, and moving them to new addresses on a reload: the
//! new socket is bound before anything changes (a refused bind refuses the reload), the
//! old one stops accepting and drains its connections like at shutdown.

use super::admin::{self, AdminState};
use crate::ingress::{self, ConnectionLimits, Shutdown};
use crate::trigger::HttpTrigger;
use anyhow::Context;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One accept loop and the signal that stops it alone.
struct Running {
    /// As the configuration names it (port 0: any free port).
    configured: SocketAddr,
    /// What it is bound to.
    addr: SocketAddr,
    stop: Shutdown,
}

/// What runs, plus every accept loop started (also those replaced and draining), so
/// the host can wait for all of them at exit.
pub struct Listeners {
    ingress: HttpTrigger,
    admin: AdminState,
    limits: ConnectionLimits,
    /// The host's shutdown: it stops every loop, current or draining.
    shutdown: Shutdown,
    serving: Running,
    admin_serving: Option<Running>,
    started: Vec<JoinHandle<()>>,
}

/// Sockets bound for a reload that has not committed yet.
pub struct Bound {
    /// The configured address and its socket.
    ingress: Option<(SocketAddr, TcpListener)>,
    /// `Some(None)`: the admin listener goes away.
    admin: Option<Option<(SocketAddr, TcpListener)>>,
}

impl Bound {
    /// Whether the ingress listener moves.
    pub fn moves_ingress(&self) -> bool {
        self.ingress.is_some()
    }

    /// Whether the admin listener moves, appears or goes away.
    pub fn moves_admin(&self) -> bool {
        self.admin.is_some()
    }
}

pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {what} address {addr}"))
}

impl Listeners {
    pub async fn start(
        listen: SocketAddr,
        admin_addr: Option<SocketAddr>,
        ingress: HttpTrigger,
        admin: AdminState,
        limits: ConnectionLimits,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let listener = bind(listen, "the ingress").await?;
        let admin_listener = match admin_addr {
            Some(addr) => Some(bind(addr, "the admin").await?),
            None => None,
        };
        let mut this = Self {
            serving: Running {
                configured: listen,
                addr: listen,
                stop: Shutdown::new(),
            },
            admin_serving: None,
            ingress,
            admin,
            limits,
            shutdown,
            started: Vec::new(),
        };
        this.serving = this.serve_ingress(listen, listener)?;
        this.admin_serving = match (admin_addr, admin_listener) {
            (Some(configured), Some(l)) => Some(this.serve_admin(configured, l)?),
            _ => None,
        };
        Ok(this)
    }

    /// Where the ingress accepts now.
    pub fn addr(&self) -> SocketAddr {
        self.serving.addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_serving.as_ref().map(|r| r.addr)
    }

    /// Binds what `listen` and `admin` need that does not run yet; nothing changes.
    pub async fn bind_changes(
        &self,
        listen: SocketAddr,
        admin: Option<SocketAddr>,
    ) -> anyhow::Result<Bound> {
        let ingress = if listen == self.serving.configured {
            None
        } else {
            Some((listen, bind(listen, "the ingress").await?))
        };
        let admin = match (admin, self.admin_serving.as_ref().map(|r| r.configured)) {
            (None, None) => None,
            (None, Some(_)) => Some(None),
            (Some(new), Some(old)) if new == old => None,
            (Some(new), _) => Some(Some((new, bind(new, "the admin").await?))),
        };
        Ok(Bound { ingress, admin })
    }

    /// Serves on what `bound` holds; the replaced loops stop accepting and drain.
    pub fn switch(&mut self, bound: Bound) -> anyhow::Result<()> {
        if let Some((configured, listener)) = bound.ingress {
            let next = self.serve_ingress(configured, listener)?;
            let old = std::mem::replace(&mut self.serving, next);
            tracing::info!(from = %old.addr, to = %self.serving.addr, "ingress moved; the old address drains");
            println!("wasmgate: listening on http://{}", self.serving.addr);
            old.stop.trigger();
        }
        if let Some(admin) = bound.admin {
            let next = admin
                .map(|(configured, l)| self.serve_admin(configured, l))
                .transpose()?;
            if let Some(next) = &next {
                println!("wasmgate: admin on http://{}", next.addr);
            }
            if let Some(old) = std::mem::replace(&mut self.admin_serving, next) {
                tracing::info!(from = %old.addr, to = ?self.admin_addr(), "admin listener moved; the old address drains");
                old.stop.trigger();
            }
        }
        Ok(())
    }

    /// Every accept loop started, to wait for at exit.
    pub fn into_handles(self) -> Vec<JoinHandle<()>> {
        self.started
    }

    fn serve_ingress(
        &mut self,
        configured: SocketAddr,
        listener: TcpListener,
    ) -> anyhow::Result<Running> {
        let (ingress, limits) = (self.ingress.clone(), self.limits);
        self.spawn_loop(configured, listener, |l, stop| {
            ingress::serve_until(l, ingress, limits, stop)
        })
    }

    fn serve_admin(
        &mut self,
        configured: SocketAddr,
        listener: TcpListener,
    ) -> anyhow::Result<Running> {
        let (admin, limits) = (self.admin.clone(), self.limits.admin());
        self.spawn_loop(configured, listener, |l, stop| {
            admin::serve_admin(l, admin, limits, stop)
        })
    }

    /// Starts the accept loop `serve` makes on `listener`, stopped alone or with the host.
    fn spawn_loop<F>(
        &mut self,
        configured: SocketAddr,
        listener: TcpListener,
        serve: impl FnOnce(TcpListener, Shutdown) -> F,
    ) -> anyhow::Result<Running>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        let stop = self.stop_with_host();
        self.started
            .push(tokio::spawn(serve(listener, stop.clone())));
        Ok(Running {
            configured,
            addr,
            stop,
        })
    }

    /// A stop signal of one loop that the host's shutdown also triggers.
    fn stop_with_host(&self) -> Shutdown {
        let stop = Shutdown::new();
        let (host, own) = (self.shutdown.triggered(), stop.clone());
        tokio::spawn(async move {
            host.await;
            own.trigger();
        });
        stop
    }
}
