//! The document as a whole: its YAML shape down to the components, and the checks of
//! `id`, `metadata`, `spec` and the parameter targets that need every component parsed.

use super::component::{parse_component, ComponentSpec, RawComponent};
use super::error::{model_err, preview, ModelError};
use super::rules::{
    deployment_uuid, is_application_id, is_dns_label, is_valid_device_id, DNS_LABEL_RULE,
};
use super::yaml::{check_flow_depth, redacted_yaml_error};
use crate::types::DeploymentId;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

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
pub(super) struct RawParameter {
    pub(super) value: Value,
    #[serde(default)]
    pub(super) targets: Vec<RawTarget>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct RawTarget {
    pub(super) pointer: String,
    #[serde(default)]
    pub(super) components: Vec<String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::model::fixture::GOOD;
    use std::time::Duration;

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
}
