//! Span and log mapping between the SDK and the queues: the processors the SDK hands
//! finished spans and log records to, which push them into a `BatchQueue`, and the
//! sinks through which its thread gives each batch to the OTLP exporter.

use super::queue::{BatchQueue, Sink};
use super::DEFAULT_EXPORT_INTERVAL;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use std::time::Duration;

pub(super) struct SpanSink(pub(super) opentelemetry_otlp::SpanExporter);

impl Sink<SpanData> for SpanSink {
    fn export(&mut self, batch: Vec<SpanData>) -> OTelSdkResult {
        // The blocking client does its I/O inside the future: no runtime is needed.
        futures_executor::block_on(self.0.export(batch))
    }

    fn shutdown(&mut self, timeout: Duration) {
        let _ = self.0.shutdown_with_timeout(timeout);
    }
}

pub(super) struct LogSink(pub(super) opentelemetry_otlp::LogExporter);

impl Sink<(SdkLogRecord, InstrumentationScope)> for LogSink {
    fn export(&mut self, batch: Vec<(SdkLogRecord, InstrumentationScope)>) -> OTelSdkResult {
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|(r, s)| (r, s)).collect();
        futures_executor::block_on(self.0.export(LogBatch::new(&refs)))
    }

    fn shutdown(&mut self, timeout: Duration) {
        let _ = self.0.shutdown_with_timeout(timeout);
    }
}

#[derive(Debug)]
pub(super) struct SpanQueue(pub(super) BatchQueue<SpanData>);

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush(DEFAULT_EXPORT_INTERVAL)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.stop(timeout)
    }
}

#[derive(Debug)]
pub(super) struct LogQueue(pub(super) BatchQueue<(SdkLogRecord, InstrumentationScope)>);

impl LogProcessor for LogQueue {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        self.0.push((record.clone(), scope.clone()));
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush(DEFAULT_EXPORT_INTERVAL)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.stop(timeout)
    }
}
