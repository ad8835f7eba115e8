//! One HTTPS exchange with the WFM over a fresh HTTP/1.1 connection. Polls are seconds
//! apart, so a connection per request costs little and picks up renewed credentials and
//! refreshed trust bundles without any connection bookkeeping.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {0}")]
    Url(String),
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("TLS handshake with {addr} failed: {message}")]
    Tls { addr: String, message: String },
    #[error("HTTP exchange with {addr} failed: {message}")]
    Exchange { addr: String, message: String },
    #[error("response from {url} exceeds {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("request to {0} timed out")]
    Timeout(String),
}

impl HttpError {
    /// Whether the WFM may simply be away (retry later) rather than misconfigured.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Exchange { .. } | Self::Timeout(_)
        )
    }
}

/// A response, body fully read (bounded).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `request` to its URL's host over TLS with `tls`; reads at most `max_body` bytes.
pub async fn send(
    tls: Arc<rustls::ClientConfig>,
    request: http::Request<Bytes>,
    max_body: u64,
) -> Result<Response, HttpError> {
    let url_text = request.uri().to_string();
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(tls, request, max_body))
        .await
        .map_err(|_| HttpError::Timeout(url_text))?
}

async fn exchange(
    tls: Arc<rustls::ClientConfig>,
    request: http::Request<Bytes>,
    max_body: u64,
) -> Result<Response, HttpError> {
    let url = Url::parse(&request.uri().to_string()).map_err(|e| HttpError::Url(e.to_string()))?;
    let host = url
        .host_str()
        .ok_or_else(|| HttpError::Url(url.to_string()))?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let addr = format!("{host}:{port}");
    let tcp =
        tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|e| HttpError::Connect {
                addr: addr.clone(),
                message: e.to_string(),
            })?;
    let _ = tcp.set_nodelay(true);
    let server_name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| HttpError::Url(format!("{host}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| HttpError::Tls {
            addr: addr.clone(),
            message: e.to_string(),
        })?;
    let exchange_err = |e: hyper::Error| HttpError::Exchange {
        addr: addr.clone(),
        message: e.to_string(),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(exchange_err)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let (mut parts, body) = request.into_parts();
    // Origin-form request target; the Host header carries the authority.
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    if !parts.headers.contains_key(http::header::HOST) {
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(&authority).map_err(|e| HttpError::Url(e.to_string()))?,
        );
    }
    parts.uri = path
        .parse()
        .map_err(|e: http::uri::InvalidUri| HttpError::Url(e.to_string()))?;
    let response = sender
        .send_request(http::Request::from_parts(parts, Full::new(body)))
        .await
        .map_err(exchange_err)?;
    let (head, body) = response.into_parts();
    let body = Limited::new(body, max_body as usize)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLarge {
                    url: url.to_string(),
                    limit: max_body,
                }
            } else {
                HttpError::Exchange {
                    addr: addr.clone(),
                    message: e.to_string(),
                }
            }
        })?
        .to_bytes();
    driver.abort();
    Ok(Response {
        status: head.status.as_u16(),
        headers: head.headers,
        body,
    })
}
