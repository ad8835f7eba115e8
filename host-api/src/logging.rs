//! `wasi:logging/logging`: guest log lines become `tracing` events tagged with where they
//! came from, so an operator can filter one deployment's output on a busy device.

use crate::bindings::wasi::logging::logging::{Host, Level};
use crate::WasmgateCtxView;

/// Guests can log arbitrary amounts; one line is cut at this many bytes so a runaway
/// guest cannot flood the host's log pipeline with megabyte lines.
const MAX_LINE_BYTES: usize = 8 * 1024;

/// Lines one component may log per second on average ...
pub const LINES_PER_SECOND: u32 = 100;
/// ... and at once after a quiet spell.
pub const LINE_BURST: u32 = 1000;

/// Who is logging: attached as fields to every event. One per component (shared by all
/// its instances), so the line budget holds across requests.
#[derive(Debug)]
pub struct LogContext {
    pub deployment: String,
    pub component: String,
    pub partition: String,
    budget: LineBudget,
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
            budget: LineBudget::new(LINES_PER_SECOND, LINE_BURST),
        }
    }

    /// Emits one guest line at `level` (`wasi:logging`, or a line of the guest's stdout /
    /// stderr with `source` naming the stream), cut to [`MAX_LINE_BYTES`], unless the
    /// component is over its line budget. After a dropped spell, the next line that passes
    /// is preceded by a warning with the count of lines dropped.
    pub fn emit(&self, level: tracing::Level, source: &str, line: &str) {
        let Some(dropped) = self.budget.take() else {
            return;
        };
        if dropped > 0 {
            tracing::warn!(
                target: "guest",
                deployment = %self.deployment,
                component = %self.component,
                partition = %self.partition,
                dropped,
                "{dropped} guest log lines dropped: over {LINES_PER_SECOND} lines/s (bursts of {LINE_BURST})"
            );
        }
        let line = truncate(line);
        let source = truncate(source);
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "guest",
                    $level,
                    deployment = %self.deployment,
                    component = %self.component,
                    partition = %self.partition,
                    context = %source,
                    "{line}"
                )
            };
        }
        match level {
            tracing::Level::TRACE => emit!(tracing::Level::TRACE),
            tracing::Level::DEBUG => emit!(tracing::Level::DEBUG),
            tracing::Level::INFO => emit!(tracing::Level::INFO),
            tracing::Level::WARN => emit!(tracing::Level::WARN),
            _ => emit!(tracing::Level::ERROR),
        }
    }
}

/// A token bucket of log lines, with the count of lines refused since the last one let
/// through.
#[derive(Debug)]
struct LineBudget {
    per_second: f64,
    burst: f64,
    state: std::sync::Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    tokens: f64,
    refilled: std::time::Instant,
    dropped: u64,
}

impl LineBudget {
    fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            state: std::sync::Mutex::new(BudgetState {
                tokens: f64::from(burst),
                refilled: std::time::Instant::now(),
                dropped: 0,
            }),
        }
    }

    /// `Some(lines dropped before this one)` when this line may be emitted.
    fn take(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.per_second).min(self.burst);
        state.refilled = now;
        if state.tokens < 1.0 {
            state.dropped += 1;
            return None;
        }
        state.tokens -= 1.0;
        Some(std::mem::take(&mut state.dropped))
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
        let level = match level {
            Level::Trace => tracing::Level::TRACE,
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            // tracing has no level above ERROR.
            Level::Error | Level::Critical => tracing::Level::ERROR,
        };
        self.ctx.log.emit(level, &context, &message);
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

    #[test]
    fn the_line_budget_refuses_past_the_burst_and_counts_what_it_dropped() {
        let budget = LineBudget::new(10, 5);
        for _ in 0..5 {
            assert_eq!(budget.take(), Some(0));
        }
        assert_eq!(budget.take(), None);
        assert_eq!(budget.take(), None);
        std::thread::sleep(std::time::Duration::from_millis(150));
        // 1.5 lines' worth refilled: one passes and reports the two dropped.
        assert_eq!(budget.take(), Some(2));
        assert_eq!(budget.take(), None);
    }
}
