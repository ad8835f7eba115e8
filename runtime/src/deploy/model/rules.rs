//! Which strings are valid ids, names and routes: shared by validation and by
//! [`Outline`](super::Outline), which must keep only what validation would accept.

use crate::types::DeploymentId;

/// An ApplicationDeployment's `id`: the spec's UUID, in either case of hex.
pub(super) fn deployment_uuid(s: &str) -> Option<DeploymentId> {
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

pub(super) const DNS_LABEL_RULE: &str = "expected 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit (a Kubernetes DNS-1123 label)";

/// `spec.applicationId`, as Margo's schema has it: `^[-a-z0-9]{1,200}$`.
pub(super) fn is_application_id(s: &str) -> bool {
    (1..=200).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An HTTP route prefix: `/` then URL path characters (RFC 3986 `pchar` and `/`), at
/// most 1024 bytes. Routes are printed and reported, so no spaces, quotes or controls.
pub(super) fn is_route(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 1024
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%/".contains(&b))
}

pub(super) fn is_component_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn device_ids() {
        for ok in ["edge-01", "edge-01/apps", "edge-01/*", "gw/child/x"] {
            assert!(is_valid_device_id(ok), "{ok}");
        }
        for bad in ["", "/x", "a//b", "a/*/b", "a b", "*"] {
            assert!(!is_valid_device_id(bad), "{bad}");
        }
    }
}
