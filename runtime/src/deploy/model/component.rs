//! One component of the profile: where its code comes from, how long installing may
//! take, and the `wasi:config` values the parameters aim at it.

use super::document::RawParameter;
use super::error::{model_err, preview, ModelError};
use super::extensions::{parse_extensions, WasmgateExtensions};
use super::rules::is_component_name;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

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

#[derive(Debug, Clone, Deserialize)]
pub(super) struct RawComponent {
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

/// The text a guest reads through `wasi:config` for a parameter value: strings as they
/// are, everything else as JSON.
fn config_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn parse_component(
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
