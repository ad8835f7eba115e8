//! Outgoing HTTP from guests: denied unless the component's `outbound` allow-list in
//! `x-wasmgate-extensions` names the destination.

use http_body_util::BodyExt;
use std::future::Future;
use std::sync::Arc;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Destinations a component may call: `host`, `host:port` or `*.domain` (any port).
/// The rules are parsed once per workload; each instance holds an `Arc` of them.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allowed: Arc<[Rule]>,
}

/// One allow-list entry, lowercased.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    /// `*.domain`: stored as `.domain`, matched as a suffix on any port.
    Suffix(String),
    HostPort(String, u16),
    /// A bare host, or text that is not `host:port` (compared whole, on any port).
    Host(String),
}

impl Rule {
    fn parse(text: &str) -> Self {
        let text = text.to_ascii_lowercase();
        if let Some(suffix) = text.strip_prefix("*.") {
            return Self::Suffix(format!(".{suffix}"));
        }
        match text.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => Self::HostPort(host.to_owned(), port),
                Err(_) => Self::Host(text),
            },
            None => Self::Host(text),
        }
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        match self {
            Self::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            Self::HostPort(h, p) => *p == port && host.eq_ignore_ascii_case(h),
            Self::Host(h) => host.eq_ignore_ascii_case(h),
        }
    }
}

impl OutboundPolicy {
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: allowed.iter().map(|rule| Rule::parse(rule)).collect(),
        }
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.allowed.iter().any(|rule| rule.allows(host, port))
    }
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        let uri = request.uri();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let allowed = uri.host().is_some_and(|host| self.allows(host, port));
        if !allowed {
            // The destination only: a path or query may carry a guest's secrets.
            let host = uri.host().unwrap_or("");
            tracing::warn!(%host, port, "outbound request denied: destination not in the component's outbound allow-list");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_rules() {
        let policy = OutboundPolicy::new(&[
            "api.example.com".into(),
            "127.0.0.1:9000".into(),
            "*.ACME.io".into(),
            "[::1]:8080".into(),
        ]);
        assert!(policy.allows("api.example.com", 443));
        assert!(policy.allows("API.example.com", 80));
        assert!(policy.allows("127.0.0.1", 9000));
        assert!(!policy.allows("127.0.0.1", 9001));
        assert!(policy.allows("x.acme.io", 1));
        assert!(!policy.allows("acme.io", 1));
        assert!(!policy.allows("evil.com", 443));
        assert!(policy.allows("X.Acme.IO", 443));
        assert!(!policy.allows("xacme.io", 443));
        assert!(policy.allows("[::1]", 8080));
        assert!(!policy.allows("[::1]", 8081));
        // Multi-byte text never splits inside a character.
        assert!(!policy.allows("\u{e9}acme.io", 1));
        assert!(!OutboundPolicy::default().allows("api.example.com", 443));
    }
}
