//! Connection handling shared by the ingress and admin listeners: a cap on open
//! connections (one budget per listener, so a flood on one leaves the other answering),
//! header and idle timeouts, a bounded request head, accept errors backed off without
//! flooding the log, graceful drain, and a lingering close so that a response sent
//! before the request body was read (413) reaches the client instead of a reset.

use super::Shutdown;
use crate::trigger::ResponseBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

/// Limits of one listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From accept, or from the end of the previous response, until a complete
    /// request head arrived (hyper's header read timeout).
    pub header_timeout: Duration,
    /// With no request in progress and no byte of the next one received.
    pub idle_timeout: Duration,
    /// Open connections at most; further ones wait in the kernel's listen backlog.
    pub max_connections: usize,
    /// Request line plus headers; bigger heads get 431. Also hyper's buffer size, so
    /// a connection never buffers more than this of an unfinished head.
    pub max_header_size: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: super::DEFAULT_HEADER_TIMEOUT,
            idle_timeout: super::DEFAULT_IDLE_TIMEOUT,
            max_connections: default_max_connections(),
            max_header_size: super::DEFAULT_MAX_HEADER_SIZE as usize,
        }
    }
}

impl ConnectionLimits {
    /// The admin listener's: the same timeouts with its own, small connection budget.
    pub fn admin(&self) -> Self {
        Self {
            max_connections: ADMIN_MAX_CONNECTIONS,
            ..*self
        }
    }
}

/// Connections the admin listener serves at once (probes and scrapes are few).
pub const ADMIN_MAX_CONNECTIONS: usize = 32;
/// Ingress connections when the configuration names no number.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// File descriptors kept free of ingress connections by the default cap: the admin
/// listener, state and artifact files, registry and WFM connections, guests' outbound
/// requests.
const FD_RESERVE: usize = 256;
/// hyper refuses a smaller buffer.
const MIN_BUFFER: usize = 8192;
/// How long a closing connection keeps reading (and discarding) what the client still
/// sends after the response, and how much of it.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning of a kind per interval; the next one says how many were skipped.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The open-file limit (soft), where the platform has one.
pub fn fd_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            return Some(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX));
        }
    }
    None
}

/// Raises the soft open-file limit to the hard one (as Go and nginx do): the default
/// soft limit of many distributions (1024) is what an idle-connection flood exhausts.
pub fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit / setrlimit only read or write the struct they are given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return;
            }
            // Unlimited hard limits are refused by some kernels as a soft value.
            let wanted = limit.rlim_max.min(1 << 20);
            if wanted > limit.rlim_cur {
                limit.rlim_cur = wanted;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// 1024, or fewer when the open-file limit would not leave [`FD_RESERVE`] descriptors
/// and the admin listener's budget free.
pub fn default_max_connections() -> usize {
    fd_limit().map_or(DEFAULT_MAX_CONNECTIONS, |limit| {
        limit
            .saturating_sub(FD_RESERVE + ADMIN_MAX_CONNECTIONS)
            .clamp(16, DEFAULT_MAX_CONNECTIONS)
    })
}

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

/// Hands freed connection memory back to the OS after a crowd of connections left.
/// glibc keeps freed heap in its per-thread arenas, fragmented by the connections'
/// buffers: without a trim, a burst of big half-sent heads leaves its peak behind.
struct Trimmer {
    /// Open connections at most since the last trim.
    high_water: AtomicUsize,
}

/// Bursts smaller than this are not worth a trim.
const TRIM_MIN_CONNECTIONS: usize = 64;

impl Trimmer {
    fn new() -> Self {
        Self {
            high_water: AtomicUsize::new(0),
        }
    }

    fn opened(&self, open: usize) {
        self.high_water.fetch_max(open, Ordering::Relaxed);
    }

    /// Trims once the open connections fell to a quarter of their high-water mark.
    fn closed(&self, open: usize) {
        let high = self.high_water.load(Ordering::Relaxed);
        if high < TRIM_MIN_CONNECTIONS || open * 4 > high {
            return;
        }
        // One trim per fall: whoever resets the mark runs it.
        if self
            .high_water
            .compare_exchange(high, open, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // malloc_trim walks every arena under its lock: not on an async worker.
            tokio::task::spawn_blocking(trim_heap);
        }
    }
}

fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the idle timer needs to know about a connection.
struct Activity {
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
    fn new() -> Self {
        Self {
            opened: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            heard: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && !self.heard.load(Ordering::SeqCst)
    }

    /// Resolves once the connection has been idle for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
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
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Self {
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
struct Tracked {
    body: ResponseBody,
    _busy: Busy,
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
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
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

/// The per-connection service: the listener's handler plus in-flight accounting.
struct Service<F> {
    handler: F,
    activity: Arc<Activity>,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<hyper::Response<Tracked>, Infallible>> + Send>>;

impl<F, Fut> hyper::service::Service<hyper::Request<Incoming>> for Service<F>
where
    F: Fn(hyper::Request<Incoming>) -> Fut,
    Fut: Future<Output = hyper::Response<ResponseBody>> + Send + 'static,
{
    type Response = hyper::Response<Tracked>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: hyper::Request<Incoming>) -> ResponseFuture {
        let busy = Busy::start(self.activity.clone());
        let response = (self.handler)(request);
        Box::pin(async move {
            let response = response.await;
            Ok(response.map(|body| Tracked { body, _busy: busy }))
        })
    }
}

fn http1_builder(limits: &ConnectionLimits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_size)
        // hyper buffers an unfinished head up to this size (400 KiB by default): keep
        // it at the head limit so idle half-sent heads cost little memory.
        .max_buf_size(limits.max_header_size.max(MIN_BUFFER));
    builder
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

async fn serve_connection<F, Fut>(
    builder: &hyper::server::conn::http1::Builder,
    stream: TcpStream,
    handler: F,
    idle_timeout: Duration,
    shutdown: Shutdown,
) where
    F: Fn(hyper::Request<Incoming>) -> Fut + Unpin,
    Fut: Future<Output = hyper::Response<ResponseBody>> + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let service = Service {
        handler,
        activity: activity.clone(),
    };
    let mut connection = builder.serve_connection(io, service);
    let idle = activity.idle_for(idle_timeout);
    tokio::pin!(idle);
    let stop = shutdown.triggered();
    tokio::pin!(stop);
    let mut closing = false;
    // Closed by us between requests with nothing received: no unread input to linger for.
    let mut closed_idle = false;
    let ended = loop {
        tokio::select! {
            ended = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => break ended,
            // Closes now when idle; otherwise after the response in progress, which
            // then carries `connection: close`.
            () = &mut idle, if !closing => {
                Pin::new(&mut connection).graceful_shutdown();
                (closing, closed_idle) = (true, true);
            }
            () = &mut stop, if !closing => {
                Pin::new(&mut connection).graceful_shutdown();
                closing = true;
                closed_idle = activity.is_idle();
            }
        }
    };
    let answered = match &ended {
        Ok(()) => !(closed_idle && activity.is_idle()),
        // hyper answered 400 / 431 to a head it may not have read to the end.
        Err(err) => err.is_parse() || err.is_parse_too_large(),
    };
    if let Err(err) = ended {
        tracing::debug!(error = %err, "connection ended with an error");
    }
    let stream = connection.into_parts().io.into_inner().stream;
    if answered {
        linger(stream).await;
    }
}

/// Closing a socket with unread input makes the kernel answer with a reset, and a
/// client still sending its body (say, after a 413) then loses the response it has not
/// read yet. So: send our FIN, read and discard what still comes for a bounded time
/// and amount, then close.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    // On the heap and only here, so idle connections do not carry the buffer.
    let mut buf = vec![0u8; 8192];
    let mut left = LINGER_BYTES;
    let drain = async {
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
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
