//! The layer's way into the blob store: an `AsyncWrite` the registry client streams
//! the body into, which stops a registry that sends more than the manifest declared.

use crate::deploy::store::BlobWriter;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// `AsyncWrite` into a [`BlobWriter`] that refuses to grow past `limit` bytes.
pub(super) struct LimitedSink {
    pub(super) writer: Option<BlobWriter>,
    pub(super) limit: u64,
    pub(super) exceeded: Arc<AtomicU64>,
}

impl tokio::io::AsyncWrite for LimitedSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let limit = self.limit;
        let Some(writer) = self.writer.as_mut() else {
            return Poll::Ready(Err(std::io::Error::other("sink closed")));
        };
        if writer.written() + buf.len() as u64 > limit {
            let total = writer.written() + buf.len() as u64;
            self.exceeded.store(total, Ordering::Relaxed);
            return Poll::Ready(Err(std::io::Error::other("layer larger than declared")));
        }
        // Small synchronous writes into the page cache; the fsync happens in `finish`.
        Poll::Ready(writer.write(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
