//! A guest's stdout and stderr: cut into lines that become log events of the component
//! (under its line budget, see [`LogContext::emit`]) instead of being discarded, so a
//! `println!` or a Rust panic message reaches the operator.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use wasmgate_host_api::LogContext;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// A partial line is held up to this many bytes; a longer one is emitted cut there.
const MAX_PENDING: usize = 8 * 1024;

/// One of the two output streams of every instance of a component.
#[derive(Clone)]
pub struct GuestOutput {
    log: Arc<LogContext>,
    stream: &'static str,
    level: tracing::Level,
}

impl GuestOutput {
    pub fn stdout(log: Arc<LogContext>) -> Self {
        Self {
            log,
            stream: "stdout",
            level: tracing::Level::INFO,
        }
    }

    /// Warnings: a trapping Rust guest prints its panic message here.
    pub fn stderr(log: Arc<LogContext>) -> Self {
        Self {
            log,
            stream: "stderr",
            level: tracing::Level::WARN,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            out: self.clone(),
            pending: Lines::default(),
            span: tracing::Span::current(),
        })
    }
}

/// Emits complete lines as they arrive; what is left when the instance ends is emitted
/// on drop, so the last words before a trap are kept.
struct LineWriter {
    out: GuestOutput,
    pending: Lines,
    /// The guest's span when it opened the stream: wasmtime-wasi writes from its own
    /// task, outside it, and a line must still carry the request's trace id.
    span: tracing::Span,
}

impl LineWriter {
    fn emit(out: &GuestOutput, span: &tracing::Span, bytes: &[u8]) {
        let line = String::from_utf8_lossy(bytes);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        span.in_scope(|| out.log.emit(out.level, out.stream, line));
    }
}

/// Cuts a byte stream into lines; a line longer than [`MAX_PENDING`] bytes comes out in
/// pieces of that size, so memory stays bounded whatever the guest writes.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
    /// The current line already came out in pieces: its newline ends it without an
    /// empty piece.
    cut: bool,
}

impl Lines {
    fn push(&mut self, mut buf: &[u8], mut emit: impl FnMut(&[u8])) {
        while !buf.is_empty() {
            let newline = buf.iter().position(|b| *b == b'\n');
            let segment = newline.unwrap_or(buf.len());
            let take = segment.min(MAX_PENDING - self.pending.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() == MAX_PENDING {
                emit(&self.pending);
                self.pending.clear();
                self.cut = true;
            } else if newline == Some(take) {
                if !(self.cut && self.pending.is_empty()) {
                    emit(&self.pending);
                }
                self.pending.clear();
                self.cut = false;
                buf = &buf[1..];
            }
        }
    }

    fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending.clear();
        }
        self.cut = false;
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.pending
            .push(buf, |line| Self::emit(&this.out, &this.span, line));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.pending
            .finish(|line| Self::emit(&this.out, &this.span, line));
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let (out, span) = (&self.out, &self.span);
        self.pending.finish(|line| Self::emit(out, span, line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, |l| out.push(l.to_vec()));
        }
        lines.finish(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_are_joined_across_writes_and_the_rest_comes_at_the_end() {
        assert_eq!(
            split(&[b"one\ntw", b"o\n", b"\nthree"]),
            vec![
                b"one".to_vec(),
                b"two".to_vec(),
                b"".to_vec(),
                b"three".to_vec()
            ]
        );
        assert!(split(&[b""]).is_empty());
    }

    #[test]
    fn long_lines_are_cut_and_memory_stays_bounded() {
        let huge = vec![b'x'; MAX_PENDING * 3 + 10];
        let lines = split(&[&huge]);
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| l.len() <= MAX_PENDING));
        // A long line that ends in a later write is cut, not kept whole.
        let lines = split(&[b"ab", &vec![b'y'; MAX_PENDING * 2], b"\nz\n"]);
        assert_eq!(
            lines.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_PENDING, MAX_PENDING, 2, 1]
        );
        // A line of exactly the limit is one piece, without an empty one after it.
        let exact = [vec![b'w'; MAX_PENDING], b"\n".to_vec()].concat();
        assert_eq!(split(&[&exact]).len(), 1);
    }
}
