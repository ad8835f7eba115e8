//! The `GET /status` exchange with the admin listener, and every way it can fail to
//! yield a status document.

use super::address::dial_address;
use super::render::clean;
use super::StatusReport;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A status document is a few KiB per deployment; this bounds what a wrong peer can
/// make the command hold.
const MAX_DOCUMENT: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusCmdError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{path} has no [http] admin address, so that host runs no admin listener; set one there (and restart the host) or pass --admin")]
    NoAdmin { path: PathBuf },
    #[error("cannot reach the admin listener at {addr}: {source} (is `wasmgate up` running with this [http] admin address?)")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin listener at {addr} did not answer within {}s", timeout.as_secs_f64())]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP exchange with the admin listener at {addr} failed: {source}")]
    Exchange {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the admin listener at {addr} answered /status with HTTP {status}: {body}")]
    Http {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    #[error("{addr}/status is not a wasmgate status document: {source}")]
    Document {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
}

/// `GET /status` over one HTTP/1.1 connection: the raw document and its parsed view.
pub async fn fetch(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Bytes, StatusReport), StatusCmdError> {
    let addr = dial_address(addr);
    let body = tokio::time::timeout(timeout, get_status(addr))
        .await
        .map_err(|_| StatusCmdError::Timeout { addr, timeout })??;
    let report = serde_json::from_slice(&body)
        .map_err(|source| StatusCmdError::Document { addr, source })?;
    Ok((body, report))
}

async fn get_status(addr: SocketAddr) -> Result<Bytes, StatusCmdError> {
    let exchange = |source: Box<dyn std::error::Error + Send + Sync>| StatusCmdError::Exchange {
        addr,
        source,
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| StatusCmdError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| exchange(e.into()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    // The admin listener answers only IP literals (and listed names) in `Host`.
    let request = http::Request::get("/status")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| exchange(e.into()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| exchange(e.into()))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map_err(exchange)?
        .to_bytes();
    driver.abort();
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
        return Err(StatusCmdError::Http {
            addr,
            status,
            body: clean(text.trim()),
        });
    }
    Ok(body)
}
