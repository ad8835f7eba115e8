//! The host's configuration file (TOML): where state lives, what to listen on, who the
//! device is and how it is split into sandbox partitions.

mod reload;

pub use reload::restart_only_changes;

use crate::deploy::{ArtifactsSettings, Registries};
use crate::ingress::HttpSettings;
use crate::margo::{DeviceProfile, DeviceSettings, GatewayMode};
use crate::sandbox::{PartitionSettings, DEFAULT_QUEUE_TIMEOUT, DEFAULT_TIMEOUT};
use crate::telemetry::TelemetrySettings;
use crate::types::DeviceId;
use crate::units::HumanDuration;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Added to the slowest partition's deadline for the default shutdown bound: room for
/// the response to be written and the connection to close.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub http: HttpSettings,
    pub device: Option<DeviceSettings>,
    #[serde(default, rename = "partition")]
    pub partitions: Vec<PartitionSettings>,
    /// The Margo WFM connection; local mode when absent.
    pub wfm: Option<crate::margo::WfmSettings>,
    /// How often the deployments folder is checked for changes in local mode.
    pub watch_interval: Option<HumanDuration>,
    /// Component artifacts: size limit, cache quota and garbage collection, pulls.
    #[serde(default)]
    pub artifacts: ArtifactsSettings,
    /// Per-registry settings, keyed by `HOST` or `HOST:PORT` as in `oci://HOST:PORT/...`.
    #[serde(default)]
    pub registries: Registries,
    /// The OpenTelemetry pipeline: the host is its workloads' collector.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// What is logged (and exported), as `tracing` filter directives; the
    /// `WASMGATE_LOG` environment variable wins when set. Reloaded on SIGHUP.
    pub log_filter: Option<String>,
}

/// The largest configuration file read.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

fn default_state_dir() -> PathBuf {
    PathBuf::from("wasmgate-state")
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            http: HttpSettings::default(),
            device: None,
            partitions: Vec::new(),
            wfm: None,
            watch_interval: None,
            artifacts: ArtifactsSettings::default(),
            registries: Registries::new(),
            telemetry: TelemetrySettings::default(),
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

    pub fn device_id(&self) -> DeviceId {
        self.device
            .as_ref()
            .and_then(|d| d.id.clone())
            .unwrap_or_else(detected_device_id)
    }

    /// What the pipeline needs from the file; `None` when `[telemetry] enabled = false`.
    pub fn otlp_settings(&self) -> Option<crate::telemetry::OtlpSettings> {
        self.telemetry.otlp(&self.device_id())
    }

    /// Reported as `otelCollector` (see [`crate::margo::device::reports_otel_collector`]).
    pub fn otel_collector(&self) -> bool {
        crate::margo::device::reports_otel_collector(&self.telemetry, self.device.as_ref())
    }

    /// The device the WFM client speaks for.
    pub fn device_profile(&self) -> DeviceProfile {
        DeviceProfile {
            id: self.device_id(),
            settings: self.device.clone().unwrap_or_default(),
            partitions: self.partitions.clone(),
            telemetry: self.telemetry.clone(),
            state_dir: self.state_dir.clone(),
        }
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
        self.http.validate().or_else(invalid)?;
        self.telemetry.validate().or_else(invalid)?;
        if self
            .watch_interval
            .is_some_and(|d| d.0 < Duration::from_millis(50))
        {
            return invalid("watch-interval: expected at least 50ms".into());
        }
        self.artifacts.validate().or_else(invalid)?;
        crate::deploy::validate_registries(&self.registries).or_else(invalid)?;
        if let Some(filter) = &self.log_filter {
            if let Err(err) = tracing_subscriber::EnvFilter::try_new(filter) {
                return invalid(format!(
                    "log-filter {filter:?}: {err} (expected directives such as \"info,wasmgate=debug\")"
                ));
            }
        }
        let device_id = self.device_id();
        if !device_id.is_host() {
            return invalid(format!(
                "[device] id {:?}: expected one segment (letters, digits, '.', '_', '~' or '-'), without '/': the partitions are the segments below it",
                device_id.as_str()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.partitions.iter().enumerate() {
            let at = format!("[[partition]] #{} ({:?})", i + 1, p.id);
            p.validate(&at).or_else(invalid)?;
            if !seen.insert(p.id.as_str()) {
                return invalid(format!("{at} id: duplicate partition id"));
            }
            crate::margo::device::check_capability_entries(&at, p).or_else(invalid)?;
        }
        Ok(())
    }
}

fn detected_device_id() -> DeviceId {
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
    // Cleaned to unreserved characters, so only an empty name fails.
    DeviceId::parse(&cleaned).unwrap_or_else(|_| DeviceId::parse("wasmgate").expect("a valid id"))
}

/// All cores, half the memory (at most 1 GiB) and 1 GiB of storage: enough for a
/// development machine, small enough not to starve the OS on a 1 GiB board.
fn default_partition() -> PartitionSettings {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let memory = (sys.total_memory() / 2).clamp(64 << 20, 1 << 30);
    let id = crate::types::PartitionId::parse("default").expect("a valid id");
    PartitionSettings::new(id, cores, memory, 1 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::RegistryProtocol;
    use crate::ingress::{DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_SIZE};
    use crate::units::ByteSize;

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
            ("[[partition]]\nid = \"..\"\ncpu = 1\nmemory = \"1Gi\"\nstorage = \"1Gi\"", "not '.' or '..'"),
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
