//! The hyper 1.x front door: HTTP/1.1 on the configured listener, each request routed
//! by host and path prefix to a workload; plus the admin listener. Both are bounded
//! (see [`ConnectionLimits`]) and drain gracefully on [`Shutdown`].

mod admin;
mod router;
mod server;
mod shutdown;

pub use admin::{serve_admin, AdminState};
pub use router::{normalize_prefix, Route, RouteTable};
pub use server::{
    default_max_connections, fd_limit, raise_fd_limit, ConnectionLimits, ADMIN_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS,
};
pub use shutdown::Shutdown;

use crate::workload::{error_response, ResponseBody};
use arc_swap::ArcSwap;
use hyper::body::{Body, Incoming};
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
    /// Serves one request inside its `http.request` span (exported as an OTLP server
    /// span when traces are): the guest's span and log lines are its children.
    pub async fn handle(&self, request: hyper::Request<Incoming>) -> hyper::Response<ResponseBody> {
        use tracing::field::Empty;
        let span = tracing::info_span!(
            "http.request",
            otel.kind = "server",
            http.request.method = %request.method(),
            url.path = request.uri().path(),
            wasmgate.deployment = Empty,
            wasmgate.component = Empty,
            wasmgate.partition = Empty,
            wasmgate.instantiate_us = Empty,
            http.response.status_code = Empty,
            otel.status_code = Empty,
        );
        let response = tracing::Instrument::instrument(self.route(request), span.clone()).await;
        let status = response.status().as_u16();
        span.record("http.response.status_code", status);
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
        response
    }

    async fn route(&self, request: hyper::Request<Incoming>) -> hyper::Response<ResponseBody> {
        // A declared length is known before a byte of the body is read: refuse it before
        // routing and admission, so it neither reaches a guest nor holds a slot.
        let declared = request.body().size_hint().lower();
        if declared > self.max_body {
            let mut response = error_response(
                413,
                &format!(
                    "request body of {declared} bytes is over the limit of {} bytes",
                    self.max_body
                ),
                false,
            );
            // The unread body makes the connection unusable; say so, and the lingering
            // close lets the client finish sending and read this answer.
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            return response;
        }
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
            Some(workload) => {
                let span = tracing::Span::current();
                span.record(
                    "wasmgate.deployment",
                    workload.spec.deployment_name.as_str(),
                );
                span.record("wasmgate.component", workload.spec.component.as_str());
                span.record(
                    "wasmgate.partition",
                    workload.spec.partition.device_id.as_str(),
                );
                workload.handle_http(request, self.max_body).await
            }
            None => error_response(
                404,
                &format!("no deployment serves {}", request.uri().path()),
                false,
            ),
        }
    }
}

/// Accepts connections with the default limits until the task is dropped.
pub async fn serve(listener: TcpListener, ingress: Ingress) {
    serve_until(
        listener,
        ingress,
        ConnectionLimits::default(),
        Shutdown::new(),
    )
    .await
}

/// Serves until `shutdown`, then drains: returns once every open connection finished.
pub async fn serve_until(
    listener: TcpListener,
    ingress: Ingress,
    limits: ConnectionLimits,
    shutdown: Shutdown,
) {
    let ingress = Arc::new(ingress);
    server::serve_with("ingress", listener, limits, shutdown, move |req| {
        let ingress = ingress.clone();
        async move { ingress.handle(req).await }
    })
    .await
}
