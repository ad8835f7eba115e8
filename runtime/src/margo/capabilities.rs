//! Device capabilities manifests: what the host and each sandbox partition offer, in
//! the shape of the active profile. In see-thru mode the host reports itself (identity
//! fields only unless it hosts) and then each partition as `DEVICE/PARTITION`; in opaque
//! mode one manifest aggregates the partitions.

use super::device::{DeviceProfile, GatewayMode};
use super::settings::Profile;
use crate::sandbox::PartitionSettings;
use crate::units::ByteSize;
use serde_json::{json, Map, Value};

/// WIT worlds every partition offers (see `wit/edge.wit`).
pub const WIT_WORLDS: [&str; 3] = [
    "margo:edge/http-function@0.1.0",
    "margo:edge/event-function@0.1.0",
    "margo:edge/http-and-event-function@0.1.0",
];

/// Identity of the device as reported to the WFM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub id: String,
    pub vendor: String,
    pub model: String,
    pub serial: String,
}

/// A small system file's first line of text (at most 4 KiB read), trimmed; `None`
/// when absent or empty.
fn read_small(path: &str) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(4096)
        .read_to_string(&mut text)
        .ok()?;
    Some(text.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Vendor, model and serial as the machine reports them (DMI, else the machine id for
/// the serial). Read once: they do not change while the host runs, and a reload or a
/// WFM cycle then never reads files on an async worker.
struct Detected {
    vendor: Option<String>,
    model: Option<String>,
    serial: Option<String>,
}

fn detected() -> &'static Detected {
    static DETECTED: std::sync::OnceLock<Detected> = std::sync::OnceLock::new();
    DETECTED.get_or_init(|| Detected {
        vendor: read_small("/sys/class/dmi/id/sys_vendor"),
        model: read_small("/sys/class/dmi/id/product_name"),
        serial: read_small("/sys/class/dmi/id/product_serial")
            .or_else(|| read_small("/etc/machine-id")),
    })
}

impl DeviceIdentity {
    /// From `[device]`, with vendor / model / serial detected from DMI (or the machine
    /// id) when not configured.
    pub fn from_profile(device: &DeviceProfile) -> Self {
        let settings = &device.settings;
        let machine = detected();
        let pick = |configured: &Option<String>, detected: &Option<String>| {
            configured
                .clone()
                .or_else(|| detected.clone())
                .unwrap_or_else(|| "unknown".into())
        };
        Self {
            id: device.id.to_string(),
            vendor: pick(&settings.vendor, &machine.vendor),
            model: pick(&settings.model, &machine.model),
            serial: pick(&settings.serial, &machine.serial),
        }
    }
}

/// `amd64` / `arm64` / `arm`, the Margo names; other architectures are not reported.
pub fn architecture() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        "arm" => Some("arm"),
        _ => None,
    }
}

fn size(bytes: u64) -> String {
    // Margo wants binary units; round down to whole KiB when needed.
    let b = ByteSize(bytes - bytes % 1024);
    let text = b.to_string();
    if text.ends_with('i') {
        text
    } else {
        format!("{}Ki", bytes / 1024)
    }
}

fn identity_properties(identity: &DeviceIdentity, id: &str) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("id".into(), json!(id));
    p.insert("vendor".into(), json!(identity.vendor));
    p.insert("modelNumber".into(), json!(identity.model));
    p.insert("serialNumber".into(), json!(identity.serial));
    p
}

fn cpu_entry(cores: f64) -> Value {
    match architecture() {
        Some(arch) => json!({ "cores": cores, "architecture": arch }),
        None => json!({ "cores": cores }),
    }
}

/// What a hosting target offers.
struct Hosting {
    cpus: Vec<Value>,
    memory: u64,
    storage: u64,
    interfaces: Vec<Value>,
    peripherals: Vec<Value>,
    otel: bool,
}

fn hosting_fields(p: &mut Map<String, Value>, profile: Profile, h: Hosting) {
    let Hosting {
        cpus,
        memory,
        storage,
        interfaces,
        peripherals,
        otel,
    } = h;
    let cpus_key = match profile {
        Profile::Rc3 => "cpus",
        // The rc.2 schema calls the same array `cpu`.
        Profile::Rc2 => "cpu",
    };
    p.insert(cpus_key.into(), Value::Array(cpus));
    p.insert("memory".into(), json!(size(memory)));
    p.insert("storage".into(), json!(size(storage)));
    p.insert("interfaces".into(), Value::Array(interfaces));
    p.insert("peripherals".into(), Value::Array(peripherals));
    p.insert("otelCollector".into(), json!(otel));
    // rc.2 schemas predate `custom` (their enums stop at oci / helm|compose); WFMs of
    // that era map unknown values to custom, so both profiles report what is true.
    p.insert("supportedRuntimes".into(), json!(["custom"]));
    p.insert("supportedDeploymentTypes".into(), json!(["custom"]));
}

fn extension(device: &DeviceProfile, partition: Option<&PartitionSettings>) -> Value {
    let mode = device.mode();
    let mut ext = json!({
        "runtime": "wasmgate",
        "runtimeVersion": env!("CARGO_PKG_VERSION"),
        "wasmtimeVersion": "48",
        "witWorlds": WIT_WORLDS,
        "supportedDeploymentTypes": ["custom"],
        "mode": match mode { GatewayMode::SeeThru => "see-thru", GatewayMode::Opaque => "opaque" },
        "telemetry": telemetry(device),
    });
    if let Some(p) = partition {
        ext["partition"] = json!({
            "id": p.id,
            "concurrency": p.concurrency(),
            "instanceMemory": size(p.instance_memory()),
            "timeoutSeconds": p.timeout().as_secs_f64(),
        });
    }
    ext
}

/// Labels eligibility rules can select on: configured ones plus ours.
fn labels(device: &DeviceProfile, partition: Option<&PartitionSettings>) -> Map<String, Value> {
    let mut labels = Map::new();
    for (k, v) in &device.settings.labels {
        labels.insert(k.clone(), json!(v));
    }
    labels.insert("wasmgate.io/component-model".into(), json!(true));
    labels.insert("wasmgate.io/wasi".into(), json!("0.2"));
    labels.insert("wasmgate.io/wit-worlds".into(), json!(WIT_WORLDS));
    if let Some(p) = partition {
        labels.insert("wasmgate.io/partition".into(), json!(p.id));
        for (k, v) in &p.labels {
            labels.insert(k.clone(), json!(v));
        }
    }
    labels
}

fn document(
    profile: Profile,
    properties: Map<String, Value>,
    labels: Option<Map<String, Value>>,
    ext: Value,
) -> Value {
    let mut doc = Map::new();
    if profile == Profile::Rc2 {
        doc.insert("apiVersion".into(), json!("device.margo.org/v1alpha1"));
        doc.insert("kind".into(), json!("DeviceCapabilitiesManifest"));
    }
    doc.insert("properties".into(), Value::Object(properties));
    // Margo's custom-runtime extension requires a device that reports `custom` to
    // publish labels for eligibility rules. The rc.2 schema has neither `custom` nor
    // `labels`; since we report `custom` there too, we send labels with it: both are
    // additions a WFM of that era has to accept together.
    if let Some(labels) = labels {
        doc.insert("labels".into(), Value::Object(labels));
    }
    doc.insert("x-wasmgate-extensions".into(), ext);
    Value::Object(doc)
}

/// The capabilities of one partition as a hosting device.
pub fn partition_document(
    device: &DeviceProfile,
    identity: &DeviceIdentity,
    p: &PartitionSettings,
    profile: Profile,
) -> Value {
    let mut props = identity_properties(identity, &format!("{}/{}", identity.id, p.id));
    hosting_fields(
        &mut props,
        profile,
        Hosting {
            cpus: vec![cpu_entry(p.cpu)],
            memory: p.memory.0,
            storage: p.storage.0,
            interfaces: p.interfaces.clone(),
            peripherals: p.peripherals.clone(),
            otel: otel(device),
        },
    );
    document(
        profile,
        props,
        Some(labels(device, Some(p))),
        extension(device, Some(p)),
    )
}

fn otel(device: &DeviceProfile) -> bool {
    device.otel_collector()
}

/// Where the host's telemetry goes: the OTLP URL of each signal (without credentials)
/// or "none", and who collects for the workloads.
fn telemetry(device: &DeviceProfile) -> Value {
    let collector = if device.telemetry.enabled {
        "wasmgate"
    } else if device.otel_collector() {
        "external"
    } else {
        "none"
    };
    let mut otlp = Map::new();
    if device.telemetry.enabled {
        let endpoints = crate::telemetry::otlp::endpoints(
            device.telemetry.otlp_endpoint.as_deref(),
            crate::telemetry::otlp::process_env,
        );
        for (signal, url) in endpoints {
            if let Some(url) = url {
                otlp.insert(
                    signal.as_str().into(),
                    json!(crate::telemetry::otlp::redacted(&url)),
                );
            }
        }
    }
    json!({
        "collector": collector,
        "otlp": if otlp.is_empty() { json!("none") } else { Value::Object(otlp) },
        "protocol": "http/protobuf",
    })
}

/// Every `(deviceId, document)` to report, parent first.
pub fn documents(
    device: &DeviceProfile,
    identity: &DeviceIdentity,
    profile: Profile,
) -> Vec<(String, Value)> {
    let hosts = device.settings.hosts;
    match device.mode() {
        GatewayMode::SeeThru => {
            let mut props = identity_properties(identity, &identity.id);
            if hosts {
                let total_cpu = device.partitions.iter().map(|p| p.cpu).sum::<f64>();
                let memory = device.partitions.iter().map(|p| p.memory.0).sum();
                let storage = device.partitions.iter().map(|p| p.storage.0).sum();
                hosting_fields(
                    &mut props,
                    profile,
                    Hosting {
                        cpus: vec![cpu_entry(total_cpu)],
                        memory,
                        storage,
                        interfaces: vec![],
                        peripherals: vec![],
                        otel: otel(device),
                    },
                );
            }
            let mut docs = vec![(
                identity.id.clone(),
                document(
                    profile,
                    props,
                    Some(labels(device, None)),
                    extension(device, None),
                ),
            )];
            for p in &device.partitions {
                docs.push((
                    format!("{}/{}", identity.id, p.id),
                    partition_document(device, identity, p, profile),
                ));
            }
            docs
        }
        GatewayMode::Opaque => {
            let mut props = identity_properties(identity, &identity.id);
            let mut interfaces: Vec<Value> = Vec::new();
            let mut peripherals: Vec<Value> = Vec::new();
            for p in &device.partitions {
                for i in &p.interfaces {
                    if !interfaces.contains(i) {
                        interfaces.push(i.clone());
                    }
                }
                for i in &p.peripherals {
                    if !peripherals.contains(i) {
                        peripherals.push(i.clone());
                    }
                }
            }
            // One cpus entry per partition: each is a set of cores one workload can use;
            // Margo never sums them.
            hosting_fields(
                &mut props,
                profile,
                Hosting {
                    cpus: device.partitions.iter().map(|p| cpu_entry(p.cpu)).collect(),
                    memory: device.partitions.iter().map(|p| p.memory.0).sum(),
                    storage: device.partitions.iter().map(|p| p.storage.0).sum(),
                    interfaces,
                    peripherals,
                    otel: otel(device),
                },
            );
            let mut labels = labels(device, None);
            for (k, v) in aggregate_partition_labels(device) {
                // Device labels are the device's own word; partitions do not override them.
                labels.entry(k).or_insert(v);
            }
            vec![(
                identity.id.clone(),
                document(profile, props, Some(labels), extension(device, None)),
            )]
        }
    }
}

/// The partition labels of an opaque device, which presents one device for all of them.
/// A key whose value is the same in every partition that sets it keeps that value; a key
/// whose values differ becomes the sorted list of the distinct values (Margo label values
/// may be arrays of strings), so a `labelSelector` with `In` still finds the device for
/// any of them. A key set by only some partitions is kept: placement still needs a
/// partition that has it. Each conflict is logged once per report.
fn aggregate_partition_labels(device: &DeviceProfile) -> Map<String, Value> {
    let mut values: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        Default::default();
    for p in &device.partitions {
        for (k, v) in &p.labels {
            values.entry(k).or_default().insert(v);
        }
    }
    values
        .into_iter()
        .map(|(key, set)| {
            let value = if set.len() == 1 {
                json!(set.first().expect("one value"))
            } else {
                tracing::debug!(label = key, values = ?set, "partitions disagree on a label; an opaque device reports all values");
                json!(set.into_iter().collect::<Vec<_>>())
            };
            (key.to_owned(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::margo::DeviceSettings;

    /// `[device]` and `[[partition]]` as a configuration file gives them.
    fn profile(text: &str) -> DeviceProfile {
        #[derive(serde::Deserialize)]
        struct Fixture {
            device: DeviceSettings,
            partition: Vec<PartitionSettings>,
        }
        let f: Fixture = toml::from_str(text).unwrap();
        DeviceProfile {
            id: f.device.id.clone().unwrap(),
            settings: f.device,
            partitions: f.partition,
            telemetry: Default::default(),
            state_dir: "state".into(),
        }
    }

    fn config(mode: &str) -> DeviceProfile {
        profile(&format!(
            r#"
            [device]
            id = "edge-01"
            mode = "{mode}"
            vendor = "Acme"
            model = "E1"
            serial = "S1"
            labels = {{ site = "north" }}
            [[partition]]
            id = "a"
            cpu = 1.0
            memory = "256Mi"
            storage = "1Gi"
            interfaces = [{{ type = "ethernet" }}]
            [[partition]]
            id = "b"
            cpu = 0.5
            memory = "128Mi"
            storage = "64Mi"
            labels = {{ tier = "sensors" }}
            "#
        ))
    }

    #[test]
    fn see_thru_reports_parent_then_partitions() {
        let c = config("see-thru");
        let docs = documents(&c, &DeviceIdentity::from_profile(&c), Profile::Rc3);
        let ids: Vec<_> = docs.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["edge-01", "edge-01/a", "edge-01/b"]);
        // A non-hosting gateway: identity fields only.
        assert_eq!(docs[0].1["properties"].as_object().unwrap().len(), 4);
        let b = &docs[2].1;
        assert_eq!(b["properties"]["id"], "edge-01/b");
        assert_eq!(b["properties"]["memory"], "128Mi");
        assert_eq!(b["properties"]["cpus"][0]["cores"], 0.5);
        assert_eq!(
            b["properties"]["supportedDeploymentTypes"],
            json!(["custom"])
        );
        assert_eq!(b["labels"]["tier"], "sensors");
        assert_eq!(b["labels"]["site"], "north");
        assert_eq!(b["labels"]["wasmgate.io/partition"], "b");
    }

    #[test]
    fn opaque_aggregates() {
        let c = config("opaque");
        let docs = documents(&c, &DeviceIdentity::from_profile(&c), Profile::Rc3);
        assert_eq!(docs.len(), 1);
        let p = &docs[0].1["properties"];
        assert_eq!(p["cpus"].as_array().unwrap().len(), 2);
        assert_eq!(p["memory"], "384Mi");
        // Only partition b sets tier: kept as it is.
        assert_eq!(docs[0].1["labels"]["tier"], "sensors");
    }

    #[test]
    fn opaque_labels_keep_agreement_and_list_conflicts() {
        let c = profile(
            r#"
            [device]
            id = "edge-01"
            mode = "opaque"
            labels = { site = "north" }
            [[partition]]
            id = "a"
            cpu = 1.0
            memory = "64Mi"
            storage = "1Mi"
            labels = { tier = "apps", zone = "z1", site = "south" }
            [[partition]]
            id = "b"
            cpu = 1.0
            memory = "64Mi"
            storage = "1Mi"
            labels = { tier = "sensors", zone = "z1" }
            "#,
        );
        let docs = documents(&c, &DeviceIdentity::from_profile(&c), Profile::Rc3);
        let labels = &docs[0].1["labels"];
        assert_eq!(labels["zone"], "z1", "agreeing values stay a string");
        assert_eq!(
            labels["tier"],
            json!(["apps", "sensors"]),
            "conflicts list every value"
        );
        assert_eq!(labels["site"], "north", "device labels win over partitions");
    }

    #[test]
    fn rc2_shape() {
        let c = config("see-thru");
        let docs = documents(&c, &DeviceIdentity::from_profile(&c), Profile::Rc2);
        let doc = &docs[1].1;
        assert_eq!(doc["kind"], "DeviceCapabilitiesManifest");
        // Sent with `custom` in rc.2 too (see `document`).
        assert_eq!(doc["labels"]["wasmgate.io/partition"], "a");
        assert!(doc["properties"].get("cpu").is_some());
    }
}
