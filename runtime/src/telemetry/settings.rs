//! `[telemetry]`: whether the host is its workloads' collector and where it exports.

use super::OtlpSettings;
use crate::units::HumanDuration;
use serde::Deserialize;
use std::time::Duration;

/// OTLP transports `[telemetry] protocol` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OtlpProtocol {
    /// The only one built in: gRPC would add tonic and a second HTTP stack.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// `[telemetry]`: where host spans, logs (host and guest) and metrics are exported.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TelemetrySettings {
    /// Off: nothing is exported and the capabilities report `otelCollector: false`.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Base URL of an OTLP/HTTP collector (`/v1/traces`, `/v1/metrics`, `/v1/logs` are
    /// appended). The `OTEL_EXPORTER_OTLP_*ENDPOINT` variables win over it.
    pub otlp_endpoint: Option<String>,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Period of span / log batches and of the metrics push. Default 5s.
    pub export_interval: Option<HumanDuration>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            otlp_endpoint: None,
            protocol: OtlpProtocol::default(),
            export_interval: None,
        }
    }
}

impl TelemetrySettings {
    /// What the pipeline needs; `None` when `enabled = false`. `device_id` becomes the
    /// `margo.device.id` resource attribute.
    pub fn otlp(&self, device_id: &str) -> Option<OtlpSettings> {
        self.enabled.then(|| OtlpSettings {
            endpoint: self.otlp_endpoint.clone(),
            export_interval: self.export_interval.map(|d| d.0),
            device_id: Some(device_id.to_owned()),
        })
    }

    /// The checks serde's types do not make; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let invalid = |m: &str| Err(format!("[telemetry] {m}"));
        if self
            .export_interval
            .is_some_and(|d| d.0 < Duration::from_millis(100))
        {
            return invalid("export-interval: expected at least 100ms");
        }
        match self.otlp_endpoint.as_deref().map(url::Url::parse) {
            Some(Ok(u)) if !matches!(u.scheme(), "http" | "https") || u.host().is_none() => {
                invalid("otlp-endpoint: expected an http:// or https:// URL")
            }
            Some(Err(e)) => invalid(&format!("otlp-endpoint: {e}")),
            _ => Ok(()),
        }
    }
}
