//! The process's `tracing` subscriber: the stderr log as before, plus, when the OTLP
//! pipeline runs, spans to OTLP traces and events to OTLP log records.

use super::otlp::{OtlpError, OtlpSettings, Pipeline};
use std::sync::OnceLock;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// Crates on the export path itself: their spans and events would be exported by
/// the very requests they describe, a loop that feeds itself.
const EXPORT_PATH: [&str; 7] = [
    "opentelemetry",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tower",
];

fn off_the_export_path(target: &str) -> bool {
    !EXPORT_PATH.iter().any(|p| {
        target
            .strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::") || rest.starts_with('_'))
    })
}

/// The layers that turn spans into OTLP spans and events into OTLP log records, for
/// as long as `gate` says so (always, in the binary; the benchmark switches it).
pub fn export_layers<S>(
    pipeline: &Pipeline,
    gate: impl Fn() -> bool + Clone + Send + Sync + 'static,
) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let on = gate.clone();
    // Events are log records, not span events: exporting them twice would double the
    // volume for nothing.
    let traces = pipeline.tracer().map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter_fn(move |m| {
                m.is_span() && off_the_export_path(m.target()) && on()
            }))
    });
    let logs = pipeline.logger_provider().map(|provider| {
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(provider)
            .with_filter(filter_fn(move |m| {
                off_the_export_path(m.target()) && gate()
            }))
    });
    Layer::and_then(traces, logs)
}

/// What is logged when neither the configuration's `log-filter` nor `WASMGATE_LOG`
/// says.
pub const DEFAULT_LOG_FILTER: &str = "info,cranelift=warn,wasmtime=warn";

/// The variable whose filter wins over the configuration's.
const LOG_ENV: &str = "WASMGATE_LOG";

/// The installed filter, replaced by [`set_log_filter`].
static LOG_FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter in force: `WASMGATE_LOG` when set and valid, else `configured`, else
/// [`DEFAULT_LOG_FILTER`].
fn log_filter(configured: Option<&str>) -> EnvFilter {
    EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| {
        configured
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG_FILTER))
    })
}

/// What [`set_log_filter`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFilterChange {
    Applied,
    /// `WASMGATE_LOG` is set and keeps deciding.
    OverriddenByEnvironment,
    /// No subscriber of ours is installed (a library user, a test).
    NotInstalled,
}

/// Replaces the filter of the installed subscriber with `configured` (a reloaded
/// configuration's `log-filter`, `None` for the default). Directives that do not parse
/// are an error and change nothing; the configuration check refuses them earlier.
pub fn set_log_filter(configured: Option<&str>) -> Result<LogFilterChange, String> {
    if std::env::var_os(LOG_ENV).is_some() {
        return Ok(LogFilterChange::OverriddenByEnvironment);
    }
    let filter = EnvFilter::try_new(configured.unwrap_or(DEFAULT_LOG_FILTER))
        .map_err(|e| format!("log-filter: {e}"))?;
    let Some(handle) = LOG_FILTER.get() else {
        return Ok(LogFilterChange::NotInstalled);
    };
    handle
        .reload(filter)
        .map(|()| LogFilterChange::Applied)
        .map_err(|e| format!("log-filter: {e}"))
}

/// Installs the global subscriber. `WASMGATE_LOG` (an `EnvFilter`), else
/// `log_filter` (the configuration's), selects what is logged and exported alike; it
/// can be replaced later with [`set_log_filter`]. With `otlp` set and an endpoint
/// known, the pipeline starts and is returned: the caller shuts it down (flushing)
/// before exiting.
pub fn init(
    otlp: Option<&OtlpSettings>,
    configured_filter: Option<&str>,
) -> Result<Option<Pipeline>, OtlpError> {
    let pipeline = otlp.map(Pipeline::start).transpose()?.flatten();
    let (filter, handle) = reload::Layer::new(log_filter(configured_filter));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let export = pipeline.as_ref().map(|p| export_layers(p, || true));
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(export)
        .init();
    let _ = LOG_FILTER.set(handle);
    if let Some(p) = &pipeline {
        for (signal, url) in p.endpoints() {
            tracing::info!(signal = signal.as_str(), endpoint = %super::otlp::redacted(url), "exporting OTLP");
        }
    }
    Ok(pipeline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_path_is_not_exported() {
        for t in [
            "reqwest::blocking",
            "hyper",
            "hyper_util::client",
            "opentelemetry_sdk",
            "h2::codec",
        ] {
            assert!(!off_the_export_path(t), "{t}");
        }
        for t in ["wasmgate::ingress", "guest", "hyperion", "wasmtime"] {
            assert!(off_the_export_path(t), "{t}");
        }
    }
}
