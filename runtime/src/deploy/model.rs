//! Margo `ApplicationDeployment` documents, parsed at the edge into types that only hold
//! valid values. The wasmgate-specific part lives in each component's
//! `x-wasmgate-extensions` object ([`WasmgateExtensions`]).

use crate::trigger::{HttpRoute, TimerSchedule};
use crate::types::DeploymentId;
use crate::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A problem with a deployment document, naming the field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ModelError {
    pub field: String,
    pub message: String,
    /// A valid document of a deployment type wasmgate does not run (`helm`, `compose`).
    pub unsupported_type: bool,
}

impl ModelError {
    /// The status code reported for this problem.
    pub fn code(&self) -> &'static str {
        if self.unsupported_type {
            "wasmgate.unsupported-type"
        } else {
            "wasmgate.invalid"
        }
    }
}

fn model_err(field: impl Into<String>, message: impl Into<String>) -> ModelError {
    ModelError {
        field: field.into(),
        message: message.into(),
        unsupported_type: false,
    }
}

/// The longest YAML error message passed on (status, logs).
const MAX_YAML_ERROR_CHARS: usize = 300;

/// A YAML parse error without the input it may quote: serde names the offending value
/// (`invalid type: string "root:x:0:0:..."`), which would put the content of any file
/// given as a deployment into the unauthenticated `/status`. Position and field path
/// stay; every quoted or back-quoted value before serde's `, expected` (what the schema
/// wanted, never input) is replaced by `…`, except the schema's own field names in
/// `missing field` / `duplicate field`.
fn redacted_yaml_error(err: &serde_norway::Error) -> String {
    redact_quoted(
        &err.to_string(),
        err.location().map(|at| (at.line(), at.column())),
    )
}

fn redact_quoted(text: &str, location: Option<(usize, usize)>) -> String {
    let (input_part, expected) = match text.find(", expected ") {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let keep_backquoted = ["missing field `", "duplicate field `"]
        .iter()
        .any(|m| input_part.contains(m));
    let mut out = String::with_capacity(text.len().min(MAX_YAML_ERROR_CHARS));
    let mut chars = input_part.chars();
    while let Some(c) = chars.next() {
        if c == '"' || (c == '`' && !keep_backquoted) {
            out.push(c);
            out.push('…');
            let mut escaped = false;
            for inner in chars.by_ref() {
                if inner == c && !escaped {
                    out.push(c);
                    break;
                }
                escaped = !escaped && inner == '\\';
            }
        } else {
            out.push(c);
        }
    }
    out.push_str(expected);
    let cut = out.chars().count() > MAX_YAML_ERROR_CHARS;
    if cut {
        out = out.chars().take(MAX_YAML_ERROR_CHARS).collect();
        out.push('…');
    }
    // serde_norway leaves out a position at the very start of the document.
    if let Some((line, column)) = location.filter(|_| cut || !out.contains(" at line ")) {
        out.push_str(&format!(" (at line {line} column {column})"));
    }
    out
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDeployment {
    id: Option<String>,
    metadata: Option<RawMetadata>,
    spec: Option<RawSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetadata {
    name: Option<String>,
    namespace: Option<String>,
    device_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    application_id: Option<String>,
    deployment_profile: Option<RawProfile>,
    #[serde(default)]
    parameters: Option<BTreeMap<String, RawParameter>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProfile {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    components: Vec<RawComponent>,
    device_constraints: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawComponent {
    name: Option<String>,
    properties: Option<RawProperties>,
    #[serde(rename = "x-wasmgate-extensions")]
    wasmgate: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawProperties {
    repository: Option<String>,
    revision: Option<Value>,
    timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawParameter {
    value: Value,
    #[serde(default)]
    targets: Vec<RawTarget>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawTarget {
    pointer: String,
    #[serde(default)]
    components: Vec<String>,
}

/// A validated deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub id: DeploymentId,
    pub name: String,
    pub namespace: Option<String>,
    pub application_id: String,
    /// Where to run; `None` lets the host choose.
    pub device_id: Option<String>,
    pub components: Vec<ComponentSpec>,
    pub device_constraints: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComponentSpec {
    pub name: String,
    pub repository: String,
    pub revision: Option<String>,
    /// Margo `properties.timeout`: how long installing may take.
    pub install_timeout: Option<Duration>,
    /// `wasi:config` values: parameter target `pointer` -> value.
    pub config: BTreeMap<String, String>,
    pub extensions: WasmgateExtensions,
}

/// `x-wasmgate-extensions` of a component.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WasmgateExtensions {
    pub http: Option<HttpRoute>,
    pub timer: Option<TimerSchedule>,
    pub memory: Option<u64>,
    pub timeout: Option<Duration>,
    pub data_dir: bool,
    pub outbound: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawExtensions {
    trigger: Option<BTreeMap<String, Value>>,
    limits: Option<Value>,
    #[serde(default)]
    data_dir: bool,
    #[serde(default)]
    outbound: Vec<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawLimits {
    memory: Option<ByteSize>,
    timeout: Option<HumanDuration>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RawHttpTrigger {
    route: String,
    host: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RawTimerTrigger {
    every: HumanDuration,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// Unknown fields are ignored, never fatal (Margo extensibility rule), but a typo
/// deserves a line in the log.
fn warn_unknown(at: &str, other: &BTreeMap<String, Value>) {
    for key in other.keys() {
        tracing::warn!(field = %format!("{at}.{key}"), "ignoring unknown field");
    }
}

/// What a deployment document still tells when it fails validation, so that its failed
/// status names the deployment, its components and its target as a WFM expects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outline {
    pub id: Option<DeploymentId>,
    pub name: Option<String>,
    pub device_id: Option<String>,
    pub components: Vec<String>,
}

/// A `deviceId` that names one partition (`DEVICE/PARTITION`), not the host's choice.
pub fn directed_target(device_id: Option<&str>) -> Option<String> {
    device_id
        .filter(|d| !d.ends_with("/*") && d.contains('/'))
        .map(str::to_owned)
}

/// At most this many component names are taken from a document that failed.
const OUTLINE_COMPONENTS: usize = 64;

impl Outline {
    /// Reads what it can from `bytes`, ignoring everything that is not as expected:
    /// only values that would pass validation are kept.
    pub fn of_yaml(bytes: &[u8]) -> Self {
        // The same guard as `from_yaml`: this runs on the documents it refused, and the
        // parser would spend minutes on deep flow nesting.
        if check_flow_depth(bytes).is_err() {
            return Self::default();
        }
        let Ok(doc) = serde_norway::from_slice::<Value>(bytes) else {
            return Self::default();
        };
        let text = |pointer: &str| doc.pointer(pointer).and_then(Value::as_str);
        let components = doc
            .pointer("/spec/deploymentProfile/components")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .filter(|n| is_component_name(n))
                    .take(OUTLINE_COMPONENTS)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            id: text("/id").and_then(deployment_uuid),
            name: text("/metadata/name")
                .filter(|n| !n.trim().is_empty() && n.len() <= 253)
                .map(str::to_owned),
            device_id: text("/metadata/deviceId")
                .filter(|d| is_valid_device_id(d))
                .map(str::to_owned),
            components,
        }
    }

    /// The partition the document names directly (`DEVICE/PARTITION`), if any.
    pub fn directed_target(&self) -> Option<String> {
        directed_target(self.device_id.as_deref())
    }
}

impl From<&Deployment> for Outline {
    fn from(d: &Deployment) -> Self {
        Self {
            id: Some(d.id.clone()),
            name: Some(d.name.clone()),
            device_id: d.device_id.clone(),
            components: d.components.iter().map(|c| c.name.clone()).collect(),
        }
    }
}

/// Shortest timer period accepted: faster timers are a busy loop in disguise.
pub const MIN_TIMER_PERIOD: Duration = Duration::from_millis(100);

/// An ApplicationDeployment's `id`: the spec's UUID, in either case of hex.
fn deployment_uuid(s: &str) -> Option<DeploymentId> {
    is_uuid(s).then(|| DeploymentId::parse(s).ok()).flatten()
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Margo `deviceId`: unreserved segments joined by `/`, optionally ending in `/*`.
pub fn is_valid_device_id(s: &str) -> bool {
    crate::types::is_valid_device_id(s.strip_suffix("/*").unwrap_or(s))
}

/// A value from the document for an error message: quoted and escaped (a newline or
/// quote cannot start a forged log line) and cut short (a megabyte name is not echoed).
fn preview(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut cut: String = s.chars().take(MAX_CHARS).collect();
    if cut.len() < s.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

/// Longest `metadata.name` / `metadata.namespace`: a Kubernetes DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// `metadata.name` and `metadata.namespace`: Margo gives them no pattern of their own
/// but uses them as Kubernetes release name and namespace, so they follow the
/// Kubernetes DNS-1123 label rule: 1 to 63 characters, lowercase letters, digits and
/// `-`, starting and ending with a letter or digit (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`).
pub fn is_dns_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= MAX_NAME_LEN
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    }
}

const DNS_LABEL_RULE: &str = "expected 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit (a Kubernetes DNS-1123 label)";

/// `spec.applicationId`, as Margo's schema has it: `^[-a-z0-9]{1,200}$`.
fn is_application_id(s: &str) -> bool {
    (1..=200).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An HTTP route prefix: `/` then URL path characters (RFC 3986 `pchar` and `/`), at
/// most 1024 bytes. Routes are printed and reported, so no spaces, quotes or controls.
fn is_route(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 1024
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%/".contains(&b))
}

fn is_component_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The text a guest reads through `wasi:config` for a parameter value: strings as they
/// are, everything else as JSON.
fn config_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Deepest `[` / `{` nesting a deployment document may have. The YAML parser's cost
/// grows with the square of the flow nesting depth (100k levels, 200 KB, take minutes),
/// and serde refuses more than 128 levels anyway, only after the parser is done.
pub const MAX_FLOW_DEPTH: usize = 256;

/// Refuses documents that could nest flow collections deeper than [`MAX_FLOW_DEPTH`].
/// Every bracket counts, also inside quotes and comments: telling those apart needs the
/// very parser this guards, and no real deployment has hundreds of unclosed brackets.
fn check_flow_depth(bytes: &[u8]) -> Result<(), ModelError> {
    let mut depth = 0usize;
    for b in bytes {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(model_err(
                        "document",
                        format!("nested deeper than {MAX_FLOW_DEPTH} levels of [ ] / {{ }}"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

impl Deployment {
    /// Parses and validates a deployment YAML.
    pub fn from_yaml(bytes: &[u8]) -> Result<Self, ModelError> {
        check_flow_depth(bytes)?;
        let raw: RawDeployment = serde_norway::from_slice(bytes).map_err(|e| {
            model_err(
                "document",
                format!(
                    "not a valid ApplicationDeployment YAML: {}",
                    redacted_yaml_error(&e)
                ),
            )
        })?;
        Self::validate(raw)
    }

    fn validate(raw: RawDeployment) -> Result<Self, ModelError> {
        let id = raw
            .id
            .ok_or_else(|| model_err("id", "missing; expected the deployment UUID"))?;
        let id = deployment_uuid(&id).ok_or_else(|| {
            model_err(
                "id",
                format!(
                    "{} is not a UUID (e.g. 3f0c6d52-1b7e-4a39-9d2a-8e5b7c4a1f01)",
                    preview(&id)
                ),
            )
        })?;
        let metadata = raw
            .metadata
            .ok_or_else(|| model_err("metadata", "missing"))?;
        let name = metadata
            .name
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| model_err("metadata.name", "missing or empty"))?;
        if !is_dns_label(&name) {
            return Err(model_err(
                "metadata.name",
                format!("{}: {DNS_LABEL_RULE}", preview(&name)),
            ));
        }
        if let Some(namespace) = &metadata.namespace {
            if !is_dns_label(namespace) {
                return Err(model_err(
                    "metadata.namespace",
                    format!("{}: {DNS_LABEL_RULE}", preview(namespace)),
                ));
            }
        }
        if let Some(device_id) = &metadata.device_id {
            if !is_valid_device_id(device_id) {
                return Err(model_err(
                    "metadata.deviceId",
                    format!("{}: expected DEVICE, DEVICE/PARTITION or DEVICE/* (letters, digits, '.', '_', '~', '-')", preview(device_id)),
                ));
            }
        }
        let spec = raw.spec.ok_or_else(|| model_err("spec", "missing"))?;
        let application_id = spec
            .application_id
            .ok_or_else(|| model_err("spec.applicationId", "missing"))?;
        if !is_application_id(&application_id) {
            return Err(model_err(
                "spec.applicationId",
                format!(
                    "{}: expected 1 to 200 lowercase letters, digits and '-'",
                    preview(&application_id)
                ),
            ));
        }
        let profile = spec
            .deployment_profile
            .ok_or_else(|| model_err("spec.deploymentProfile", "missing"))?;
        match profile.kind.as_deref() {
            Some("custom") => {}
            Some(other) => {
                return Err(ModelError {
                    unsupported_type: true,
                    ..model_err(
                        "spec.deploymentProfile.type",
                        format!("{other:?} is not supported: wasmgate runs `custom` (WebAssembly component) deployments"),
                    )
                })
            }
            None => return Err(model_err("spec.deploymentProfile.type", "missing; expected `custom`")),
        }
        if profile.components.is_empty() {
            return Err(model_err(
                "spec.deploymentProfile.components",
                "empty; expected at least one component",
            ));
        }
        let parameters = spec.parameters.unwrap_or_default();
        let mut components = Vec::new();
        for (i, raw) in profile.components.into_iter().enumerate() {
            let at = format!("spec.deploymentProfile.components[{i}]");
            let component = parse_component(&at, raw, &parameters)?;
            if components
                .iter()
                .any(|c: &ComponentSpec| c.name == component.name)
            {
                return Err(model_err(
                    format!("{at}.name"),
                    format!("duplicate component name {:?}", component.name),
                ));
            }
            components.push(component);
        }
        for (param, p) in &parameters {
            for (t, target) in p.targets.iter().enumerate() {
                for name in &target.components {
                    if !components.iter().any(|c| &c.name == name) {
                        return Err(model_err(
                            format!("spec.parameters.{param}.targets[{t}].components"),
                            format!("names component {name:?}, which the deployment does not have"),
                        ));
                    }
                }
            }
        }
        Ok(Self {
            id,
            name,
            namespace: metadata.namespace,
            application_id,
            device_id: metadata.device_id,
            components,
            device_constraints: profile.device_constraints,
        })
    }
}

fn parse_component(
    at: &str,
    raw: RawComponent,
    parameters: &BTreeMap<String, RawParameter>,
) -> Result<ComponentSpec, ModelError> {
    let name = raw
        .name
        .ok_or_else(|| model_err(format!("{at}.name"), "missing"))?;
    if !is_component_name(&name) {
        return Err(model_err(
            format!("{at}.name"),
            format!(
                "{}: expected 1 to 63 lowercase letters, digits and dashes",
                preview(&name)
            ),
        ));
    }
    let props = raw.properties.ok_or_else(|| {
        model_err(
            format!("{at}.properties"),
            "missing; expected repository and revision",
        )
    })?;
    let repository = props.repository.filter(|r| !r.is_empty()).ok_or_else(|| {
        model_err(
            format!("{at}.properties.repository"),
            "missing; expected oci://..., file:... or a path",
        )
    })?;
    let revision = props.revision.map(|v| config_text(&v));
    let install_timeout = props
        .timeout
        .map(|t| {
            crate::units::parse_duration(&t)
                .map_err(|e| model_err(format!("{at}.properties.timeout"), e.to_string()))
        })
        .transpose()?;
    let mut config = BTreeMap::new();
    for p in parameters.values() {
        for target in &p.targets {
            if target.components.iter().any(|c| c == &name) {
                config.insert(target.pointer.clone(), config_text(&p.value));
            }
        }
    }
    let ext_at = format!("{at}.x-wasmgate-extensions");
    let extensions = match raw.wasmgate {
        None => {
            return Err(model_err(
                ext_at,
                "missing; a component needs a trigger, e.g. trigger: {http: {route: /hello}}",
            ))
        }
        Some(value) => parse_extensions(&ext_at, value)?,
    };
    Ok(ComponentSpec {
        name,
        repository,
        revision,
        install_timeout,
        config,
        extensions,
    })
}

fn parse_extensions(at: &str, value: Value) -> Result<WasmgateExtensions, ModelError> {
    let raw: RawExtensions =
        serde_json::from_value(value).map_err(|e| model_err(at, e.to_string()))?;
    warn_unknown(at, &raw.other);
    let limits: RawLimits = match raw.limits {
        None => RawLimits::default(),
        Some(value) => serde_json::from_value(value)
            .map_err(|e| model_err(format!("{at}.limits"), e.to_string()))?,
    };
    warn_unknown(&format!("{at}.limits"), &limits.other);
    let mut ext = WasmgateExtensions {
        memory: limits.memory.map(|b| b.0),
        timeout: limits.timeout.map(|d| d.0),
        data_dir: raw.data_dir,
        outbound: raw.outbound,
        ..Default::default()
    };
    let triggers = raw.trigger.filter(|t| !t.is_empty()).ok_or_else(|| {
        model_err(
            format!("{at}.trigger"),
            "missing; expected `http: {route: /path}` and/or `timer: {every: 10s}`",
        )
    })?;
    for (kind, spec) in triggers {
        let field = format!("{at}.trigger.{kind}");
        match kind.as_str() {
            "http" => {
                let http: RawHttpTrigger =
                    serde_json::from_value(spec).map_err(|e| model_err(&field, e.to_string()))?;
                warn_unknown(&field, &http.other);
                if !is_route(&http.route) {
                    return Err(model_err(
                        format!("{field}.route"),
                        format!(
                            "{}: expected a path starting with / (URL path characters only)",
                            preview(&http.route)
                        ),
                    ));
                }
                if let Some(host) = http
                    .host
                    .as_deref()
                    .filter(|h| !crate::names::is_dns_name(h))
                {
                    return Err(model_err(
                        format!("{field}.host"),
                        format!(
                            "{}: expected a DNS name (labels of letters, digits and '-', separated by '.'), without a port",
                            preview(host)
                        ),
                    ));
                }
                ext.http = Some(HttpRoute {
                    route: crate::trigger::normalize_prefix(&http.route),
                    host: http.host.as_deref().map(crate::names::canonical_host),
                });
            }
            "timer" => {
                let timer: RawTimerTrigger =
                    serde_json::from_value(spec).map_err(|e| model_err(&field, e.to_string()))?;
                warn_unknown(&field, &timer.other);
                if timer.every.0 < MIN_TIMER_PERIOD {
                    return Err(model_err(
                        format!("{field}.every"),
                        format!("expected at least {MIN_TIMER_PERIOD:?}"),
                    ));
                }
                ext.timer = Some(TimerSchedule {
                    every: timer.every.0,
                });
            }
            other => {
                return Err(model_err(
                    field,
                    format!("unknown trigger kind {other:?}; expected `http` or `timer`"),
                ))
            }
        }
    }
    if ext.timeout.is_some_and(|t| t.is_zero()) {
        return Err(model_err(
            format!("{at}.limits.timeout"),
            "expected more than 0s",
        ));
    }
    Ok(ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id: 3f0c6d52-1b7e-4a39-9d2a-8e5b7c4a1f01
metadata:
  name: hello
  namespace: examples
  deviceId: edge-01/apps
spec:
  applicationId: hello
  deploymentProfile:
    type: custom
    components:
      - name: hello
        properties:
          repository: file:hello.wasm
          revision: 0.1.0
        x-wasmgate-extensions:
          trigger:
            http: {route: /hello/}
          limits: {memory: 32Mi, timeout: 5s}
          future-option: 1
  parameters:
    greeting:
      value: Hi
      targets: [{pointer: greeting, components: [hello]}]
    count:
      value: 3
      targets: [{pointer: count, components: [hello]}]
"#;

    #[test]
    fn parses_a_custom_deployment() {
        let d = Deployment::from_yaml(GOOD.as_bytes()).unwrap();
        assert_eq!(d.device_id.as_deref(), Some("edge-01/apps"));
        let c = &d.components[0];
        assert_eq!(c.config.get("greeting").unwrap(), "Hi");
        assert_eq!(c.config.get("count").unwrap(), "3");
        assert_eq!(c.extensions.http.as_ref().unwrap().route, "/hello");
        assert_eq!(c.extensions.memory, Some(32 << 20));
        assert_eq!(c.extensions.timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.revision.as_deref(), Some("0.1.0"));
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = format!("{GOOD}x: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let start = std::time::Instant::now();
        let err = Deployment::from_yaml(deep.as_bytes()).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(err.message.contains("nested deeper"), "{err}");
        // Many brackets that close again are not nesting.
        let wide = format!("{GOOD}x: [{}]\n", "[], ".repeat(10_000));
        Deployment::from_yaml(wide.as_bytes()).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "deviceId: edge-01/apps",
                "deviceId: edge 01",
                "",
                "",
                "metadata.deviceId",
            ),
            (
                "id: 3f0c6d52-1b7e-4a39-9d2a-8e5b7c4a1f01",
                "id: 42",
                "",
                "",
                "id",
            ),
            (
                "type: custom",
                "type: compose",
                "",
                "",
                "deploymentProfile.type",
            ),
            (
                "http: {route: /hello/}",
                "mqtt: {topic: x}",
                "",
                "",
                "unknown trigger kind \"mqtt\"",
            ),
            (
                "http: {route: /hello/}",
                "http: {route: hello}",
                "",
                "",
                "route",
            ),
            (
                "http: {route: /hello/}",
                "timer: {every: 1ms}",
                "",
                "",
                "every",
            ),
            (
                "http: {route: /hello/}",
                "timer: {every: soon}",
                "",
                "",
                "duration",
            ),
            ("memory: 32Mi", "memory: lots", "", "", "limits"),
            (
                "components: [hello]}]\n    count",
                "components: [nobody]}]\n    count",
                "",
                "",
                "nobody",
            ),
        ];
        for (from, to, from2, to2, needle) in cases {
            let mut text = GOOD.replace(from, to);
            if !from2.is_empty() {
                text = text.replace(from2, to2);
            }
            let err = Deployment::from_yaml(text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle),
                "replacing {from:?} gave {err:?}; expected {needle:?}"
            );
        }
    }

    #[test]
    fn malformed_yaml_reports_location() {
        let err = Deployment::from_yaml(b"id: [unclosed\nmetadata: {").unwrap_err();
        assert_eq!(err.field, "document");
        assert!(err.message.contains("line"), "{err}");
    }

    #[test]
    fn yaml_errors_do_not_quote_the_input() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
        let err = Deployment::from_yaml(passwd.as_bytes()).unwrap_err();
        assert!(
            !err.message.contains("root") && !err.message.contains("daemon"),
            "{err}"
        );
        assert!(err.message.contains("line 1 column 1"), "{err}");
        assert!(err.message.contains("expected struct"), "{err}");

        // A value deep in the document: the field path and position stay, the value goes.
        let text = GOOD.replace(
            "metadata:\n  name: hello\n  namespace: examples\n  deviceId: edge-01/apps\n",
            "metadata: \"s3cr3t\\\" value\"\n",
        );
        let err = Deployment::from_yaml(text.as_bytes()).unwrap_err();
        assert!(
            !err.message.contains("s3cr3t") && !err.message.contains("value\""),
            "{err}"
        );
        assert!(
            err.message.starts_with(
                "not a valid ApplicationDeployment YAML: metadata: invalid type: string \"…\""
            ),
            "{err}"
        );
        assert!(err.message.contains("line "), "{err}");

        // Schema field names are not input and stay; what serde expected stays.
        assert_eq!(
            redact_quoted(
                "spec: missing field `applicationId` at line 3 column 1",
                None
            ),
            "spec: missing field `applicationId` at line 3 column 1"
        );
        assert_eq!(
            redact_quoted(
                "spec.type: unknown variant `root:x:0`, expected one of `custom`, `helm`",
                None
            ),
            "spec.type: unknown variant `…`, expected one of `custom`, `helm`"
        );
        // An unterminated quote hides the rest.
        assert_eq!(
            redact_quoted("invalid size \"abc", None),
            "invalid size \"…"
        );

        // Long messages are cut, the position is kept.
        let long = format!("custom error {}", "k".repeat(2000));
        let cut = redact_quoted(&long, Some((7, 3)));
        assert!(cut.chars().count() < 400, "{cut}");
        assert!(cut.ends_with("… (at line 7 column 3)"), "{cut}");
    }

    #[test]
    fn names_follow_the_dns_label_rule() {
        for ok in ["a", "hello", "sensor-filter", "x1", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Hello",
            "a_b",
            "a.b",
            "evil\"",
            "a\nb",
            "caf\u{e9}",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn hostile_names_are_refused_without_being_echoed_raw() {
        let cases = [
            ("name: hello\n", "name: \"evil\\\"\\nx\"\n", "metadata.name"),
            (
                "namespace: examples",
                "namespace: Ex_amples",
                "metadata.namespace",
            ),
            (
                "applicationId: hello",
                "applicationId: Hello.App",
                "spec.applicationId",
            ),
            (
                "- name: hello",
                "- name: \"he\\nllo\"",
                "components[0].name",
            ),
            (
                "{route: /hello/}",
                "{route: \"/a b\"}",
                "trigger.http.route",
            ),
            (
                "{route: /hello/}",
                "{route: /x, host: \"a\\\"b\"}",
                "trigger.http.host",
            ),
        ];
        for (from, to, field) in cases {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from:?} not in the fixture");
            let err = Deployment::from_yaml(text.as_bytes()).unwrap_err();
            assert!(err.field.ends_with(field), "{to:?} gave {err:?}");
            let shown = err.to_string();
            assert!(!shown.contains('\n'), "{shown:?}");
        }
        // A long value is cut short in the message.
        let long = GOOD.replace("name: hello\n", &format!("name: {}\n", "x".repeat(10_000)));
        let err = Deployment::from_yaml(long.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("metadata.name") && err.len() < 300, "{err}");
    }

    #[test]
    fn device_ids() {
        for ok in ["edge-01", "edge-01/apps", "edge-01/*", "gw/child/x"] {
            assert!(is_valid_device_id(ok), "{ok}");
        }
        for bad in ["", "/x", "a//b", "a/*/b", "a b", "*"] {
            assert!(!is_valid_device_id(bad), "{bad}");
        }
    }
}
