//! Outgoing HTTP from guests: denied unless the component's `outbound` allow-list in
//! `x-wasmgate-extensions` names the destination.

use http_body_util::BodyExt;
use std::future::Future;
use std::sync::Arc;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Destinations a component may call: `host`, `host:port` or `*.domain` (any port).
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allowed: Arc<[String]>,
}

impl OutboundPolicy {
    pub fn new(allowed: Arc<[String]>) -> Self {
        Self { allowed }
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.allowed.iter().any(|rule| {
            let rule = rule.to_ascii_lowercase();
            if let Some(suffix) = rule.strip_prefix("*.") {
                return host.ends_with(&format!(".{suffix}"));
            }
            match rule.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() => h == host && p.parse() == Ok(port),
                _ => rule == host,
            }
        })
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
            tracing::warn!(uri = %uri, "outbound request denied: destination not in the component's outbound allow-list");
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
        let policy = OutboundPolicy::new(
            vec![
                "api.example.com".into(),
                "127.0.0.1:9000".into(),
                "*.acme.io".into(),
            ]
            .into(),
        );
        assert!(policy.allows("api.example.com", 443));
        assert!(policy.allows("API.example.com", 80));
        assert!(policy.allows("127.0.0.1", 9000));
        assert!(!policy.allows("127.0.0.1", 9001));
        assert!(policy.allows("x.acme.io", 1));
        assert!(!policy.allows("acme.io", 1));
        assert!(!policy.allows("evil.com", 443));
        assert!(!OutboundPolicy::default().allows("api.example.com", 443));
    }
}
