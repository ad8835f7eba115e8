//! What is still read from a document that failed validation, so that its failed status
//! can name it; lenient where validation is strict, but keeps only values that pass.

use super::document::Deployment;
use super::rules::{deployment_uuid, is_component_name, is_valid_device_id};
use super::yaml::check_flow_depth;
use crate::types::DeploymentId;
use serde_json::Value;

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
