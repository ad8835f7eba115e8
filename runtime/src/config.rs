//! The host's configuration file (TOML): where state lives, what to listen on, who the
//! device is and how it is split into sandbox partitions.

mod reload;

pub use reload::restart_only_changes;

use crate::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Identifiers of devices and partitions: Margo `deviceId` segments are RFC 3986
/// unreserved characters.
pub fn is_valid_id_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: crate::fsutil::BoundedReadError,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayMode {
    /// Each partition is reported to the WFM as its own device `DEVICE/PARTITION`.
    #[default]
    SeeThru,
    /// One aggregated device; placement is always the host's choice.
    Opaque,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Admin listener (`/healthz`, `/status`, `/metrics`); off when absent.
    pub admin: Option<SocketAddr>,
    /// Host names the admin listener answers to besides IP literals and `localhost`
    /// (a DNS-rebinding page arrives with its own name in `Host` and is refused).
    #[serde(default)]
    pub admin_hosts: Vec<String>,
    /// Largest request body handed to a guest; a larger declared `content-length` is
    /// answered 413 before routing.
    #[serde(default = "default_max_body")]
    pub max_request_body: ByteSize,
    /// Longest a connection may take to deliver a complete request head, counted from
    /// accept or from the end of its previous response. Default 10s.
    pub header_timeout: Option<HumanDuration>,
    /// Longest a connection may stay open without a request in progress and without a
    /// byte of the next one. Default 5s.
    pub idle_timeout: Option<HumanDuration>,
    /// Most ingress connections open at once; more wait in the listen backlog. Default
    /// 1024, lowered when the open-file limit leaves less room.
    pub max_connections: Option<u32>,
    /// Largest request head (request line and headers); larger ones get 431. Default 32Ki.
    pub max_header_size: Option<ByteSize>,
    /// Bound on a graceful shutdown (SIGTERM / Ctrl-C). Default: the largest partition
    /// `timeout` plus its `queue-timeout` plus 5s.
    pub shutdown_timeout: Option<HumanDuration>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin: None,
            admin_hosts: Vec::new(),
            max_request_body: default_max_body(),
            header_timeout: None,
            idle_timeout: None,
            max_connections: None,
            max_header_size: None,
            shutdown_timeout: None,
        }
    }
}

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 32 << 10;
/// Added to the slowest partition's deadline for the default shutdown bound: room for
/// the response to be written and the connection to close.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

impl HttpConfig {
    /// The ingress connection limits; `max_connections` as configured (`None`: the
    /// ingress picks a default that fits the open-file limit).
    pub fn connection_limits(&self) -> crate::ingress::ConnectionLimits {
        crate::ingress::ConnectionLimits {
            header_timeout: self.header_timeout.map_or(DEFAULT_HEADER_TIMEOUT, |d| d.0),
            idle_timeout: self.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
            max_connections: self
                .max_connections
                .map_or_else(crate::ingress::default_max_connections, |n| n as usize),
            max_header_size: self
                .max_header_size
                .map_or(DEFAULT_MAX_HEADER_SIZE, |b| b.0) as usize,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("[http] {m}")));
        let positive = [
            ("header-timeout", self.header_timeout),
            ("idle-timeout", self.idle_timeout),
            ("shutdown-timeout", self.shutdown_timeout),
        ];
        for (key, value) in positive {
            if value.is_some_and(|d| d.0.is_zero()) {
                return invalid(&format!("{key}: expected more than 0s"));
            }
        }
        if self
            .max_connections
            .is_some_and(|n| n == 0 || n > 1_000_000)
        {
            return invalid("max-connections: expected 1 to 1000000");
        }
        if self
            .max_header_size
            .is_some_and(|b| !(1 << 10..=1 << 20).contains(&b.0))
        {
            return invalid("max-header-size: expected 1Ki to 1Mi");
        }
        if let Some(bad) = self
            .admin_hosts
            .iter()
            .find(|h| !crate::names::is_dns_name(h))
        {
            return invalid(&format!(
                "admin-hosts: {bad:?} is not a DNS name (letters, digits, '-' and '.', no port, no wildcard)"
            ));
        }
        Ok(())
    }
}

/// The shape Margo rc.3 gives one capability entry: its `type` enum and the other keys
/// it allows. Anything else would make a strict WFM refuse the whole capabilities
/// document, so it is refused here, where the operator sees which entry is wrong.
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

fn check_capability_entries(
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

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_body() -> ByteSize {
    ByteSize(16 << 20)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeviceConfig {
    /// The host's Margo device id; defaults to the machine's host name.
    pub id: Option<String>,
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PartitionConfig {
    pub id: String,
    /// CPU share in cores (0.5 = half of one core on average).
    pub cpu: f64,
    /// Memory budget for all live instances of the partition together.
    pub memory: ByteSize,
    /// Quota for the partition's key-value data and files.
    pub storage: ByteSize,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Most memory one instance may use; defaults to min(memory, 128Mi).
    pub instance_memory: Option<ByteSize>,
    /// Most instances running at once; requests beyond wait up to `queue-timeout`.
    pub concurrency: Option<u32>,
    /// Default per-request deadline; a deployment may ask for less, never more.
    pub timeout: Option<HumanDuration>,
    /// How long a request may wait for a free instance slot or memory before 503.
    pub queue_timeout: Option<HumanDuration>,
    /// Margo capability `interfaces` / `peripherals`, passed through to the WFM.
    #[serde(default)]
    pub interfaces: Vec<serde_json::Value>,
    #[serde(default)]
    pub peripherals: Vec<serde_json::Value>,
}

/// Limits applied when a partition does not set them.
pub const DEFAULT_CONCURRENCY: u32 = 32;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_INSTANCE_MEMORY: u64 = 128 << 20;

impl PartitionConfig {
    pub fn instance_memory(&self) -> u64 {
        self.instance_memory
            .map(|b| b.0)
            .unwrap_or(DEFAULT_INSTANCE_MEMORY)
            .min(self.memory.0)
    }

    pub fn concurrency(&self) -> u32 {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.map(|d| d.0).unwrap_or(DEFAULT_TIMEOUT)
    }

    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_QUEUE_TIMEOUT)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub http: HttpConfig,
    pub device: Option<DeviceConfig>,
    #[serde(default, rename = "partition")]
    pub partitions: Vec<PartitionConfig>,
    /// The Margo WFM connection; local mode when absent.
    pub wfm: Option<toml::Table>,
    /// How often the deployments folder is checked for changes in local mode.
    pub watch_interval: Option<HumanDuration>,
    /// Component artifacts: size limit, cache quota and garbage collection, pulls.
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
    /// Per-registry settings, keyed by `HOST` or `HOST:PORT` as in `oci://HOST:PORT/...`.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
    /// The OpenTelemetry pipeline: the host is its workloads' collector.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// What is logged (and exported), as `tracing` filter directives; the
    /// `WASMGATE_LOG` environment variable wins when set. Reloaded on SIGHUP.
    pub log_filter: Option<String>,
}

/// The largest configuration file read.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

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
pub struct TelemetryConfig {
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

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            otlp_endpoint: None,
            protocol: OtlpProtocol::default(),
            export_interval: None,
        }
    }
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("[telemetry] {m}")));
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

/// `[artifacts]`: where components come from and how much of them is kept.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArtifactsConfig {
    /// Largest component accepted (file or OCI layer); default 256Mi.
    pub max_component_size: Option<ByteSize>,
    /// Most disk space artifacts and compiled code may use together; unreferenced
    /// entries are evicted to stay below it. Default 2Gi.
    pub cache_quota: Option<ByteSize>,
    /// How long an artifact no deployment references is kept (for a quick rollback).
    /// Default 1h.
    pub gc_grace: Option<HumanDuration>,
    /// Docker-style `config.json` (`{"auths": {"HOST": {"auth": base64(USER:PASS)}}}`)
    /// for registries without credentials in `[registries]`.
    pub registry_auth_file: Option<PathBuf>,
    /// Bound on one manifest or layer download. Default 5m.
    pub pull_timeout: Option<HumanDuration>,
}

impl ArtifactsConfig {
    pub fn max_component_size(&self) -> u64 {
        self.max_component_size
            .map(|b| b.0)
            .unwrap_or(crate::deploy::artifact::MAX_COMPONENT_BYTES)
    }

    pub fn cache_quota(&self) -> u64 {
        self.cache_quota.map(|b| b.0).unwrap_or(2 << 30)
    }

    pub fn gc_grace(&self) -> Duration {
        self.gc_grace
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(3600))
    }

    pub fn pull_timeout(&self) -> Duration {
        self.pull_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(300))
    }
}

/// How to talk to a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryProtocol {
    Https,
    /// Plain HTTP: the default only for loopback registries; elsewhere it must be
    /// asked for explicitly.
    Http,
}

/// `[registries."HOST:PORT"]`: credentials and TLS for one registry.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistryConfig {
    pub username: Option<String>,
    pub password: Option<String>,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// Bearer token sent as is (instead of username / password).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// PEM file with the CA (or CAs) that signed the registry's certificate, trusted in
    /// addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// `https` (default) or `http` (default for 127.0.0.0/8, ::1 and localhost).
    pub protocol: Option<RegistryProtocol>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("wasmgate-state")
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            http: HttpConfig::default(),
            device: None,
            partitions: Vec::new(),
            wfm: None,
            watch_interval: None,
            artifacts: ArtifactsConfig::default(),
            registries: BTreeMap::new(),
            telemetry: TelemetryConfig::default(),
            log_filter: None,
        }
    }
}

impl Config {
    /// Reads and validates `path`; relative `state-dir` stays relative to the working
    /// directory, as the user typed it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // Bounded and regular files only: SIGHUP reads it again while serving, and a
        // FIFO or a device in its place must not hang or fill the host.
        let bytes =
            crate::fsutil::read_regular_bounded(path, MAX_CONFIG_FILE).map_err(|source| {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?;
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
            path: path.to_owned(),
            message: "not UTF-8 text".into(),
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string(),
        })?;
        config.fill_defaults();
        config.validate()?;
        Ok(config)
    }

    /// With no partitions configured, the whole device is one partition `default` with a
    /// sane share of the machine.
    pub fn fill_defaults(&mut self) {
        if self.partitions.is_empty() {
            self.partitions.push(default_partition());
        }
    }

    /// The parsed `[wfm]` section; `None` means local mode.
    pub fn wfm_settings(&self) -> Result<Option<crate::margo::WfmSettings>, ConfigError> {
        self.wfm
            .as_ref()
            .map(|table| crate::margo::WfmSettings::from_table(table).map_err(ConfigError::Invalid))
            .transpose()
    }

    pub fn device_id(&self) -> String {
        self.device
            .as_ref()
            .and_then(|d| d.id.clone())
            .unwrap_or_else(detected_device_id)
    }

    /// What the pipeline needs from the file; `None` when `[telemetry] enabled = false`.
    pub fn otlp_settings(&self) -> Option<crate::telemetry::OtlpSettings> {
        self.telemetry
            .enabled
            .then(|| crate::telemetry::OtlpSettings {
                endpoint: self.telemetry.otlp_endpoint.clone(),
                export_interval: self.telemetry.export_interval.map(|d| d.0),
                device_id: Some(self.device_id()),
            })
    }

    /// Reported as `otelCollector`: the host collects for its workloads unless
    /// `[telemetry] enabled = false`; the deprecated `[device] otel-collector = true`
    /// still says an external collector runs on the device.
    pub fn otel_collector(&self) -> bool {
        self.telemetry.enabled || self.device.as_ref().is_some_and(|d| d.otel_collector)
    }

    pub fn mode(&self) -> GatewayMode {
        self.device.as_ref().map(|d| d.mode).unwrap_or_default()
    }

    /// How long a graceful shutdown may take before the process exits anyway.
    pub fn shutdown_timeout(&self) -> Duration {
        self.http.shutdown_timeout.map_or_else(
            || {
                self.partitions
                    .iter()
                    .map(|p| p.timeout() + p.queue_timeout())
                    .max()
                    .unwrap_or(DEFAULT_TIMEOUT + DEFAULT_QUEUE_TIMEOUT)
                    + SHUTDOWN_MARGIN
            },
            |d| d.0,
        )
    }

    pub fn watch_interval(&self) -> Duration {
        self.watch_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_millis(500))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.wfm_settings()?;
        self.http.validate()?;
        self.telemetry.validate()?;
        if self
            .watch_interval
            .is_some_and(|d| d.0 < Duration::from_millis(50))
        {
            return invalid("watch-interval: expected at least 50ms".into());
        }
        self.validate_registries()?;
        if let Some(filter) = &self.log_filter {
            if let Err(err) = tracing_subscriber::EnvFilter::try_new(filter) {
                return invalid(format!(
                    "log-filter {filter:?}: {err} (expected directives such as \"info,wasmgate=debug\")"
                ));
            }
        }
        let device_id = self.device_id();
        if !is_valid_id_segment(&device_id) {
            return invalid(format!(
                "[device] id {device_id:?}: expected letters, digits, '.', '_', '~' or '-' (1 to 128 characters)"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.partitions.iter().enumerate() {
            let at = format!("[[partition]] #{} ({:?})", i + 1, p.id);
            if !is_valid_id_segment(&p.id) {
                return invalid(format!(
                    "{at} id: expected letters, digits, '.', '_', '~' or '-' (1 to 128 characters)"
                ));
            }
            if !seen.insert(p.id.as_str()) {
                return invalid(format!("{at} id: duplicate partition id"));
            }
            check_capability_entries(&at, "interfaces", &p.interfaces, &INTERFACE_SCHEMA)
                .and_then(|()| {
                    check_capability_entries(&at, "peripherals", &p.peripherals, &PERIPHERAL_SCHEMA)
                })
                .or_else(invalid)?;
            if !(p.cpu.is_finite() && p.cpu > 0.0 && p.cpu <= 1024.0) {
                return invalid(format!(
                    "{at} cpu = {}: expected a number of cores > 0, e.g. 0.5",
                    p.cpu
                ));
            }
            if p.memory.0 < (1 << 20) {
                return invalid(format!("{at} memory = {}: expected at least 1Mi", p.memory));
            }
            if p.concurrency() == 0 || p.concurrency() > 10_000 {
                return invalid(format!("{at} concurrency: expected 1 to 10000"));
            }
            if p.timeout().is_zero() {
                return invalid(format!("{at} timeout: expected more than 0s"));
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_registries(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.artifacts.max_component_size.is_some_and(|b| b.0 < 8) {
            return invalid("[artifacts] max-component-size: expected at least 8 bytes".into());
        }
        if self.artifacts.pull_timeout.is_some_and(|d| d.0.is_zero()) {
            return invalid("[artifacts] pull-timeout: expected more than 0s".into());
        }
        for (host, r) in &self.registries {
            let at = format!("[registries.\"{host}\"]");
            let valid_host = !host.is_empty()
                && !host.contains('/')
                && !host.contains("://")
                && host.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                });
            if !valid_host {
                return invalid(format!(
                    "{at}: expected a registry HOST or HOST:PORT as in oci://HOST:PORT/repo, without scheme or path"
                ));
            }
            let has_password = r.password.is_some() || r.password_file.is_some();
            let has_token = r.token.is_some() || r.token_file.is_some();
            if r.password.is_some() && r.password_file.is_some() {
                return invalid(format!("{at}: set password or password-file, not both"));
            }
            if r.token.is_some() && r.token_file.is_some() {
                return invalid(format!("{at}: set token or token-file, not both"));
            }
            if has_token && (r.username.is_some() || has_password) {
                return invalid(format!(
                    "{at}: set either token or username and password, not both"
                ));
            }
            if r.username.is_some() != has_password {
                return invalid(format!(
                    "{at}: username and password (or password-file) go together"
                ));
            }
        }
        Ok(())
    }
}

fn detected_device_id() -> String {
    let name = sysinfo::System::host_name().unwrap_or_default();
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._~-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    if cleaned.is_empty() {
        "wasmgate".into()
    } else {
        cleaned
    }
}

/// All cores, half the memory (at most 1 GiB) and 1 GiB of storage: enough for a
/// development machine, small enough not to starve the OS on a 1 GiB board.
fn default_partition() -> PartitionConfig {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let memory = (sys.total_memory() / 2).clamp(64 << 20, 1 << 30);
    PartitionConfig {
        id: "default".into(),
        cpu: cores,
        memory: ByteSize(memory),
        storage: ByteSize(1 << 30),
        labels: BTreeMap::new(),
        instance_memory: None,
        concurrency: None,
        timeout: None,
        queue_timeout: None,
        interfaces: Vec::new(),
        peripherals: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses() {
        let config = Config::parse(
            r#"
            state-dir = "/var/lib/wasmgate"
            [http]
            listen = "127.0.0.1:9000"
            admin = "127.0.0.1:9001"
            [device]
            id = "edge-01"
            mode = "opaque"
            labels = { site = "north" }
            [[partition]]
            id = "p1"
            cpu = 0.5
            memory = "128Mi"
            storage = "64Mi"
            labels = { tier = "a" }
            interfaces = [{ type = "ethernet" }]
            "#,
        )
        .unwrap();
        assert_eq!(config.device_id(), "edge-01");
        assert_eq!(config.mode(), GatewayMode::Opaque);
        assert_eq!(config.partitions.len(), 1);
        assert_eq!(config.partitions[0].memory, ByteSize(128 << 20));
        assert_eq!(config.partitions[0].instance_memory(), 128 << 20);
        assert_eq!(config.http.admin.unwrap().port(), 9001);
    }

    #[test]
    fn admin_hosts_are_dns_names() {
        let config =
            Config::parse("[http]\nadmin-hosts = [\"gw-01.site.example\", \"gw-01.\"]").unwrap();
        assert_eq!(config.http.admin_hosts, ["gw-01.site.example", "gw-01."]);
        assert!(Config::parse("").unwrap().http.admin_hosts.is_empty());
        for bad in [
            "",
            "gw:8080",
            "*.example",
            "-gw.example",
            "gw..example",
            "gw example",
            "[::1]",
            &"a".repeat(64),
        ] {
            let err = Config::parse(&format!("[http]\nadmin-hosts = [{bad:?}]")).unwrap_err();
            assert!(err.to_string().contains("admin-hosts"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn empty_config_gets_default_partition() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.partitions.len(), 1);
        assert_eq!(config.partitions[0].id, "default");
        assert!(config.partitions[0].cpu >= 1.0);
        assert!(config.partitions[0].memory.0 <= 1 << 30);
    }

    #[test]
    fn capability_entries_follow_the_margo_schema() {
        let with = |entries: &str| {
            Config::parse(&format!(
                "[[partition]]\nid = \"a\"\ncpu = 1\nmemory = \"64Mi\"\nstorage = \"1Mi\"\n{entries}"
            ))
        };
        with("interfaces = [{ type = \"ethernet\" }, { type = \"canbus\" }]\nperipherals = [{ type = \"camera\", manufacturer = \"Acme\", model = \"X1\" }]")
            .unwrap();
        for (entries, expected) in [
            (
                "interfaces = [{ type = \"serial\" }]",
                "interfaces[0] type = \"serial\": expected one of ethernet",
            ),
            (
                "interfaces = [{ kind = \"wifi\" }]",
                "interfaces[0]: missing `type`",
            ),
            ("interfaces = [\"wifi\"]", "interfaces[0]: expected a table"),
            (
                "interfaces = [{ type = \"wifi\", model = \"x\" }]",
                "unknown key `model` (Margo allows only `type`)",
            ),
            (
                "peripherals = [{ type = \"gpu\" }, { type = \"lidar\" }]",
                "peripherals[1] type = \"lidar\"",
            ),
            (
                "peripherals = [{ type = \"gpu\", vram = 8 }]",
                "unknown key `vram`",
            ),
            (
                "peripherals = [{ type = \"gpu\", model = 8 }]",
                "peripherals[0] model: expected a string",
            ),
        ] {
            let err = with(entries).unwrap_err().to_string();
            assert!(err.contains(expected), "{entries}: {err}");
            assert!(err.contains("[[partition]] #1"), "{err}");
        }
    }

    #[test]
    fn http_limits_parse_with_defaults() {
        let config = Config::parse(
            r#"
            [http]
            header-timeout = "3s"
            idle-timeout = "500ms"
            max-connections = 200
            max-header-size = "16Ki"
            shutdown-timeout = "1m"
            "#,
        )
        .unwrap();
        let limits = config.http.connection_limits();
        assert_eq!(limits.header_timeout, Duration::from_secs(3));
        assert_eq!(limits.idle_timeout, Duration::from_millis(500));
        assert_eq!(limits.max_connections, 200);
        assert_eq!(limits.max_header_size, 16 << 10);
        assert_eq!(config.shutdown_timeout(), Duration::from_secs(60));

        let defaults = Config::parse(
            "[[partition]]\nid = \"a\"\ncpu = 1\nmemory = \"1Gi\"\nstorage = \"1Gi\"\ntimeout = \"40s\"",
        )
        .unwrap();
        let limits = defaults.http.connection_limits();
        assert_eq!(limits.header_timeout, DEFAULT_HEADER_TIMEOUT);
        assert_eq!(limits.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(limits.max_header_size, DEFAULT_MAX_HEADER_SIZE as usize);
        // 40s deadline + 2s default queue wait + margin.
        assert_eq!(defaults.shutdown_timeout(), Duration::from_secs(47));
    }

    #[test]
    fn artifacts_and_registries_parse() {
        let config = Config::parse(
            r#"
            [artifacts]
            max-component-size = "64Mi"
            cache-quota = "512Mi"
            gc-grace = "10m"
            registry-auth-file = "/etc/wasmgate/auth.json"
            [registries."registry.example.com"]
            username = "edge"
            password-file = "/etc/wasmgate/registry-password"
            ca-file = "/etc/wasmgate/registry-ca.pem"
            [registries."10.0.0.5:5000"]
            protocol = "http"
            "#,
        )
        .unwrap();
        assert_eq!(config.artifacts.max_component_size(), 64 << 20);
        assert_eq!(config.artifacts.cache_quota(), 512 << 20);
        assert_eq!(config.artifacts.gc_grace(), Duration::from_secs(600));
        let r = &config.registries["registry.example.com"];
        assert_eq!(r.username.as_deref(), Some("edge"));
        assert_eq!(
            config.registries["10.0.0.5:5000"].protocol,
            Some(RegistryProtocol::Http)
        );
        let defaults = Config::parse("").unwrap();
        assert_eq!(defaults.artifacts.cache_quota(), 2 << 30);
        assert!(defaults.registries.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("[[partition]]\nid = \"a/b\"\ncpu = 1\nmemory = \"1Gi\"\nstorage = \"1Gi\"", "id"),
            ("[[partition]]\nid = \"a\"\ncpu = 0\nmemory = \"1Gi\"\nstorage = \"1Gi\"", "cpu"),
            ("[[partition]]\nid = \"a\"\ncpu = 1\nmemory = \"lots\"\nstorage = \"1Gi\"", "128Mi"),
            ("[http]\nlisten = \"nowhere\"", "listen"),
            ("[device]\nmode = \"sideways\"", "mode"),
            ("[[partition]]\nid = \"a\"\ncpu = 1\nmemory = \"1Gi\"\nstorage = \"1Gi\"\n[[partition]]\nid = \"a\"\ncpu = 1\nmemory = \"1Gi\"\nstorage = \"1Gi\"", "duplicate"),
            ("colour = \"blue\"", "colour"),
            ("[wfm]\nurl = \"https://wfm\"", "svid-cert"),
            ("[registries.\"https://r.io\"]", "HOST:PORT"),
            ("[registries.\"r.io\"]\nusername = \"u\"", "go together"),
            ("[registries.\"r.io\"]\ntoken = \"t\"\nusername = \"u\"\npassword = \"p\"", "not both"),
            ("[registries.\"r.io\"]\nprotocol = \"ftp\"", "protocol"),
            ("[artifacts]\nquota = \"1Gi\"", "quota"),
            ("[http]\nheader-timeout = \"0s\"", "header-timeout"),
            ("[http]\nidle-timeout = \"soon\"", "duration"),
            ("[http]\nmax-connections = 0", "max-connections"),
            ("[http]\nmax-header-size = \"4Mi\"", "max-header-size"),
            ("[telemetry]\nprotocol = \"grpc\"", "http/protobuf"),
            ("[telemetry]\notlp-endpoint = \"collector:4318\"", "otlp-endpoint"),
            ("[telemetry]\notlp-endpoint = \"ftp://c\"", "otlp-endpoint"),
            ("[telemetry]\nexport-interval = \"1ms\"", "export-interval"),
            ("[telemetry]\nheaders = 1", "headers"),
        ];
        for (text, needle) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{text:?} gave {err:?}, expected mention of {needle}"
            );
        }
    }

    #[test]
    fn telemetry_is_on_by_default_and_reports_the_collector() {
        let config = Config::parse("").unwrap();
        assert!(config.telemetry.enabled && config.otel_collector());
        assert!(config.otlp_settings().is_some_and(|s| s.endpoint.is_none()));
        let off = Config::parse("[telemetry]\nenabled = false").unwrap();
        assert!(!off.otel_collector() && off.otlp_settings().is_none());
        // The deprecated key still tells of an external collector.
        let external =
            Config::parse("[telemetry]\nenabled = false\n[device]\notel-collector = true").unwrap();
        assert!(external.otel_collector());
        let set = Config::parse(
            "[telemetry]\notlp-endpoint = \"http://127.0.0.1:4318\"\nprotocol = \"http/protobuf\"\nexport-interval = \"2s\"",
        )
        .unwrap();
        let settings = set.otlp_settings().unwrap();
        assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        assert_eq!(settings.export_interval, Some(Duration::from_secs(2)));
    }
}
