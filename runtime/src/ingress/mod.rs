//! The hyper 1.x front door: connections and HTTP/1.1 on a listener, bounded (see
//! [`ConnectionLimits`]) and drained gracefully on [`Shutdown`]. What a request means is
//! the trigger's business: the ingress hands each one to a [`HttpTrigger`], and the
//! admin listener (in `host`) to its own handler through [`serve_with`].

mod server;
mod settings;
mod shutdown;

pub use server::{
    default_max_connections, fd_limit, raise_fd_limit, serve_with, ConnectionLimits,
    ADMIN_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS,
};
pub use settings::{
    HttpSettings, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_SIZE,
};
pub use shutdown::Shutdown;

use crate::trigger::HttpTrigger;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Accepts connections with the default limits until the task is dropped.
pub async fn serve(listener: TcpListener, trigger: HttpTrigger) {
    serve_until(
        listener,
        trigger,
        ConnectionLimits::default(),
        Shutdown::new(),
    )
    .await
}

/// Serves until `shutdown`, then drains: returns once every open connection finished.
pub async fn serve_until(
    listener: TcpListener,
    trigger: HttpTrigger,
    limits: ConnectionLimits,
    shutdown: Shutdown,
) {
    let trigger = Arc::new(trigger);
    server::serve_with("ingress", listener, limits, shutdown, move |req| {
        let trigger = trigger.clone();
        async move { trigger.handle(req).await }
    })
    .await
}
