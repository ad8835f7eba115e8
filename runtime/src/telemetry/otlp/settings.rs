//! Where each signal goes: the operator's [`OtlpSettings`] and the `OTEL_EXPORTER_OTLP_*`
//! variables resolved into one URL per signal, checked before the pipeline uses it and
//! redacted before a report shows it.

use super::{OtlpError, Signal};
use std::time::Duration;

/// Where the pipeline sends what, as the operator configured it.
#[derive(Debug, Clone, Default)]
pub struct OtlpSettings {
    /// `[telemetry] otlp-endpoint`: the collector's base URL (`/v1/traces` etc. are
    /// appended), overridden by the `OTEL_EXPORTER_OTLP_*ENDPOINT` variables.
    pub endpoint: Option<String>,
    /// Period of span / log batches and of the metrics push.
    pub export_interval: Option<Duration>,
    /// The host's Margo device id, reported as `margo.device.id`.
    pub device_id: Option<String>,
}

/// The URL each signal goes to, `None` for a signal with no endpoint. Per signal:
/// its own variable as is, else `OTEL_EXPORTER_OTLP_ENDPOINT`, else the file's
/// `otlp-endpoint`, each base followed by `/v1/<signal>`.
pub fn endpoints(
    file: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> [(Signal, Option<String>); 3] {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let base = set("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| file.map(str::to_owned));
    Signal::ALL.map(|signal| {
        let url = set(signal.endpoint_var()).or_else(|| {
            base.as_ref()
                .map(|b| format!("{}{}", b.trim().trim_end_matches('/'), signal.path()))
        });
        (signal, url)
    })
}

/// The process environment, as [`endpoints`] reads it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `url` without credentials or query, for reports (the capabilities' extensions).
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "invalid".into(),
    }
}

pub(super) fn check_url(signal: Signal, url: &str) -> Result<(), OtlpError> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(OtlpError::Endpoint {
            signal: signal.as_str(),
            url: url.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn urls(found: [(Signal, Option<String>); 3]) -> Vec<Option<String>> {
        found.into_iter().map(|(_, u)| u).collect()
    }

    #[test]
    fn endpoints_follow_the_variables_then_the_file() {
        assert_eq!(urls(endpoints(None, env(&[]))), vec![None, None, None]);
        assert_eq!(
            urls(endpoints(Some("http://c:4318/"), env(&[]))),
            vec![
                Some("http://c:4318/v1/traces".into()),
                Some("http://c:4318/v1/metrics".into()),
                Some("http://c:4318/v1/logs".into())
            ]
        );
        let found = endpoints(
            Some("http://file:4318"),
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:1/exact"),
            ]),
        );
        assert_eq!(
            urls(found),
            vec![
                Some("http://env:4318/v1/traces".into()),
                Some("http://env:4318/v1/metrics".into()),
                Some("http://logs:1/exact".into())
            ]
        );
        // One signal alone, no base.
        let found = endpoints(
            None,
            env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t")]),
        );
        assert_eq!(urls(found), vec![Some("http://t".into()), None, None]);
    }

    #[test]
    fn reports_never_carry_credentials() {
        assert_eq!(
            redacted("https://user:secret@collector:4318/v1/traces?token=x"),
            "https://collector:4318/v1/traces"
        );
        assert!(check_url(Signal::Logs, "collector:4318").is_err());
        assert!(check_url(Signal::Logs, "ftp://collector").is_err());
        assert!(check_url(Signal::Logs, "http://127.0.0.1:4318/v1/logs").is_ok());
    }
}
