//! One connection: hyper's HTTP/1.1 settings, the per-connection service, closing on
//! idle or shutdown, and the lingering close after an answered request.

use super::activity::{Activity, Busy, Tracked, Watched};
use super::ConnectionLimits;
use crate::ingress::Shutdown;
use crate::trigger::ResponseBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// hyper refuses a smaller buffer.
const MIN_BUFFER: usize = 8192;
/// How long a closing connection keeps reading (and discarding) what the client still
/// sends after the response, and how much of it.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 << 20;

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

pub(super) fn http1_builder(limits: &ConnectionLimits) -> hyper::server::conn::http1::Builder {
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

pub(super) async fn serve_connection<F, Fut>(
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
