//! Spec concepts as values that can only be valid, shared by every room (a leaf: it
//! imports nothing of the crate). The string forms stay at the edges: files, wire
//! documents and names on disk are parsed here once.

use sha2::{Digest as _, Sha256};
use std::fmt;

/// A `sha256:<64 lowercase hex>` digest over exact bytes (OCI, Margo and our own
/// stores all use this form).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} uses an unsupported algorithm; only sha256 is allowed")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} is malformed; expected sha256: followed by 64 lowercase hex characters")]
    Malformed(String),
}

impl Digest {
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(DigestError::Malformed(text.into()));
        };
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(text.into()));
        }
        if !is_sha256_hex(hex) {
            return Err(DigestError::Malformed(text.into()));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", sha256_of(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, for file names.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn matches(&self, bytes: &[u8]) -> bool {
        Self::of(bytes) == *self
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifiers of devices, partitions and deployments: Margo `deviceId` segments are
/// RFC 3986 unreserved characters, at most 128 of them. `.` and `..` are unreserved too
/// but are refused: these ids become URL path segments and folder names, where a dot
/// segment would climb.
pub fn is_valid_id_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// Why a text is not an id segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {text:?}: expected letters, digits, '.', '_', '~' or '-' (1 to 128 characters, not '.' or '..')")]
pub struct IdError {
    what: &'static str,
    text: String,
}

/// Whether `s` is a Margo `deviceId`: one or more id segments joined by `/`.
pub fn is_valid_device_id(s: &str) -> bool {
    !s.is_empty() && s.split('/').all(is_valid_id_segment)
}

/// Newtypes over a string `$valid` accepts: parsed once at the edge (a file, a
/// document), then used as `&str` wherever a name is needed.
macro_rules! checked_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $valid:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, IdError> {
                if $valid(text) {
                    Ok(Self(text.to_owned()))
                } else {
                    Err(IdError {
                        what: $what,
                        text: text.chars().take(140).collect(),
                    })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

checked_id!(
    /// A sandbox partition's id: the second segment of its `DEVICE/PARTITION` device id
    /// and the name of its folder under the state directory.
    PartitionId,
    "partition id",
    is_valid_id_segment
);

/// One segment, so joining it to a directory never climbs or nests.
impl AsRef<std::path::Path> for PartitionId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

checked_id!(
    /// A Margo `deviceId`: one or more id segments joined by `/` (`edge-01`, or a
    /// see-thru partition `edge-01/apps`).
    DeviceId,
    "device id",
    is_valid_device_id
);

impl DeviceId {
    /// The id of `partition` under this device: `DEVICE/PARTITION`.
    pub fn child(&self, partition: &PartitionId) -> Self {
        Self(format!("{}/{partition}", self.0))
    }

    /// Whether this is a single segment (a host, not a partition of one).
    pub fn is_host(&self) -> bool {
        !self.0.contains('/')
    }
}

checked_id!(
    /// A Margo `deploymentId` as a state manifest lists it: one id segment, so that it
    /// is safe in the `deployments/{deploymentId}/...` paths and as a record name. The
    /// spec says UUID and an ApplicationDeployment's own `id` must be one
    /// (`deploy::model`); the manifest's is taken more liberally because conformance
    /// harnesses name deployments `another-deployment`, and such an entry then fails
    /// alone when its YAML's `id` does not match.
    DeploymentId,
    "deployment id",
    is_valid_id_segment
);

/// Margo `manifestVersion`: a received manifest's is 1 ..= 2^64-1 and must grow with
/// every manifest the device accepts. [`ManifestVersion::NONE`] is the device's own
/// "nothing accepted yet", never a manifest's.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct ManifestVersion(u64);

impl ManifestVersion {
    pub const NONE: Self = Self(0);

    /// The version of a received manifest: `None` for 0, which no manifest may carry.
    pub fn of_manifest(version: u64) -> Option<Self> {
        (version >= 1).then_some(Self(version))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    pub fn is_none(self) -> bool {
        self == Self::NONE
    }
}

impl fmt::Display for ManifestVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether `s` is the hex part of a sha256 digest: 64 lowercase hex characters (the only
/// spelling our stores write, so the only one a file name may have).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `sha256:<hex>` -> `<hex>` when it is a well-formed sha256 digest.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| is_sha256_hex(hex))
}

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_of(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(bytes.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_versions_start_at_one_and_order_as_numbers() {
        assert_eq!(ManifestVersion::of_manifest(0), None);
        let one = ManifestVersion::of_manifest(1).unwrap();
        let max = ManifestVersion::of_manifest(u64::MAX).unwrap();
        assert!(ManifestVersion::NONE < one && one < max);
        assert!(ManifestVersion::NONE.is_none() && !one.is_none());
        assert_eq!(max.to_string(), u64::MAX.to_string());
        // On disk and on the wire: the bare number, as before the type.
        assert_eq!(serde_json::to_string(&max).unwrap(), u64::MAX.to_string());
        let read: ManifestVersion = serde_json::from_str("42").unwrap();
        assert_eq!(read.get(), 42);
    }

    #[test]
    fn digests_parse_only_in_the_canonical_form() {
        let hex = sha256_of(b"x");
        let text = format!("sha256:{hex}");
        assert_eq!(Digest::parse(&text).unwrap().hex(), hex);
        assert_eq!(Digest::of(b"x").as_str(), text);
        assert!(Digest::of(b"x").matches(b"x"));
        assert!(!Digest::of(b"x").matches(b"y"));
        assert_eq!(sha256_hex(&text), Some(hex.as_str()));
        assert!(matches!(
            Digest::parse(&format!("sha512:{hex}")),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        for bad in [
            hex.clone(),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{hex}0"),
            format!("sha256:{}g", &hex[1..]),
            "sha256:".into(),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
            assert_eq!(sha256_hex(&bad), None, "{bad}");
        }
        assert!(!is_sha256_hex(&format!("{}\u{e9}", &hex[2..])));
    }

    #[test]
    fn ids_hold_only_valid_segments() {
        let id = PartitionId::parse("apps-1.a_b~c").unwrap();
        assert_eq!(id, "apps-1.a_b~c");
        assert_eq!(id.to_string(), "apps-1.a_b~c");
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a\nb",
            "caf\u{e9}",
            &"a".repeat(129),
        ] {
            let err = PartitionId::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("partition id "), "{err}");
            assert!(DeploymentId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(PartitionId::parse("...").is_ok() && PartitionId::parse(".a").is_ok());
        let uuid = "3f0c6d52-1b7e-4a39-9d2a-8e5b7c4a1f01";
        assert_eq!(DeploymentId::parse(uuid).unwrap(), uuid);
        assert_eq!(
            DeploymentId::parse("another-deployment").unwrap().as_str(),
            "another-deployment"
        );
        let parsed: PartitionId = serde_json::from_str("\"p1\"").unwrap();
        assert_eq!(parsed.as_str(), "p1");
        assert!(serde_json::from_str::<PartitionId>("\"../etc\"").is_err());
    }

    #[test]
    fn device_ids_are_segments_joined_by_slashes() {
        let host = DeviceId::parse("edge-01").unwrap();
        assert!(host.is_host());
        let child = host.child(&PartitionId::parse("apps").unwrap());
        assert_eq!(child, "edge-01/apps");
        assert!(!child.is_host());
        assert_eq!(DeviceId::parse("edge-01/apps").unwrap(), child);
        for bad in ["", "/", "a/", "/a", "a//b", "a/b c", "a/*", "a/..", "./a"] {
            let err = DeviceId::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("device id "), "{bad:?}: {err}");
        }
    }
}
