//! The hyper 1.x front door: HTTP/1.1 on the configured listener, each request routed
//! by host and path prefix to a workload; plus the admin listener.

mod admin;
mod conn;
mod router;

pub use admin::{serve_admin, AdminState};
pub(crate) use conn::serve_with;
pub use conn::ConnectionLimits;
pub use router::{normalize_prefix, Route, RouteTable};

use crate::workload::{error_response, ResponseBody};
use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
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
        if let Some(declared) = declared_length(&request).filter(|n| *n > self.max_body) {
            return self.refuse_body(request, declared).await;
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
            Some(workload) => workload.handle_http(request, self.max_body).await,
            None => error_response(
                404,
                &format!("no deployment serves {}", request.uri().path()),
                false,
            ),
        }
    }
}

/// The `content-length` a request declares, if it declares one that parses.
fn declared_length<B>(request: &hyper::Request<B>) -> Option<u64> {
    request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Bodies up to this size past a refused declaration are read and discarded.
const DRAIN_LIMIT: u64 = 64 << 20;
/// ... for at most this long.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

impl Ingress {
    /// `413` for a body declared larger than `max-request-body`, before routing.
    ///
    /// Closing a connection with unread request bytes makes the kernel send a reset,
    /// which can destroy the response before the client reads it. So a client that sends
    /// its body without waiting (no `Expect: 100-continue`) has it read and discarded
    /// first, within [`DRAIN_LIMIT`] and [`DRAIN_TIME`]; a larger declaration is
    /// answered at once. The connection is closed either way.
    async fn refuse_body(
        &self,
        request: hyper::Request<Incoming>,
        declared: u64,
    ) -> hyper::Response<ResponseBody> {
        let expects_continue = request
            .headers()
            .get(hyper::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !expects_continue && declared <= DRAIN_LIMIT {
            let mut body = request.into_body();
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while let Some(Ok(_)) = body.frame().await {}
            })
            .await;
        }
        let mut response = error_response(
            413,
            &format!(
                "request body of {declared} bytes is larger than max-request-body ({} bytes)",
                self.max_body
            ),
            false,
        );
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        response
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, limits: ConnectionLimits, ingress: Ingress) {
    serve_with(listener, limits, move |req| {
        let ingress = ingress.clone();
        async move { Ok::<_, Infallible>(ingress.handle(req).await) }
    })
    .await
}
