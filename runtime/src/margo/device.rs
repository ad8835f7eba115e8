//! Who the device is to the WFM: `[device]` (identity, gateway mode, labels) and the
//! facts its capabilities documents are built from, handed over by the host as one
//! [`DeviceProfile`] at start and on every reload.

use crate::sandbox::PartitionSettings;
use crate::telemetry::TelemetrySettings;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayMode {
    /// Each partition is reported to the WFM as its own device `DEVICE/PARTITION`.
    #[default]
    SeeThru,
    /// One aggregated device; placement is always the host's choice.
    Opaque,
}

/// `[device]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeviceSettings {
    /// The host's Margo device id; defaults to the machine's host name.
    pub id: Option<crate::types::DeviceId>,
    #[serde(default)]
    pub mode: GatewayMode,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// Whether the host itself accepts deployments (besides its partitions).
    #[serde(default)]
    pub hosts: bool,
    /// Deprecated (see `[telemetry]`): `true` says an external OpenTelemetry collector
    /// runs on the device, so `otelCollector` stays `true` with `[telemetry] enabled =
    /// false`.
    #[serde(default)]
    pub otel_collector: bool,
}

/// Reported as `otelCollector`: the host collects for its workloads unless `[telemetry]
/// enabled = false`; the deprecated `[device] otel-collector = true` still says an
/// external collector runs on the device.
pub fn reports_otel_collector(
    telemetry: &TelemetrySettings,
    device: Option<&DeviceSettings>,
) -> bool {
    telemetry.enabled || device.is_some_and(|d| d.otel_collector)
}

/// Everything the WFM client needs to know about the device it speaks for.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProfile {
    /// The resolved device id (configured, or the detected host name).
    pub id: crate::types::DeviceId,
    pub settings: DeviceSettings,
    pub partitions: Vec<PartitionSettings>,
    pub telemetry: TelemetrySettings,
    /// The host's state directory; the client keeps its own under `wfm/`.
    pub state_dir: PathBuf,
}

impl DeviceProfile {
    pub fn mode(&self) -> GatewayMode {
        self.settings.mode
    }

    pub fn otel_collector(&self) -> bool {
        reports_otel_collector(&self.telemetry, Some(&self.settings))
    }
}

/// The shape Margo rc.3 gives one capability entry: its `type` enum and the other keys
/// it allows. Anything else would make a strict WFM refuse the whole capabilities
/// document, so it is refused when the configuration is read, where the operator sees
/// which entry is wrong.
struct EntrySchema {
    types: &'static [&'static str],
    other_keys: &'static [&'static str],
}

const INTERFACE_SCHEMA: EntrySchema = EntrySchema {
    types: &[
        "ethernet",
        "wifi",
        "cellular",
        "bluetooth",
        "usb",
        "canbus",
        "rs232",
    ],
    other_keys: &[],
};

const PERIPHERAL_SCHEMA: EntrySchema = EntrySchema {
    types: &["gpu", "display", "camera", "microphone", "speaker"],
    other_keys: &["manufacturer", "model"],
};

/// A partition's `interfaces` and `peripherals` against the Margo schema; `at` names
/// the partition in the message.
pub fn check_capability_entries(at: &str, partition: &PartitionSettings) -> Result<(), String> {
    check_entries(at, "interfaces", &partition.interfaces, &INTERFACE_SCHEMA)?;
    check_entries(
        at,
        "peripherals",
        &partition.peripherals,
        &PERIPHERAL_SCHEMA,
    )
}

fn check_entries(
    at: &str,
    key: &str,
    entries: &[serde_json::Value],
    schema: &EntrySchema,
) -> Result<(), String> {
    for (i, entry) in entries.iter().enumerate() {
        let here = format!("{at} {key}[{i}]");
        let Some(fields) = entry.as_object() else {
            return Err(format!(
                "{here}: expected a table such as {{ type = \"{}\" }}",
                schema.types[0]
            ));
        };
        match fields.get("type").and_then(|t| t.as_str()) {
            Some(t) if schema.types.contains(&t) => {}
            Some(t) => {
                return Err(format!(
                    "{here} type = {t:?}: expected one of {}",
                    schema.types.join(", ")
                ))
            }
            None => {
                return Err(format!(
                    "{here}: missing `type` (a string: one of {})",
                    schema.types.join(", ")
                ))
            }
        }
        for (name, value) in fields {
            if name == "type" {
                continue;
            }
            if !schema.other_keys.contains(&name.as_str()) {
                let allowed = if schema.other_keys.is_empty() {
                    "only `type`".to_owned()
                } else {
                    format!(
                        "`type`, {}",
                        schema
                            .other_keys
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                return Err(format!(
                    "{here}: unknown key `{name}` (Margo allows {allowed})"
                ));
            }
            if !value.is_string() {
                return Err(format!("{here} {name}: expected a string"));
            }
        }
    }
    Ok(())
}
