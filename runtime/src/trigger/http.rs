//! The HTTP trigger: a route table of (optional host, path prefix) -> workload, replaced
//! as a whole on every deployment change so a request sees the old table or the new one,
//! never a mix; and [`HttpTrigger`], which the ingress hands each request to.

pub use crate::workload::{error_response, ResponseBody};

use crate::workload::Workload;
use arc_swap::ArcSwap;
use hyper::body::{Body, Incoming};
use std::sync::Arc;

/// `trigger.http` of a component: where it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute {
    /// Normalised by [`normalize_prefix`].
    pub route: String,
    /// Canonical host name (lower case, no trailing dot); `None` serves any host.
    pub host: Option<String>,
}

/// Shared routing state: the reconciler stores a new table, requests load the current.
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

pub fn shared_routes() -> SharedRoutes {
    Arc::new(ArcSwap::from_pointee(RouteTable::default()))
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    /// Starts with `/`; matches itself and anything below it (`/hello` serves
    /// `/hello` and `/hello/x`, not `/helloworld`).
    pub prefix: String,
    pub workload: Arc<Workload>,
}

#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Host-specific routes first, then longer prefixes first.
    routes: Vec<Route>,
    /// Every running workload, routed or not (timer-only ones too), for metrics.
    workloads: Vec<Arc<Workload>>,
}

/// Normalises a route prefix: leading `/`, no trailing `/` (except the root).
pub fn normalize_prefix(route: &str) -> String {
    let trimmed = route.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl RouteTable {
    /// The table of `workloads` (every running one), each routed where its
    /// [`HttpRoute`] says; a workload without one (timer only) is listed, not routed.
    pub fn of<'a>(
        workloads: impl IntoIterator<Item = (Option<&'a HttpRoute>, Arc<Workload>)>,
    ) -> Self {
        let mut routes = Vec::new();
        let mut all = Vec::new();
        for (http, workload) in workloads {
            if let Some(http) = http {
                routes.push(Route {
                    host: http.host.clone(),
                    prefix: http.route.clone(),
                    workload: workload.clone(),
                });
            }
            all.push(workload);
        }
        Self::new(routes, all)
    }

    pub fn new(mut routes: Vec<Route>, workloads: Vec<Arc<Workload>>) -> Self {
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        Self { routes, workloads }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn workloads(&self) -> &[Arc<Workload>] {
        &self.workloads
    }

    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&Arc<Workload>> {
        let host = host.map(|h| {
            h.rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(h, |(name, _)| name)
        });
        self.routes
            .iter()
            .find(|r| {
                r.host
                    .as_deref()
                    .is_none_or(|want| host.is_some_and(|h| crate::names::same_host(h, want)))
                    && prefix_matches(&r.prefix, path)
            })
            .map(|r| &r.workload)
    }
}

/// Hands requests to the workload their route names. The ingress owns connections and
/// HTTP/1.1; this owns what a request means.
#[derive(Clone)]
pub struct HttpTrigger {
    pub routes: SharedRoutes,
    pub max_body: u64,
}

impl HttpTrigger {
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
        // Borrowed from the request for the lookup only: no copy per request.
        let workload = {
            let host = request.uri().host().or_else(|| {
                request
                    .headers()
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
            });
            let table = self.routes.load();
            table.lookup(host, request.uri().path()).cloned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_boundaries() {
        assert!(prefix_matches("/hello", "/hello"));
        assert!(prefix_matches("/hello", "/hello/x"));
        assert!(!prefix_matches("/hello", "/helloworld"));
        assert!(prefix_matches("/", "/anything"));
        assert_eq!(normalize_prefix("/a/"), "/a");
        assert_eq!(normalize_prefix("/"), "/");
    }
}
