//! Which manifests are Wasm components: the accepted media types and layouts, and the
//! pick of the one component layer (digest, size within the limit) out of a manifest.

use super::error::OciErrorKind;
use crate::types::sha256_hex;
use serde::Deserialize;

/// Layer media type of a Wasm component (CNCF Wasm OCI artifact layout).
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Config media type of the CNCF Wasm OCI artifact layout.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type written by the older `wasm-to-oci` tool.
const LEGACY_WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_MANIFEST,
    OCI_ARTIFACT_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_LIST,
];

/// The component layer a manifest describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLayer {
    /// `sha256:<hex>` of the manifest.
    pub manifest: String,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    media_type: Option<String>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    /// The draft OCI artifact manifest lists `blobs` instead of `layers`.
    #[serde(default)]
    blobs: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: i64,
}

fn is_wasm_layer(media_type: &str) -> bool {
    media_type == WASM_LAYER_MEDIA_TYPE || media_type == LEGACY_WASM_LAYER_MEDIA_TYPE
}

/// Picks the component layer out of a manifest's bytes.
pub(crate) fn component_layer(
    body: &[u8],
    max_size: u64,
) -> Result<(String, u64), (OciErrorKind, String)> {
    let manifest: RawManifest = serde_json::from_slice(body).map_err(|e| {
        (
            OciErrorKind::Protocol,
            format!("the manifest is not valid JSON: {e}"),
        )
    })?;
    let media_type = manifest.media_type.as_deref().unwrap_or(OCI_MANIFEST);
    if media_type == OCI_INDEX || media_type == DOCKER_LIST || !manifest.manifests.is_empty() {
        return Err((
            OciErrorKind::MediaType,
            "is an image index (multi-platform image), not a Wasm component artifact".into(),
        ));
    }
    let layers = if manifest.layers.is_empty() {
        manifest.blobs
    } else {
        manifest.layers
    };
    let layer = match layers.as_slice() {
        [] => {
            return Err((
                OciErrorKind::MediaType,
                "the manifest has no layers; expected one application/wasm layer".into(),
            ))
        }
        [one] => one,
        many => {
            let types: Vec<&str> = many.iter().map(|l| l.media_type.as_str()).collect();
            return Err((
                OciErrorKind::MediaType,
                format!(
                    "the manifest has {} layers ({}); a Wasm component artifact has exactly one application/wasm layer",
                    many.len(),
                    types.join(", ")
                ),
            ));
        }
    };
    if !is_wasm_layer(&layer.media_type) {
        return Err((
            OciErrorKind::MediaType,
            format!(
                "layer media type {:?} is not a WebAssembly component; expected {WASM_LAYER_MEDIA_TYPE} (is this a container image?)",
                layer.media_type
            ),
        ));
    }
    if sha256_hex(&layer.digest).is_none() {
        return Err((
            OciErrorKind::Digest,
            format!(
                "layer digest {:?} is not a sha256 digest; only sha256 is supported",
                layer.digest
            ),
        ));
    }
    let size = u64::try_from(layer.size).map_err(|_| {
        (
            OciErrorKind::Protocol,
            format!("layer size {} is negative", layer.size),
        )
    })?;
    if size > max_size {
        return Err((
            OciErrorKind::TooLarge,
            format!(
                "the component layer is {} bytes; the limit (artifacts.max-component-size) is {max_size}",
                size
            ),
        ));
    }
    Ok((layer.digest.clone(), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(config: &str, layers: &[(&str, i64)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(media_type, size)| {
                serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{}", "b".repeat(64)), "size": size})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config, "digest": format!("sha256:{}", "c".repeat(64)), "size": 2},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn manifests() {
        let ok = component_layer(
            &manifest(WASM_CONFIG_MEDIA_TYPE, &[("application/wasm", 10)]),
            100,
        )
        .unwrap();
        assert_eq!(ok.1, 10);
        // Generic artifact: empty config, artifactType.
        assert!(component_layer(
            &manifest(
                "application/vnd.oci.empty.v1+json",
                &[("application/wasm", 10)]
            ),
            100
        )
        .is_ok());
        // The draft artifact manifest with blobs.
        let draft = serde_json::json!({
            "mediaType": OCI_ARTIFACT_MANIFEST,
            "artifactType": "application/wasm",
            "blobs": [{"mediaType": "application/wasm", "digest": format!("sha256:{}", "d".repeat(64)), "size": 5}],
        });
        assert_eq!(
            component_layer(&serde_json::to_vec(&draft).unwrap(), 100)
                .unwrap()
                .1,
            5
        );
        let cases: [(Vec<u8>, OciErrorKind, &str); 5] = [
            (
                manifest(
                    "application/vnd.oci.image.config.v1+json",
                    &[("application/vnd.oci.image.layer.v1.tar+gzip", 10)],
                ),
                OciErrorKind::MediaType,
                "container image",
            ),
            (
                manifest(WASM_CONFIG_MEDIA_TYPE, &[]),
                OciErrorKind::MediaType,
                "no layers",
            ),
            (
                manifest(
                    WASM_CONFIG_MEDIA_TYPE,
                    &[("application/wasm", 1), ("application/wasm", 1)],
                ),
                OciErrorKind::MediaType,
                "exactly one",
            ),
            (
                manifest(WASM_CONFIG_MEDIA_TYPE, &[("application/wasm", 1000)]),
                OciErrorKind::TooLarge,
                "max-component-size",
            ),
            (
                serde_json::to_vec(&serde_json::json!({"mediaType": OCI_INDEX, "manifests": [{}]}))
                    .unwrap(),
                OciErrorKind::MediaType,
                "index",
            ),
        ];
        for (body, kind, needle) in cases {
            let (got, message) = component_layer(&body, 100).unwrap_err();
            assert_eq!(got, kind, "{message}");
            assert!(message.contains(needle), "{message}");
        }
    }
}
