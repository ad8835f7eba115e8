//! Margo Management Interface documents as typed values. Incoming documents are parsed
//! at the edge into types that only hold valid values (`Digest`, `DeploymentId`, `ManifestVersion`);
//! outgoing ones serialize exactly the rc.3 shapes.

pub use crate::types::{DeploymentId, Digest, DigestError, ManifestVersion};
use serde::{Deserialize, Serialize};

/// Media type of the state manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.margo.manifest.v1+json";
/// Media type of a deployment bundle.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.margo.bundle.v1+tar+gzip";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRef {
    pub media_type: String,
    pub digest: Digest,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRef {
    pub deployment_id: DeploymentId,
    pub digest: Digest,
    pub url: String,
}

/// A validated state manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateManifest {
    pub version: ManifestVersion,
    pub bundle: Option<BundleRef>,
    pub deployments: Vec<DeploymentRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state manifest field {field}: {message}")]
pub struct ManifestError {
    pub field: String,
    pub message: String,
}

fn manifest_err(field: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRef {
    media_type: Option<String>,
    deployment_id: Option<String>,
    digest: Option<String>,
    url: Option<String>,
}

/// Tells an explicit `null` (`Some(None)`) from an absent field (`None`).
fn deserialize_some<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<RawRef>>, D::Error> {
    Option::<RawRef>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifestWithNull {
    manifest_version: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "deserialize_some")]
    bundle: Option<Option<RawRef>>,
    deployments: Option<Vec<RawRef>>,
}

impl StateManifest {
    /// Parses and validates a manifest body. Unknown fields are ignored.
    pub fn parse(body: &[u8]) -> Result<Self, ManifestError> {
        let raw: RawManifestWithNull = serde_json::from_slice(body)
            .map_err(|e| manifest_err("document", format!("not a JSON state manifest: {e}")))?;
        let version = match raw.manifest_version {
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .and_then(ManifestVersion::of_manifest)
                .ok_or_else(|| {
                    manifest_err(
                        "manifestVersion",
                        format!("{n} is not an integer from 1 to 2^64-1"),
                    )
                })?,
            Some(other) => {
                return Err(manifest_err(
                    "manifestVersion",
                    format!("{other} is not a number"),
                ))
            }
            None => return Err(manifest_err("manifestVersion", "missing")),
        };
        let deployments = raw
            .deployments
            .ok_or_else(|| manifest_err("deployments", "missing"))?
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let at = |f: &str| format!("deployments[{i}].{f}");
                let deployment_id = r
                    .deployment_id
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| manifest_err(at("deploymentId"), "missing"))?;
                let deployment_id = DeploymentId::parse(&deployment_id)
                    .map_err(|e| manifest_err(at("deploymentId"), e.to_string()))?;
                let digest = r
                    .digest
                    .ok_or_else(|| manifest_err(at("digest"), "missing"))?;
                let digest = Digest::parse(&digest)
                    .map_err(|e| manifest_err(at("digest"), e.to_string()))?;
                let url = r
                    .url
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| manifest_err(at("url"), "missing"))?;
                Ok(DeploymentRef {
                    deployment_id,
                    digest,
                    url,
                })
            })
            .collect::<Result<Vec<_>, ManifestError>>()?;
        let mut ids = std::collections::BTreeSet::new();
        for d in &deployments {
            if !ids.insert(&d.deployment_id) {
                return Err(manifest_err(
                    "deployments",
                    format!("deployment {} is listed twice", d.deployment_id),
                ));
            }
        }
        let bundle = match raw.bundle {
            None => {
                return Err(manifest_err(
                    "bundle",
                    "missing; it must be present (null when there are no deployments)",
                ))
            }
            Some(None) => None,
            Some(Some(r)) => {
                let media_type = r
                    .media_type
                    .ok_or_else(|| manifest_err("bundle.mediaType", "missing"))?;
                if media_type != BUNDLE_MEDIA_TYPE {
                    return Err(manifest_err(
                        "bundle.mediaType",
                        format!("{media_type:?} is not {BUNDLE_MEDIA_TYPE}"),
                    ));
                }
                let digest = r
                    .digest
                    .ok_or_else(|| manifest_err("bundle.digest", "missing"))?;
                let digest = Digest::parse(&digest)
                    .map_err(|e| manifest_err("bundle.digest", e.to_string()))?;
                let url = r
                    .url
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| manifest_err("bundle.url", "missing"))?;
                Some(BundleRef {
                    media_type,
                    digest,
                    url,
                })
            }
        };
        match (&bundle, deployments.is_empty()) {
            (None, false) => {
                return Err(manifest_err(
                    "bundle",
                    "null although the manifest lists deployments",
                ))
            }
            (Some(_), true) => {
                return Err(manifest_err(
                    "bundle",
                    "present although the manifest lists no deployments",
                ))
            }
            _ => {}
        }
        Ok(Self {
            version,
            bundle,
            deployments,
        })
    }
}

/// RFC 9457 problem details, as far as a client acts on them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub title: Option<String>,
    pub status: Option<u16>,
    pub detail: Option<String>,
    pub retryable: Option<bool>,
    pub retry_after_seconds: Option<u64>,
}

impl Problem {
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// The name of a Margo problem type (`gateway-not-found`), if `type` is one: the
    /// fragment of the rc.3 registry URI (or its older `margo-management-interface`
    /// copy), or the last segment of the RFC 9421-era `.../specification/problems/NAME`
    /// and the SUP drafts' `https://margo.org/problems/NAME`.
    pub fn margo_type(&self) -> Option<&str> {
        let kind = self.kind.as_deref()?;
        for namespace in [
            "https://docs.margo.org/specification/problem-types#",
            "https://docs.margo.org/specification/margo-management-interface/problem-types#",
            "https://docs.margo.org/specification/problems/",
            "https://margo.org/problems/",
            "https://margo.org/docs/errors/",
        ] {
            if let Some(name) = kind.strip_prefix(namespace) {
                return is_problem_name(name).then_some(name);
            }
        }
        None
    }

    /// What the problem means for the client, keyed on `type` as Margo requires; only
    /// a body without a known type falls back to the HTTP status.
    pub fn class(&self, status: u16) -> ProblemClass {
        match self.margo_type() {
            Some(
                "not-authorized"
                | "wfm-client-relationship-retired"
                | "signature-verification-failed"
                | "certificate-not-trusted"
                | "invalid-client"
                | "invalid-certificate-format",
            ) => ProblemClass::Unauthorized,
            Some("gateway-not-found") => ProblemClass::GatewayNotFound,
            Some("semantic-error" | "invalid-request" | "invalid-digest-header") => {
                ProblemClass::Invalid
            }
            Some(
                "device-not-found"
                | "invalid-bundle"
                | "deployment-not-found"
                | "server-cannot-generate-response",
            ) => ProblemClass::NotFound,
            _ => match status {
                401 | 403 => ProblemClass::Unauthorized,
                400 | 422 => ProblemClass::Invalid,
                404 | 406 | 410 => ProblemClass::NotFound,
                _ => ProblemClass::Other,
            },
        }
    }
}

/// How the client treats a refused request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemClass {
    /// Authentication or authorisation: the whole sync stops until it changes.
    Unauthorized,
    /// A child device reported before (or without) its gateway.
    GatewayNotFound,
    /// The WFM refuses this body (schema, rules).
    Invalid,
    /// The resource is not there.
    NotFound,
    /// Anything else (server errors, throttling, unknown types).
    Other,
}

/// `DeploymentStatusManifest`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub deployment_id: DeploymentId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub adopted_manifest_version: ManifestVersion,
    pub status: StatusBody,
    pub components: Vec<ComponentReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusBody {
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentReport {
    pub name: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    pub code: String,
    pub source: String,
    pub message: String,
}

/// Margo's problem type names are kebab-case words (`gateway-not-found`). Anything else
/// after a known namespace (a second `#`, a path, spaces) is not a Margo type, so the
/// body is classified by its HTTP status like any unknown type.
fn is_problem_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(d.matches(b"abc") && !d.matches(b"abd"));
        assert!(matches!(
            Digest::parse("sha512:00"),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            Digest::parse("sha256:ABC"),
            Err(DigestError::Malformed(_))
        ));
        assert!(Digest::parse(d.as_str()).is_ok());
    }

    #[test]
    fn spec_example_manifests_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/margo/examples/");
        let body = std::fs::read(format!("{dir}state-manifest.json")).unwrap();
        let m = StateManifest::parse(&body).unwrap();
        assert_eq!(m.version.get(), 43);
        assert_eq!(m.deployments.len(), 3);
        let empty = std::fs::read(format!("{dir}state-manifest-empty.json")).unwrap();
        let empty = StateManifest::parse(&empty).unwrap();
        assert!(empty.bundle.is_none() && empty.deployments.is_empty());
    }

    #[test]
    fn manifest_rules() {
        let d = Digest::of(b"x");
        let ok = format!(
            r#"{{"manifestVersion": 2, "bundle": {{"mediaType": "{BUNDLE_MEDIA_TYPE}", "digest": "{d}", "url": "/b"}}, "deployments": [{{"deploymentId": "a", "digest": "{d}", "url": "/d", "extra": 1}}], "x": true}}"#
        );
        assert_eq!(
            StateManifest::parse(ok.as_bytes()).unwrap().version.get(),
            2
        );
        let cases = [
            (ok.replace("\"manifestVersion\": 2", "\"manifestVersion\": 2.5"), "manifestVersion"),
            (ok.replace("\"manifestVersion\": 2", "\"manifestVersion\": 0"), "manifestVersion"),
            (ok.replace("\"manifestVersion\": 2,", ""), "manifestVersion"),
            (ok.replace(&format!("{{\"mediaType\": \"{BUNDLE_MEDIA_TYPE}\", \"digest\": \"{d}\", \"url\": \"/b\"}}"), "null"), "bundle"),
            (ok.replace(BUNDLE_MEDIA_TYPE, "application/zip"), "bundle.mediaType"),
            (ok.replace("sha256:", "sha512:"), "digest"),
            (r#"{"manifestVersion": 3, "deployments": []}"#.to_string(), "bundle"),
            // The id becomes a path segment of `deployments/{id}/status`.
            (ok.replace("\"deploymentId\": \"a\"", "\"deploymentId\": \"..\""), "deployments[0].deploymentId"),
            (ok.replace("\"deploymentId\": \"a\"", "\"deploymentId\": \"a/../../x\""), "deployments[0].deploymentId"),
            (ok.replace("\"deploymentId\": \"a\"", "\"deploymentId\": \"a?b\""), "deployments[0].deploymentId"),
        ];
        for (text, field) in cases {
            let err = StateManifest::parse(text.as_bytes()).unwrap_err();
            assert!(
                err.field.starts_with(field) || err.field.contains(field),
                "{text}: {err}"
            );
        }
        let empty = r#"{"manifestVersion": 3, "bundle": null, "deployments": []}"#;
        assert!(StateManifest::parse(empty.as_bytes())
            .unwrap()
            .bundle
            .is_none());
    }
}

#[cfg(test)]
mod problem_tests {
    use super::*;

    fn problem(kind: &str) -> Problem {
        Problem {
            kind: Some(kind.into()),
            ..Default::default()
        }
    }

    /// Margo: clients key on `type`, not on the status code.
    #[test]
    fn class_follows_the_type_not_the_status() {
        let p = problem("https://docs.margo.org/specification/problem-types#gateway-not-found");
        assert_eq!(p.class(404), ProblemClass::GatewayNotFound);
        // A registry type wins over a status that would say otherwise.
        let p = problem("https://docs.margo.org/specification/problem-types#not-authorized");
        assert_eq!(p.class(400), ProblemClass::Unauthorized);
        let p =
            problem("https://docs.margo.org/specification/problems/signature-verification-failed");
        assert_eq!(p.class(401), ProblemClass::Unauthorized);
        let p = problem("https://margo.org/problems/semantic-error");
        assert_eq!(p.class(422), ProblemClass::Invalid);
        // A 404 of a router that knows no Margo type is not a missing gateway.
        assert_eq!(problem("about:blank").class(404), ProblemClass::NotFound);
        assert_eq!(Problem::default().class(403), ProblemClass::Unauthorized);
        assert_eq!(Problem::default().class(500), ProblemClass::Other);
        // Vendor types under another domain are not Margo's.
        let p = problem("https://vendor.example/problems#gateway-not-found");
        assert_eq!(p.margo_type(), None);
        // Found by the wfm_response fuzz target: a known namespace followed by more than
        // a name (a second '#', spaces, a path) is no Margo type.
        for kind in [
            "https://docs.margo.org/specification/problem-types#gateway-not-found#x",
            "https://docs.margo.org/specification/problem-types#no gateway was found",
            "https://margo.org/problems/semantic-error/extra",
            "https://docs.margo.org/specification/problem-types#",
        ] {
            assert_eq!(problem(kind).margo_type(), None, "{kind}");
            assert_eq!(problem(kind).class(404), ProblemClass::NotFound, "{kind}");
        }
    }
}
