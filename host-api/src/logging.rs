//! `wasi:logging/logging`: guest log lines become `tracing` events tagged with where they
//! came from, so an operator can filter one deployment's output on a busy device.

use crate::bindings::wasi::logging::logging::{Host, Level};
use crate::WasmgateCtxView;

/// Guests can log arbitrary amounts; one line is cut at this many bytes so a runaway
/// guest cannot flood the host's log pipeline with megabyte lines.
const MAX_LINE_BYTES: usize = 8 * 1024;

/// Who is logging: attached as fields to every event.
#[derive(Debug, Clone)]
pub struct LogContext {
    pub deployment: String,
    pub component: String,
    pub partition: String,
}

impl LogContext {
    pub fn new(
        deployment: impl Into<String>,
        component: impl Into<String>,
        partition: impl Into<String>,
    ) -> Self {
        Self {
            deployment: deployment.into(),
            component: component.into(),
            partition: partition.into(),
        }
    }
}

fn truncate(text: &str) -> &str {
    if text.len() <= MAX_LINE_BYTES {
        return text;
    }
    let mut end = MAX_LINE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Host for WasmgateCtxView<'_> {
    fn log(&mut self, level: Level, context: String, message: String) -> wasmtime::Result<()> {
        let log = &self.ctx.log;
        let message = truncate(&message);
        let context = truncate(&context);
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "guest",
                    $level,
                    deployment = %log.deployment,
                    component = %log.component,
                    partition = %log.partition,
                    context = %context,
                    "{message}"
                )
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            // tracing has no level above ERROR; `critical` keeps its name as a field.
            Level::Error => emit!(tracing::Level::ERROR),
            Level::Critical => tracing::event!(
                target: "guest",
                tracing::Level::ERROR,
                deployment = %log.deployment,
                component = %log.component,
                partition = %log.partition,
                context = %context,
                critical = true,
                "{message}"
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_char_boundaries() {
        let long = "é".repeat(MAX_LINE_BYTES);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_LINE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short"), "short");
    }
}
