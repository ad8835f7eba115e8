//! Request bodies on their way to a guest: a client that is not sending must not hold an
//! instance slot.
//!
//! The rule (see the README): a request body must arrive at a minimum average rate of
//! [`MIN_RATE`] bytes per second after a grace period of [`GRACE`] from the request head,
//! that is, `t` seconds after the head at least `(t - GRACE) * MIN_RATE` bytes must have
//! arrived, until the body ends. Before an instance slot is taken the host reads up to
//! [`PREFETCH`] bytes (or the whole body, if smaller) under that rule; a client that falls
//! below it while no slot is held gets `408 Request Timeout` and never takes a slot. One
//! that falls below it later, while the guest reads the rest, also gets 408 if the guest
//! has not answered yet (the instance is stopped and its slot freed); otherwise the guest
//! sees the body stream fail.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Body bytes read before a slot is taken. Small, because every waiting client holds
/// this much memory; most device API bodies fit.
pub const PREFETCH: usize = 16 << 10;
/// How long a body may take to start arriving.
pub const GRACE: Duration = Duration::from_secs(10);
/// The slowest average rate a body may arrive at after [`GRACE`].
pub const MIN_RATE: u64 = 1024;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The minimum-rate rule; [`BodyRate::default`] is the documented one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRate {
    pub grace: Duration,
    /// Bytes per second.
    pub min_rate: u64,
}

impl Default for BodyRate {
    fn default() -> Self {
        Self {
            grace: GRACE,
            min_rate: MIN_RATE,
        }
    }
}

/// The client sent its body below the minimum rate.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {} bytes/s after a {:?} grace", .0.min_rate, .0.grace)]
pub struct TooSlow(pub BodyRate);

/// Tells the side waiting for the response head that the body fell below the minimum
/// rate. Unlike a channel, dropping it (the guest is done with the body) wakes nobody:
/// that wake crossed from the partition's threads to the ingress on every request.
#[derive(Debug, Clone, Default)]
pub struct Tripwire(std::sync::Arc<tokio::sync::Notify>);

impl Tripwire {
    fn trip(&self) {
        // Kept as a permit when nobody waits yet: a trip is never lost.
        self.0.notify_one();
    }

    /// Resolves once tripped; never, if it never is.
    pub async fn tripped(&self) {
        self.0.notified().await
    }
}

/// Enforces the minimum rate on `inner`; the first violation is also signalled on the
/// [`Tripwire`] given to [`Paced::new`], so the request can be answered with 408 at once.
pub struct Paced<B> {
    inner: B,
    rate: BodyRate,
    start: Instant,
    received: u64,
    deadline: Pin<Box<Sleep>>,
    tripped: Option<Tripwire>,
}

impl<B> Paced<B> {
    pub fn new(inner: B, rate: BodyRate, tripped: Tripwire) -> Self {
        let start = Instant::now();
        Self {
            inner,
            rate,
            start,
            received: 0,
            deadline: Box::pin(tokio::time::sleep_until(start + rate.grace)),
            tripped: Some(tripped),
        }
    }

    fn allowance(&self) -> Instant {
        let rate = self.rate.min_rate.max(1) as f64;
        self.start + self.rate.grace + Duration::from_secs_f64(self.received as f64 / rate)
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let next = this.allowance();
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    if let Some(tripped) = this.tripped.take() {
                        tripped.trip();
                    }
                    Poll::Ready(Some(Err(Box::new(TooSlow(this.rate)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose first frames were already read: those, then the rest of `inner`.
pub struct Prefetched<B> {
    read: VecDeque<Frame<Bytes>>,
    rest: Option<B>,
}

impl<B> Body for Prefetched<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

/// Reads `body` until it ends or [`PREFETCH`] bytes arrived; fails with the body's error
/// ([`TooSlow`] included) if it fails first.
pub async fn prefetch<B>(mut body: B) -> Result<Prefetched<B>, BoxError>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    use http_body_util::BodyExt;
    let mut read = VecDeque::new();
    let mut bytes = 0;
    while bytes < PREFETCH && !body.is_end_stream() {
        match body.frame().await {
            Some(Ok(frame)) => {
                bytes += frame.data_ref().map_or(0, |d| d.len());
                read.push_back(frame);
            }
            Some(Err(err)) => return Err(err),
            None => {
                return Ok(Prefetched { read, rest: None });
            }
        }
    }
    Ok(Prefetched {
        read,
        rest: Some(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body fed frame by frame through a channel, as a slow client would send it.
    struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    fn channel() -> (tokio::sync::mpsc::Sender<Bytes>, Chunks) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        (tx, Chunks(rx))
    }

    /// The default rule scaled down 20 times in time, so the tests take a fraction of a
    /// second.
    const RULE: BodyRate = BodyRate {
        grace: Duration::from_millis(500),
        min_rate: 20 * MIN_RATE,
    };
    const SECOND: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_body_below_the_rate_fails_after_the_grace() {
        let (tx, body) = channel();
        let tripwire = Tripwire::default();
        let paced = Paced::new(body, RULE, tripwire.clone());
        let feeder = tokio::spawn(async move {
            // 1 byte a (scaled) second: far below the minimum rate.
            for _ in 0..60 {
                tokio::time::sleep(SECOND).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let err = prefetch(paced).await.err().expect("a trickle must fail");
        assert!(err.is::<TooSlow>(), "{err}");
        let took = started.elapsed();
        assert!(
            took >= RULE.grace && took < RULE.grace + 4 * SECOND,
            "{took:?}"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(10), tripwire.tripped())
                .await
                .is_ok(),
            "the violation was not signalled"
        );
        feeder.abort();
    }

    #[tokio::test]
    async fn a_body_at_the_rate_passes_whole() {
        let (tx, body) = channel();
        let tripwire = Tripwire::default();
        let paced = Paced::new(body, RULE, tripwire.clone());
        tokio::spawn(async move {
            // Twice the minimum rate, 40 KiB in all: more than PREFETCH.
            for _ in 0..20 {
                tokio::time::sleep(SECOND).await;
                let _ = tx.send(Bytes::from(vec![7u8; 2 * 1024])).await;
            }
        });
        let fetched = prefetch(paced).await.expect("prefetch");
        let all = fetched.collect().await.expect("whole body").to_bytes();
        assert_eq!(all.len(), 40 * 1024);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), tripwire.tripped())
                .await
                .is_err(),
            "a body at the rate tripped the wire"
        );
    }

    #[tokio::test]
    async fn a_short_body_is_read_before_admission() {
        let (tx, body) = channel();
        let tripwire = Tripwire::default();
        tx.send(Bytes::from_static(b"hello")).await.unwrap();
        drop(tx);
        let fetched = prefetch(Paced::new(body, RULE, tripwire.clone()))
            .await
            .unwrap();
        assert!(fetched.rest.is_none());
        assert_eq!(fetched.collect().await.unwrap().to_bytes(), "hello");
    }
}
