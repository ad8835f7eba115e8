//! Route table: (optional host, path prefix) -> workload. Replaced as a whole on every
//! deployment change, so a request sees the old table or the new one, never a mix.

use crate::workload::Workload;
use std::sync::Arc;

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
