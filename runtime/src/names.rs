//! Host names as the listeners, the config and deployment triggers see them: one rule for
//! what is a valid name and one for when two names are the same host.

/// A host name as `Host` carries it: dot-separated labels of 1 to 63 letters, digits or
/// `-` (not at either end), 253 characters at most, one trailing dot allowed.
pub fn is_dns_name(name: &str) -> bool {
    let name = without_root(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `name` with the root's trailing dot dropped: `example.org.` and `example.org` are the
/// same host (RFC 1034 section 3.1), and clients send either.
pub fn without_root(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// The form routes store and compare: lower case, no trailing dot.
pub fn canonical_host(name: &str) -> String {
    without_root(name).to_ascii_lowercase()
}

/// Whether two host names name the same host (case and a trailing dot do not count).
pub fn same_host(a: &str, b: &str) -> bool {
    without_root(a).eq_ignore_ascii_case(without_root(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for good in [
            "a",
            "edge-01",
            "device.example.org",
            "example.org.",
            "x1.y2",
        ] {
            assert!(is_dns_name(good), "{good}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63).as_str(); 5].join(".");
        for bad in [
            "",
            ".",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            "a:80",
            "*.example.org",
            "a\"b",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(!is_dns_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn hosts_compare_without_case_or_root() {
        assert!(same_host("Example.ORG.", "example.org"));
        assert!(!same_host("example.org", "example.com"));
        assert_eq!(canonical_host("API.Example.org."), "api.example.org");
    }
}
