//! The accept loop both listeners share, built so that no client can exhaust the host:
//! a cap on open connections per listener (the admin listener has its own, so a flood on
//! the ingress leaves it answering), a deadline for request headers (which also ends
//! idle keep-alive connections), a cap on header size, and accept errors (out of file
//! descriptors) that back off instead of spinning and are logged at a bounded rate.

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::workload::ResponseBody;

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Time to receive a request's complete headers, counted from when the connection
    /// is ready for the next request: it also bounds an idle keep-alive connection.
    pub header_timeout: Duration,
    /// Largest request head (request line + headers).
    pub max_header_bytes: usize,
}

impl ConnectionLimits {
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 << 10;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
    pub const ADMIN_MAX_CONNECTIONS: usize = 32;

    /// The admin listener's limits: its own small budget, the same deadlines.
    pub fn admin(&self) -> Self {
        Self {
            max_connections: Self::ADMIN_MAX_CONNECTIONS,
            ..*self
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            max_header_bytes: Self::DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// Accept errors: wait 10 ms after the first, doubling up to 1 s while they last; one
/// warning per 10 s with the count of those not logged.
struct AcceptBackoff {
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Self {
            delay: Duration::ZERO,
            last_log: None,
            suppressed: 0,
        }
    }

    fn success(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// The wait after a failed accept, and whether to log it now.
    fn failure(&mut self, now: Instant) -> (Duration, Option<u64>) {
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        let log = self
            .last_log
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY);
        if log {
            self.last_log = Some(now);
            let suppressed = std::mem::take(&mut self.suppressed);
            (self.delay, Some(suppressed))
        } else {
            self.suppressed += 1;
            (self.delay, None)
        }
    }
}

/// Serves `listener` with `handler` until the task is dropped.
pub(crate) async fn serve_with<F, Fut>(listener: TcpListener, limits: ConnectionLimits, handler: F)
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<hyper::Response<ResponseBody>, Infallible>>
        + Send
        + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = AcceptBackoff::new();
    loop {
        // At the cap, stop accepting: further clients wait in the accept queue and
        // hold no file descriptor or buffer of ours.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => {
                backoff.success();
                conn
            }
            Err(err) => {
                let (wait, log) = backoff.failure(Instant::now());
                if let Some(suppressed) = log {
                    tracing::warn!(error = %err, retry_in = ?wait, suppressed, "accept failed");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(handler);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                tracing::debug!(peer = %peer, error = %err, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_and_log_rarely() {
        let mut b = AcceptBackoff::new();
        let t0 = Instant::now();
        let (d, log) = b.failure(t0);
        assert_eq!((d, log), (Duration::from_millis(10), Some(0)));
        let mut logged = 0;
        let mut now = t0;
        for _ in 0..100 {
            now += Duration::from_millis(50);
            let (d, log) = b.failure(now);
            assert!(d <= AcceptBackoff::MAX);
            logged += usize::from(log.is_some());
        }
        // 5 s of errors: no further line.
        assert_eq!(logged, 0);
        let (_, log) = b.failure(now + Duration::from_secs(10));
        assert_eq!(log, Some(100), "the next line counts what was not logged");
        b.success();
        assert_eq!(b.failure(now).0, Duration::from_millis(10));
    }
}
