//! What the idle timer of a connection watches: requests in flight until their response
//! body is dropped, and the first byte of the next request.

use crate::trigger::ResponseBody;
use hyper::body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// What the idle timer needs to know about a connection.
pub(super) struct Activity {
    /// tokio's clock, so that tests can run the timer on paused time.
    opened: tokio::time::Instant,
    /// Requests whose response body is not finished yet.
    in_flight: AtomicUsize,
    /// A byte arrived since the connection went idle (a request head is on its way;
    /// the header timeout governs it then).
    heard: AtomicBool,
    /// When the connection last went idle, in nanoseconds since `opened`.
    idle_since: AtomicU64,
    changed: Notify,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            opened: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            heard: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && !self.heard.load(Ordering::SeqCst)
    }

    /// Resolves once the connection has been idle for `timeout`.
    pub(super) async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before reading the state, so no change between is missed.
            changed.as_mut().enable();
            if !self.is_idle() {
                changed.await;
                continue;
            }
            let since = Duration::from_nanos(self.idle_since.load(Ordering::SeqCst));
            let deadline = self.opened + since + timeout;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return,
                () = changed => {}
            }
        }
    }
}

/// Counts a request as in flight until its response body is dropped.
pub(super) struct Busy(Arc<Activity>);

impl Busy {
    pub(super) fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.changed.notify_waiters();
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        // Idle state first, then the count the timer checks before reading it.
        let since = u64::try_from(activity.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        activity.idle_since.store(since, Ordering::SeqCst);
        activity.heard.store(false, Ordering::SeqCst);
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
        activity.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
pub(super) struct Tracked {
    pub(super) body: ResponseBody,
    pub(super) _busy: Busy,
}

impl Body for Tracked {
    type Data = <ResponseBody as Body>::Data;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting the first byte that arrives while the connection is idle.
pub(super) struct Watched {
    pub(super) stream: TcpStream,
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before && !this.activity.heard.swap(true, Ordering::SeqCst) {
            this.activity.changed.notify_waiters();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_timer_waits_for_the_response_and_stops_at_the_first_byte() {
        let activity = Arc::new(Activity::new());
        let busy = Busy::start(activity.clone());
        let timeout = Duration::from_millis(200);
        let never = Duration::from_millis(700);
        // Busy: never idle, however long the request takes.
        assert!(tokio::time::timeout(never, activity.idle_for(timeout))
            .await
            .is_err());
        drop(busy);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(never, activity.idle_for(timeout))
            .await
            .expect("idle after the response");
        assert!(started.elapsed() >= timeout - Duration::from_millis(5));
        // A byte of the next request: the header timeout's business, not this one's.
        activity.heard.store(true, Ordering::SeqCst);
        assert!(tokio::time::timeout(never, activity.idle_for(timeout))
            .await
            .is_err());
    }
}
