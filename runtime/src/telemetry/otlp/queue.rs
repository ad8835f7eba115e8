//! The bounded batch queue in front of each span and log exporter, and its export
//! thread: pushing never waits, and a record that does not fit or fails to export is
//! counted as dropped rather than lost silently.

use super::drops::dropped;
use super::{OtlpError, Signal, MAX_BATCH, QUEUE_CAPACITY};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use prometheus_client::metrics::counter::Counter;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a [`BatchQueue`]'s thread does with a batch.
pub(super) trait Sink<T>: Send + 'static {
    fn export(&mut self, batch: Vec<T>) -> OTelSdkResult;
    fn shutdown(&mut self, timeout: Duration);
}

enum Message<T> {
    Record(T),
    /// Export what came before, then answer.
    Flush(SyncSender<()>),
    /// Export what came before, stop, then answer.
    Stop(SyncSender<()>),
}

/// A bounded queue of records and the thread that exports them in batches.
pub(super) struct BatchQueue<T> {
    signal: Signal,
    tx: SyncSender<Message<T>>,
    dropped: Counter,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<T> std::fmt::Debug for BatchQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchQueue")
            .field("signal", &self.signal)
            .finish()
    }
}

impl<T: Send + 'static> BatchQueue<T> {
    pub(super) fn start(
        signal: Signal,
        interval: Duration,
        sink: impl Sink<T>,
    ) -> Result<Self, OtlpError> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let dropped = dropped(signal);
        let counter = dropped.clone();
        let thread = std::thread::Builder::new()
            .name(format!("otlp-{}", signal.as_str()))
            .spawn(move || run_batches(rx, sink, interval, counter))
            .map_err(|source| OtlpError::Thread {
                signal: signal.as_str(),
                source,
            })?;
        Ok(Self {
            signal,
            tx,
            dropped,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Never waits: a full queue drops the record and counts it.
    pub(super) fn push(&self, record: T) {
        if self.tx.try_send(Message::Record(record)).is_err() {
            self.dropped.inc();
        }
    }

    /// Sends `make(ack)` and waits for the answer, both within `timeout`.
    fn request(&self, make: fn(SyncSender<()>) -> Message<T>, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack) = mpsc::sync_channel(1);
        let mut message = make(ack_tx);
        // The queue may be full of records: retry until there is room or time is up.
        loop {
            match self.tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(timeout)),
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
            }
        }
        ack.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }

    pub(super) fn flush(&self, timeout: Duration) -> OTelSdkResult {
        self.request(Message::Flush, timeout)
    }

    pub(super) fn stop(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.request(Message::Stop, timeout);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // Joined only once it answered: a thread stuck on a silent collector is left
        // to the process exit.
        if result.is_ok() {
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
        result
    }
}

/// The export thread: a batch goes out when it is full, when `interval` passed, or
/// when asked.
fn run_batches<T: Send + 'static>(
    rx: Receiver<Message<T>>,
    mut sink: impl Sink<T>,
    interval: Duration,
    dropped: Counter,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut due = Instant::now() + interval;
    let send = |batch: &mut Vec<T>, sink: &mut dyn Sink<T>| {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let full = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH));
        if sink.export(full).is_err() {
            dropped.inc_by(n);
        }
    };
    loop {
        match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(Message::Record(record)) => {
                batch.push(record);
                if batch.len() >= MAX_BATCH {
                    send(&mut batch, &mut sink);
                }
            }
            Ok(Message::Flush(ack)) => {
                send(&mut batch, &mut sink);
                let _ = ack.send(());
            }
            Ok(Message::Stop(ack)) => {
                send(&mut batch, &mut sink);
                sink.shutdown(Duration::from_secs(1));
                let _ = ack.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                send(&mut batch, &mut sink);
                due = Instant::now() + interval;
            }
            Err(RecvTimeoutError::Disconnected) => {
                send(&mut batch, &mut sink);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::otlp::dropped_total;

    struct Recorder {
        batches: std::sync::Arc<Mutex<Vec<usize>>>,
        fail: bool,
        delay: Duration,
    }

    impl Sink<u32> for Recorder {
        fn export(&mut self, batch: Vec<u32>) -> OTelSdkResult {
            std::thread::sleep(self.delay);
            self.batches.lock().unwrap().push(batch.len());
            if self.fail {
                Err(OTelSdkError::InternalFailure("collector away".into()))
            } else {
                Ok(())
            }
        }

        fn shutdown(&mut self, _: Duration) {}
    }

    #[test]
    fn full_queues_and_failed_batches_are_counted_and_pushing_never_waits() {
        let batches = std::sync::Arc::new(Mutex::new(Vec::new()));
        let before = dropped_total(Signal::Logs);
        // A collector that takes a second per batch and then refuses it.
        let queue = BatchQueue::start(
            Signal::Logs,
            Duration::from_secs(60),
            Recorder {
                batches: batches.clone(),
                fail: true,
                delay: Duration::from_millis(300),
            },
        )
        .unwrap();
        let started = Instant::now();
        let n = QUEUE_CAPACITY * 3;
        for i in 0..n {
            queue.push(i as u32);
        }
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "pushing {n} records took {:?}",
            started.elapsed()
        );
        queue.stop(Duration::from_secs(30)).unwrap();
        let exported: usize = batches.lock().unwrap().iter().sum();
        assert!(batches.lock().unwrap().iter().all(|b| *b <= MAX_BATCH));
        // Every record is accounted for: exported (and refused) or dropped at the door.
        let counted = dropped_total(Signal::Logs) - before;
        assert_eq!(counted as usize, n, "exported {exported}");
    }

    #[test]
    fn a_flush_sends_what_is_queued() {
        let batches = std::sync::Arc::new(Mutex::new(Vec::new()));
        let queue = BatchQueue::start(
            Signal::Traces,
            Duration::from_secs(60),
            Recorder {
                batches: batches.clone(),
                fail: false,
                delay: Duration::ZERO,
            },
        )
        .unwrap();
        for i in 0..10 {
            queue.push(i);
        }
        queue.flush(Duration::from_secs(5)).unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![10]);
        queue.stop(Duration::from_secs(5)).unwrap();
        assert!(queue.flush(Duration::from_millis(50)).is_err());
    }
}
