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
    exchange_on(stream, &url, &host, &addr, request, max_body).await
}

/// The HTTP/1.1 exchange on an established `stream`: sends `request`, reads the head and
/// at most `max_body` bytes of body.
async fn exchange_on<S>(
    stream: S,
    url: &Url,
    host: &str,
    addr: &str,
    request: http::Request<Bytes>,
    max_body: u64,
) -> Result<Response, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = addr.to_owned();
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
            None => host.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers one request on the far end of a pipe with a `200` of `body_len` bytes,
    /// declared (`content-length`) or chunked; the exchange on the near end reads at
    /// most `limit`.
    async fn reply_of(body_len: usize, chunked: bool, limit: u64) -> Result<Response, HttpError> {
        let (near, mut far) = tokio::io::duplex(64 << 10);
        let server = tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if far.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let body = vec![b'x'; body_len];
            let reply = if chunked {
                let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for chunk in body.chunks(4096) {
                    r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    r.extend_from_slice(chunk);
                    r.extend_from_slice(b"\r\n");
                }
                r.extend_from_slice(b"0\r\n\r\n");
                r
            } else {
                let mut r =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n").into_bytes();
                r.extend_from_slice(&body);
                r
            };
            // The client stops reading at its limit and drops the pipe: a write error
            // then is what a WFM that sends too much sees.
            let _ = far.write_all(&reply).await;
        });
        let url = Url::parse("https://wfm.example:8443/api/v1/capabilities/edge-01").unwrap();
        let request = http::Request::put(url.as_str())
            .body(Bytes::from_static(b"{}"))
            .unwrap();
        let result = exchange_on(
            near,
            &url,
            "wfm.example",
            "wfm.example:8443",
            request,
            limit,
        )
        .await;
        server.abort();
        result
    }

    /// Every WFM reply is read with a byte limit (64 KiB for capabilities and status
    /// replies, 1 MiB for manifests and YAMLs): a reply at the limit is read whole, one
    /// byte more is refused as too large, declared or chunked.
    #[tokio::test]
    async fn replies_are_read_up_to_their_limit() {
        const LIMIT: u64 = 64 << 10;
        for chunked in [false, true] {
            let at_limit = reply_of(LIMIT as usize, chunked, LIMIT).await.unwrap();
            assert_eq!(at_limit.body.len() as u64, LIMIT, "chunked: {chunked}");
            match reply_of(LIMIT as usize + 1, chunked, LIMIT).await {
                Err(HttpError::TooLarge { limit, url }) => {
                    assert_eq!(limit, LIMIT);
                    assert!(url.contains("capabilities/edge-01"), "{url}");
                }
                other => panic!("chunked: {chunked}: {other:?}"),
            }
        }
        // Far over the limit, in chunks: refused the same way.
        match reply_of(8 << 20, true, LIMIT).await {
            Err(HttpError::TooLarge { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
