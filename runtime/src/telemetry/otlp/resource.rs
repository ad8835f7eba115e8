//! The OTLP resource every signal is reported under: who this host is, with the
//! standard `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` overrides.

use super::settings::{process_env, OtlpSettings};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

/// The resource of every signal: ours first, then `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_SERVICE_NAME`, which win for the keys they set.
pub(super) fn resource(settings: &OtlpSettings) -> Resource {
    use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector};
    let mut ours = vec![
        KeyValue::new("service.name", "wasmgate"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Some(host) = sysinfo::System::host_name() {
        ours.push(KeyValue::new("host.name", host));
    }
    if let Some(id) = &settings.device_id {
        ours.push(KeyValue::new("margo.device.id", id.clone()));
    }
    let from_env = EnvResourceDetector::new().detect();
    let mut builder = Resource::builder_empty()
        .with_attributes(ours)
        .with_attributes(
            from_env
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        );
    if let Some(name) = process_env("OTEL_SERVICE_NAME").filter(|n| !n.is_empty()) {
        builder = builder.with_service_name(name);
    }
    builder.build()
}
