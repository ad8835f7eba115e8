//! `x-wasmgate-extensions`, the part of a component Margo leaves to the runtime:
//! triggers, limits, the data dir, outbound hosts and instance reuse.

use super::error::{model_err, preview, ModelError};
use super::rules::is_route;
use crate::trigger::{HttpRoute, TimerSchedule};
use crate::units::{ByteSize, HumanDuration};
use crate::workload::InstanceReuse;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// `x-wasmgate-extensions` of a component.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WasmgateExtensions {
    pub http: Option<HttpRoute>,
    pub timer: Option<TimerSchedule>,
    pub memory: Option<u64>,
    pub timeout: Option<Duration>,
    pub data_dir: bool,
    pub outbound: Vec<String>,
    pub reuse: Option<InstanceReuse>,
}

/// Shortest timer period accepted: faster timers are a busy loop in disguise.
pub const MIN_TIMER_PERIOD: Duration = Duration::from_millis(100);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawExtensions {
    trigger: Option<BTreeMap<String, Value>>,
    limits: Option<Value>,
    #[serde(default)]
    data_dir: bool,
    #[serde(default)]
    outbound: Vec<String>,
    reuse: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// `reuse: true`, or a mapping whose missing keys take the defaults.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawReuse {
    Enabled(bool),
    Settings(RawReuseSettings),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawReuseSettings {
    requests: Option<u32>,
    idle_timeout: Option<HumanDuration>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

fn parse_reuse(at: &str, value: Value) -> Result<Option<InstanceReuse>, ModelError> {
    let expected = "expected `true`, `false` or a mapping {requests: N, idle-timeout: DURATION}";
    let raw: RawReuse =
        serde_json::from_value(value).map_err(|e| model_err(at, format!("{e}; {expected}")))?;
    let settings = match raw {
        RawReuse::Enabled(false) => return Ok(None),
        RawReuse::Enabled(true) => return Ok(Some(InstanceReuse::default())),
        RawReuse::Settings(settings) => settings,
    };
    warn_unknown(at, &settings.other);
    let mut reuse = InstanceReuse::default();
    if let Some(requests) = settings.requests {
        if !(1..=InstanceReuse::MAX_REQUESTS).contains(&requests) {
            return Err(model_err(
                format!("{at}.requests"),
                format!(
                    "{requests}: expected 1 to {} requests per instance",
                    InstanceReuse::MAX_REQUESTS
                ),
            ));
        }
        reuse.requests = requests;
    }
    if let Some(idle) = settings.idle_timeout {
        if idle.0.is_zero() || idle.0 > InstanceReuse::MAX_IDLE_TIMEOUT {
            return Err(model_err(
                format!("{at}.idle-timeout"),
                format!(
                    "expected more than 0s and at most {:?}",
                    InstanceReuse::MAX_IDLE_TIMEOUT
                ),
            ));
        }
        reuse.idle_timeout = idle.0;
    }
    Ok(Some(reuse))
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

pub(super) fn parse_extensions(at: &str, value: Value) -> Result<WasmgateExtensions, ModelError> {
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
        reuse: match raw.reuse {
            Some(value) => parse_reuse(&format!("{at}.reuse"), value)?,
            None => None,
        },
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

    fn reuse_of(yaml: &str) -> Result<Option<InstanceReuse>, String> {
        let value: Value = serde_norway::from_str(yaml).unwrap();
        parse_extensions("components[0].x-wasmgate-extensions", value)
            .map(|ext| ext.reuse)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn reuse_is_off_unless_asked_for_and_bounded() {
        let route = "trigger: {http: {route: /r}}";
        assert_eq!(reuse_of(&format!("{{{route}}}")), Ok(None));
        assert_eq!(reuse_of(&format!("{{{route}, reuse: false}}")), Ok(None));
        assert_eq!(
            reuse_of(&format!("{{{route}, reuse: true}}")),
            Ok(Some(InstanceReuse::default()))
        );
        assert_eq!(
            reuse_of(&format!("{{{route}, reuse: {{requests: 7}}}}")),
            Ok(Some(InstanceReuse {
                requests: 7,
                idle_timeout: InstanceReuse::DEFAULT_IDLE_TIMEOUT
            }))
        );
        assert_eq!(
            reuse_of(&format!("{{{route}, reuse: {{idle-timeout: 250ms}}}}")),
            Ok(Some(InstanceReuse {
                requests: InstanceReuse::DEFAULT_REQUESTS,
                idle_timeout: Duration::from_millis(250)
            }))
        );
        for (bad, field) in [
            ("{requests: 0}", "reuse.requests"),
            ("{requests: 2000000}", "reuse.requests"),
            ("{idle-timeout: 0s}", "reuse.idle-timeout"),
            ("{idle-timeout: 1h}", "reuse.idle-timeout"),
            ("yes please", "reuse"),
        ] {
            let err = reuse_of(&format!("{{{route}, reuse: {bad}}}")).unwrap_err();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }
}
