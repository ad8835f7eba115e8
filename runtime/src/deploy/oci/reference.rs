//! Component references: Margo's `oci://registry/repository` plus revision, parsed and
//! checked up front so a bad one is a configuration error before any request.

use super::error::{OciError, OciErrorKind};
use crate::types::sha256_hex;
use oci_client::Reference;

/// A component reference: `oci://registry/repository` + revision (the tag).
#[derive(Debug, Clone)]
pub struct ComponentRef {
    /// For messages: `oci://registry/repository:tag[@digest]`.
    pub display: String,
    pub reference: Reference,
}

impl ComponentRef {
    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    pub(super) fn error(&self, kind: OciErrorKind, message: impl Into<String>) -> OciError {
        OciError {
            kind,
            reference: self.display.clone(),
            message: message.into(),
        }
    }
}

/// Parses `oci://registry/repository[:tag][@sha256:...]` with Margo's `revision`.
pub fn parse_reference(repository: &str, revision: Option<&str>) -> Result<ComponentRef, OciError> {
    let config_err = |message: String| OciError {
        kind: OciErrorKind::Config,
        reference: repository.to_owned(),
        message,
    };
    let rest = repository
        .strip_prefix("oci://")
        .ok_or_else(|| config_err("expected an oci:// reference".into()))?;
    let (name, digest) = match rest.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (rest, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let (name, tag_in_name) = match last.split_once(':') {
        Some((_, tag)) if name.contains('/') => (&name[..name.len() - tag.len() - 1], Some(tag)),
        _ => (name, None),
    };
    if !name.contains('/') {
        return Err(config_err(
            "expected oci://REGISTRY/REPOSITORY (e.g. oci://registry.example.com/apps/hello)"
                .into(),
        ));
    }
    if let Some(revision) = revision {
        if revision.contains('+') {
            return Err(config_err(format!(
                "revision {revision:?}: OCI tags cannot contain '+'; Margo writes SemVer build metadata with '_' (e.g. 1.0.0_build.1)"
            )));
        }
    }
    let tag = match (tag_in_name, revision) {
        (Some(a), Some(b)) if a != b => {
            return Err(config_err(format!(
                "the repository names tag {a:?} but revision is {b:?}; put the tag in revision only"
            )))
        }
        (Some(tag), _) | (None, Some(tag)) => Some(tag),
        (None, None) => None,
    };
    if tag.is_none() && digest.is_none() {
        return Err(config_err(
            "no revision: set properties.revision to the tag to pull".into(),
        ));
    }
    let mut text = name.to_owned();
    if let Some(tag) = tag {
        text.push(':');
        text.push_str(tag);
    }
    if let Some(digest) = digest {
        if sha256_hex(digest).is_none() {
            return Err(config_err(format!(
                "{digest:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)"
            )));
        }
        text.push('@');
        text.push_str(digest);
    }
    let reference = Reference::try_from(text.as_str()).map_err(|e| {
        config_err(format!(
            "not a valid OCI reference {text:?}: {e} (lowercase repository, tags of letters, digits, '_', '.', '-')"
        ))
    })?;
    Ok(ComponentRef {
        display: format!("oci://{text}"),
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r =
            parse_reference("oci://127.0.0.1:5000/examples/hello", Some("1.0.0_build.1")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.reference.repository(), "examples/hello");
        assert_eq!(r.reference.tag(), Some("1.0.0_build.1"));
        assert_eq!(
            r.display,
            "oci://127.0.0.1:5000/examples/hello:1.0.0_build.1"
        );

        let digest = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(
            &format!("oci://reg.example.com/a/b@{digest}"),
            Some("2.0.0"),
        )
        .unwrap();
        assert_eq!(r.reference.digest(), Some(digest.as_str()));
        assert_eq!(r.reference.tag(), Some("2.0.0"));

        let r = parse_reference("oci://localhost:5000/hello:0.1.0", None).unwrap();
        assert_eq!(r.reference.tag(), Some("0.1.0"));

        for (repository, revision, needle) in [
            ("oci://r.io/x", Some("1.0.0+build"), "'_'"),
            ("oci://r.io/x", None, "no revision"),
            ("oci://r.io/x:1", Some("2"), "revision only"),
            ("oci://hello", Some("1"), "REGISTRY/REPOSITORY"),
            ("oci://r.io/Upper", Some("1"), "lowercase"),
            ("oci://r.io/x@sha256:zz", Some("1"), "sha256 digest"),
            ("https://r.io/x", Some("1"), "oci://"),
        ] {
            let err = parse_reference(repository, revision).unwrap_err();
            assert_eq!(err.kind, OciErrorKind::Config, "{repository}");
            assert!(err.to_string().contains(needle), "{repository}: {err}");
        }
    }
}
