//! The hyper 1.x front door: HTTP/1.1 on the configured listener, each request routed
//! by host and path prefix to a workload; plus the admin listener.

mod admin;
mod router;

pub use admin::{serve_admin, AdminState};
pub use router::{normalize_prefix, Route, RouteTable};

use crate::workload::{error_response, ResponseBody};
use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Shared routing state: the reconciler stores a new table, requests load the current.
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

pub fn shared_routes() -> SharedRoutes {
    Arc::new(ArcSwap::from_pointee(RouteTable::default()))
}

#[derive(Clone)]
pub struct Ingress {
    pub routes: SharedRoutes,
    pub max_body: u64,
}

impl Ingress {
    pub async fn handle(&self, request: hyper::Request<Incoming>) -> hyper::Response<ResponseBody> {
        let host = request.uri().host().map(str::to_owned).or_else(|| {
            request
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
        let workload = {
            let table = self.routes.load();
            table.lookup(host.as_deref(), request.uri().path()).cloned()
        };
        match workload {
            Some(workload) => workload.handle_http(request, self.max_body).await,
            None => error_response(
                404,
                &format!("no deployment serves {}", request.uri().path()),
                false,
            ),
        }
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, ingress: Ingress) {
    serve_with(listener, move |req| {
        let ingress = ingress.clone();
        async move { Ok::<_, Infallible>(ingress.handle(req).await) }
    })
    .await
}

/// Shared accept loop of the ingress and admin listeners.
pub(crate) async fn serve_with<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<ResponseBody>, Infallible>>
        + Send
        + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // Running out of file descriptors must not end the server.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(handler);
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
            }
        });
    }
}
