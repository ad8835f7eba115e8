//! Deployment bundles: a gzip'd tar of ApplicationDeployment YAMLs. Members are matched
//! to manifest entries by digest, never by name, and the archive is read defensively:
//! regular files at the root only, no links, no traversal, no duplicates, bounded sizes.

use super::types::Digest;
use std::collections::BTreeMap;
use std::io::Read;

/// Most bytes one YAML member may have.
pub const MAX_MEMBER_BYTES: u64 = 1 << 20;
/// Most members a bundle may have.
pub const MAX_MEMBERS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is not a valid gzip'd tar archive: {0}")]
    Archive(String),
    #[error(
        "bundle member {0:?} is not a regular file (links, devices and directories are refused)"
    )]
    NotAFile(String),
    #[error("bundle member {0:?} has an unsafe path (absolute, `..` or nested)")]
    UnsafePath(String),
    #[error("bundle member {0:?} appears twice")]
    Duplicate(String),
    #[error("bundle member {name:?} is larger than {MAX_MEMBER_BYTES} bytes")]
    TooLarge { name: String },
    #[error("bundle has more than {MAX_MEMBERS} members")]
    TooManyMembers,
    #[error("bundle expands to more than {limit} bytes")]
    Expansion { limit: u64 },
}

fn safe_root_name(path: &str) -> bool {
    let trimmed = path.strip_prefix("./").unwrap_or(path);
    !trimmed.is_empty()
        && !trimmed.starts_with('/')
        && !trimmed.contains('/')
        && !trimmed.contains('\\')
        && trimmed != "."
        && trimmed != ".."
}

/// Counts the bytes decompressed so far, to tell a truncated archive from one that
/// expands past the limit.
struct Counted<R> {
    inner: R,
    seen: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.set(self.seen.get() + n as u64);
        Ok(n)
    }
}

/// Reads every member of the bundle, keyed by the digest of its bytes.
/// `max_expanded` bounds the total uncompressed size (a gzip bomb guard).
pub fn read_members(
    archive: &[u8],
    max_expanded: u64,
) -> Result<BTreeMap<Digest, Vec<u8>>, BundleError> {
    let seen = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let gz = Counted {
        inner: flate2::read::GzDecoder::new(archive).take(max_expanded + 1),
        seen: seen.clone(),
    };
    let mut tar = tar::Archive::new(gz);
    let archive_err = |e: std::io::Error| {
        if seen.get() > max_expanded {
            BundleError::Expansion {
                limit: max_expanded,
            }
        } else {
            BundleError::Archive(e.to_string())
        }
    };
    let mut members = BTreeMap::new();
    let mut names = std::collections::BTreeSet::new();
    let mut total = 0u64;
    let entries = tar.entries().map_err(archive_err)?;
    for entry in entries {
        let mut entry = entry.map_err(archive_err)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() && safe_root_name(name.trim_end_matches('/')) || name == "./" {
            continue;
        }
        if !kind.is_file() {
            return Err(BundleError::NotAFile(name));
        }
        if !safe_root_name(&name) {
            return Err(BundleError::UnsafePath(name));
        }
        let normalized = name.strip_prefix("./").unwrap_or(&name).to_owned();
        if !names.insert(normalized) {
            return Err(BundleError::Duplicate(name));
        }
        if members.len() >= MAX_MEMBERS {
            return Err(BundleError::TooManyMembers);
        }
        // The entry's size, not the header's: a PAX `size` record overrides the latter.
        let size = entry.size();
        if size > MAX_MEMBER_BYTES {
            return Err(BundleError::TooLarge { name });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry
            .by_ref()
            .take(MAX_MEMBER_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(archive_err)?;
        if bytes.len() as u64 > MAX_MEMBER_BYTES {
            return Err(BundleError::TooLarge { name });
        }
        total += bytes.len() as u64;
        if total > max_expanded {
            return Err(BundleError::Expansion {
                limit: max_expanded,
            });
        }
        let digest = Digest::of(&bytes);
        if members.insert(digest, bytes).is_some() {
            return Err(BundleError::Duplicate(name));
        }
    }
    Ok(members)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a tar.gz from `(name, type, bytes)`.
    pub fn archive(members: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (name, kind, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(bytes.len() as u64);
            header.set_mode(0o600);
            // `set_path` refuses `..`; write the raw name as a hostile archive would.
            let raw = header.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            builder.append(&header, *bytes).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn reads_members_by_digest() {
        let a = archive(&[
            ("a.yaml", tar::EntryType::Regular, b"one"),
            ("./b.yaml", tar::EntryType::Regular, b"two"),
        ]);
        let members = read_members(&a, 1 << 20).unwrap();
        assert_eq!(members.get(&Digest::of(b"one")).unwrap(), b"one");
        assert_eq!(members.len(), 2);
    }

    #[test]
    fn refuses_hostile_archives() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                archive(&[("../evil.yaml", tar::EntryType::Regular, b"x")]),
                "unsafe path",
            ),
            (
                archive(&[("/etc/x.yaml", tar::EntryType::Regular, b"x")]),
                "unsafe path",
            ),
            (
                archive(&[("d/x.yaml", tar::EntryType::Regular, b"x")]),
                "unsafe path",
            ),
            (
                archive(&[("l.yaml", tar::EntryType::Symlink, b"")]),
                "not a regular file",
            ),
            (
                archive(&[
                    ("a.yaml", tar::EntryType::Regular, b"x"),
                    ("a.yaml", tar::EntryType::Regular, b"y"),
                ]),
                "twice",
            ),
            (
                archive(&[
                    ("a.yaml", tar::EntryType::Regular, b"x"),
                    ("b.yaml", tar::EntryType::Regular, b"x"),
                ]),
                "twice",
            ),
            (b"not gzip".to_vec(), "not a valid"),
        ];
        for (bytes, needle) in cases {
            let err = read_members(&bytes, 1 << 20).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        let big = vec![b'a'; 2000];
        let err =
            read_members(&archive(&[("a.yaml", tar::EntryType::Regular, &big)]), 1000).unwrap_err();
        assert!(matches!(err, BundleError::Expansion { .. }), "{err}");
    }

    #[test]
    fn pax_size_cannot_exceed_the_member_limit() {
        // The header says 1 byte; a PAX `size` record says MAX_MEMBER_BYTES + 512.
        let size = MAX_MEMBER_BYTES + 512;
        let body = format!("size={size}\n");
        let record = format!("{} {body}", body.len() + 3);
        assert_eq!(record.len(), body.len() + 3);
        let mut builder = tar::Builder::new(Vec::new());
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_path("pax").unwrap();
        pax.set_size(record.len() as u64);
        pax.set_cksum();
        builder.append(&pax, record.as_bytes()).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("a.yaml").unwrap();
        header.set_size(1);
        header.set_cksum();
        use std::io::Write;
        let raw = builder.get_mut();
        raw.write_all(header.as_bytes()).unwrap();
        raw.write_all(&vec![b'a'; size as usize]).unwrap();
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let err = read_members(&gz.finish().unwrap(), 16 << 20).unwrap_err();
        assert!(matches!(err, BundleError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn spec_example_bundle() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/margo/examples/bundle.tar.gz"
        );
        let members = read_members(&std::fs::read(path).unwrap(), 1 << 20).unwrap();
        assert_eq!(members.len(), 3);
    }
}
