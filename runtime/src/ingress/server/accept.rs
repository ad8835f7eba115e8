//! The accept loop: waits for a free connection slot, backs off failing `accept` calls,
//! hands each connection to its own task and, on shutdown, drains them.

use super::connection::{http1_builder, serve_connection};
use super::trim::Trimmer;
use super::ConnectionLimits;
use crate::ingress::Shutdown;
use crate::trigger::ResponseBody;
use hyper::body::Incoming;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning of a kind per interval; the next one says how many were skipped.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A warning that may fire at most once per [`WARN_INTERVAL`].
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    skipped: u64,
}

impl Throttled {
    /// `Some(skipped since the last warning)` when a warning is due now.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|at| now - at < WARN_INTERVAL) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.skipped))
    }
}

/// Exponential back-off of failing `accept` calls (out of file descriptors, memory):
/// retrying at once would spin a core and write a line per attempt.
#[derive(Default)]
struct AcceptBackoff {
    delay: Duration,
    warning: Throttled,
}

impl AcceptBackoff {
    fn failed(&mut self, listener: &str, err: &io::Error) -> Duration {
        // The peer gave up before we accepted: nothing is wrong on our side.
        if matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::Interrupted
        ) {
            return Duration::ZERO;
        }
        self.delay = (self.delay * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
        if let Some(skipped) = self.warning.due() {
            tracing::warn!(listener, error = %err, retry_in = ?self.delay, repeated = skipped, "accept failed; backing off");
        }
        self.delay
    }

    fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

/// Accepts connections on `listener` until `shutdown`, then stops accepting (new
/// connection attempts are refused), lets open connections finish their requests and
/// returns once all are closed. The caller bounds how long that may take.
pub async fn serve_with<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: Shutdown,
    handler: F,
) where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + Unpin + 'static,
    Fut: Future<Output = hyper::Response<ResponseBody>> + Send + 'static,
{
    let builder = Arc::new(http1_builder(&limits));
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let trimmer = Arc::new(Trimmer::new());
    let mut backoff = AcceptBackoff::default();
    let mut cap_warning = Throttled::default();
    let stop = shutdown.triggered();
    tokio::pin!(stop);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(skipped) = cap_warning.due() {
                    tracing::warn!(
                        listener = name,
                        max_connections = max,
                        repeated = skipped,
                        "connection cap reached; new connections wait"
                    );
                }
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                backoff.succeeded();
                stream
            }
            Err(err) => {
                let wait = backoff.failed(name, &err);
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        trimmer.opened(max - slots.available_permits());
        let (builder, handler, shutdown) = (builder.clone(), handler.clone(), shutdown.clone());
        let (slots, trimmer) = (slots.clone(), trimmer.clone());
        tokio::spawn(async move {
            serve_connection(&builder, stream, handler, limits.idle_timeout, shutdown).await;
            drop(slot);
            trimmer.closed(max - slots.available_permits());
        });
    }
    // Dropping the listener refuses new connections while the open ones drain.
    drop(listener);
    let _ = slots.acquire_many(max as u32).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_throttled_and_count_what_they_skipped() {
        let mut warning = Throttled::default();
        assert_eq!(warning.due(), Some(0));
        for _ in 0..1000 {
            assert_eq!(warning.due(), None);
        }
        warning.last = Some(Instant::now() - WARN_INTERVAL);
        assert_eq!(warning.due(), Some(1000));
    }

    #[test]
    fn accept_backoff_doubles_to_a_ceiling_and_ignores_peer_errors() {
        let mut backoff = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        let waits: Vec<_> = (0..10).map(|_| backoff.failed("test", &emfile)).collect();
        assert_eq!(waits[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(waits[1], ACCEPT_BACKOFF_MIN * 2);
        assert_eq!(*waits.last().unwrap(), ACCEPT_BACKOFF_MAX);
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.failed("test", &reset), Duration::ZERO);
        backoff.succeeded();
        assert_eq!(backoff.failed("test", &emfile), ACCEPT_BACKOFF_MIN);
    }
}
