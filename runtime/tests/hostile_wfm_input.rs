//! Hostile documents from a WFM (or anyone who can impersonate one), against the parse
//! side of the library: bundles (gzip'd tar), deployment YAML and state manifests.
//! Every case must be refused (or handled) within the time and memory bound it states.
//!
//! Memory is the growth of this process's peak RSS (VmHWM, reset through
//! `/proc/self/clear_refs`) over the RSS before the case; the cases run one at a time
//! (a lock) so that one case's allocations are not charged to another.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tar::{EntryType, Header};
use wasmgate::deploy::model::Deployment;
use wasmgate::margo::bundle::{read_members, BundleError, MAX_MEMBERS, MAX_MEMBER_BYTES};
use wasmgate::margo::settings::DEFAULT_MAX_BUNDLE;
use wasmgate::margo::types::{Digest, StateManifest, BUNDLE_MEDIA_TYPE};

const MIB: u64 = 1 << 20;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"));
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// Runs `f` and asserts it took at most `time` and grew the peak RSS by at most
/// `memory` bytes. Inputs are built before, outside the measurement.
fn bounded<T>(what: &str, time: Duration, memory: u64, f: impl FnOnce() -> T) -> T {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // "5" resets VmHWM to the current RSS (Linux >= 4.0).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    let grown = status_kib("VmHWM:").saturating_sub(before) * 1024;
    eprintln!("{what}: {took:?}, peak RSS +{} KiB", grown / 1024);
    assert!(took <= time, "{what}: took {took:?}, bound {time:?}");
    assert!(
        grown <= memory,
        "{what}: peak RSS grew {} KiB, bound {} KiB",
        grown / 1024,
        memory / 1024
    );
    out
}

/// One tar member as a hostile archive writes it: any type, raw name bytes (the tar
/// crate's `set_path` refuses `..`), data of `size` bytes from `data`.
struct Member<'a> {
    name: &'a [u8],
    kind: EntryType,
    size: u64,
    data: Box<dyn Read + 'a>,
}

fn member<'a>(name: &'a str, kind: EntryType, bytes: &'a [u8]) -> Member<'a> {
    Member {
        name: name.as_bytes(),
        kind,
        size: bytes.len() as u64,
        data: Box::new(bytes),
    }
}

fn zeros<'a>(name: &'a str, kind: EntryType, size: u64) -> Member<'a> {
    Member {
        name: name.as_bytes(),
        kind,
        size,
        data: Box::new(std::io::repeat(0).take(size)),
    }
}

fn tar_gz<'a>(members: impl IntoIterator<Item = Member<'a>>) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut builder = tar::Builder::new(gz);
    for m in members {
        let mut header = Header::new_gnu();
        header.set_entry_type(m.kind);
        header.set_size(m.size);
        header.set_mode(0o600);
        header.as_old_mut().name[..m.name.len()].copy_from_slice(m.name);
        header.set_cksum();
        builder.append(&header, m.data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// The refusal of `bytes` under the default `max-bundle-size`, within `time` and with
/// at most `memory` bytes of peak RSS growth.
fn refused(what: &str, bytes: &[u8], time: Duration, memory: u64) -> BundleError {
    bounded(what, time, memory, || {
        read_members(bytes, DEFAULT_MAX_BUNDLE).expect_err(what)
    })
}

// Decompressing all of `max-bundle-size` (16 MiB) in a debug build takes well under a
// second; the bounds leave room for two busy cores.
const BOMB_TIME: Duration = Duration::from_secs(10);
/// The members kept so far plus the decoder's buffers: at most the limit, then some.
const BOMB_MEMORY: u64 = DEFAULT_MAX_BUNDLE + 32 * MIB;
const SMALL_TIME: Duration = Duration::from_secs(2);
const SMALL_MEMORY: u64 = 16 * MIB;

#[test]
fn gzip_bomb_of_many_members_is_refused_at_the_expansion_limit() {
    // 40 members of just under 1 MiB of zeros: each within the member limit, 40 MiB in
    // all, a few dozen KiB on the wire.
    // Members differ in their first bytes: equal ones would be refused as duplicates
    // before the limit is reached.
    let names: Vec<String> = (0..40).map(|i| format!("m{i}.yaml")).collect();
    let bomb = tar_gz(names.iter().map(|name| {
        let size = MAX_MEMBER_BYTES - 1024;
        let head = name.as_bytes();
        Member {
            name: head,
            kind: EntryType::Regular,
            size,
            data: Box::new(head.chain(std::io::repeat(0)).take(size)),
        }
    }));
    assert!(bomb.len() < 256 << 10, "bomb is {} bytes", bomb.len());
    let err = refused("many-member bomb", &bomb, BOMB_TIME, BOMB_MEMORY);
    assert!(matches!(err, BundleError::Expansion { .. }), "{err}");
}

#[test]
fn gzip_bombs_in_headers_and_skipped_entries_are_refused_at_the_expansion_limit() {
    // The tar reader buffers GNU long names and PAX extensions whole, whatever their
    // size, and must read past a skipped directory's declared data: only the
    // decompression limit stands between those and memory.
    for (what, name, kind) in [
        ("long-name bomb", "././@LongLink", EntryType::GNULongName),
        ("pax bomb", "pax", EntryType::XHeader),
        ("directory bomb", "d/", EntryType::Directory),
    ] {
        let bomb = tar_gz([
            zeros(name, kind, 48 * MIB),
            member("a.yaml", EntryType::Regular, b"x"),
        ]);
        assert!(bomb.len() < 256 << 10, "{what} is {} bytes", bomb.len());
        let err = refused(what, &bomb, BOMB_TIME, BOMB_MEMORY);
        assert!(
            matches!(err, BundleError::Expansion { .. }),
            "{what}: {err}"
        );
    }
}

#[test]
fn oversized_member_is_refused_before_it_is_read() {
    let big = tar_gz([zeros("a.yaml", EntryType::Regular, 48 * MIB)]);
    let err = refused("oversized member", &big, SMALL_TIME, SMALL_MEMORY);
    assert!(matches!(err, BundleError::TooLarge { .. }), "{err}");
}

#[test]
fn traversal_and_absolute_names_are_refused() {
    for name in [
        "../evil.yaml",
        "./../evil.yaml",
        "..",
        "a/../../evil.yaml",
        "/etc/cron.d/evil",
        "//evil.yaml",
        "d/x.yaml",
        "..\\evil.yaml",
    ] {
        let bytes = tar_gz([member(name, EntryType::Regular, b"x")]);
        let err = refused(name, &bytes, SMALL_TIME, SMALL_MEMORY);
        assert!(matches!(err, BundleError::UnsafePath(_)), "{name:?}: {err}");
    }
}

#[test]
fn links_devices_and_other_special_members_are_refused() {
    for kind in [
        EntryType::Symlink,
        EntryType::Link,
        EntryType::Char,
        EntryType::Block,
        EntryType::Fifo,
        EntryType::Continuous,
        EntryType::GNUSparse,
    ] {
        let bytes = tar_gz([member("a.yaml", kind, b"")]);
        let err = refused(&format!("{kind:?}"), &bytes, SMALL_TIME, SMALL_MEMORY);
        assert!(
            matches!(err, BundleError::NotAFile(_) | BundleError::Archive(_)),
            "{kind:?}: {err}"
        );
    }
    // A link that would be harmless to skip is still refused: members are matched by
    // digest, and a bundle that carries links is not one the WFM meant to send.
    let bytes = tar_gz([
        member("a.yaml", EntryType::Regular, b"x"),
        member("b.yaml", EntryType::Symlink, b""),
    ]);
    let err = refused("trailing symlink", &bytes, SMALL_TIME, SMALL_MEMORY);
    assert!(matches!(err, BundleError::NotAFile(_)), "{err}");
}

#[test]
fn duplicate_members_are_refused() {
    for (a, b, bytes_b) in [
        ("a.yaml", "a.yaml", b"y" as &[u8]),
        ("a.yaml", "./a.yaml", b"y"),
        ("a.yaml", "b.yaml", b"x"),
    ] {
        let bytes = tar_gz([
            member(a, EntryType::Regular, b"x"),
            member(b, EntryType::Regular, bytes_b),
        ]);
        let err = refused(&format!("{a} + {b}"), &bytes, SMALL_TIME, SMALL_MEMORY);
        assert!(matches!(err, BundleError::Duplicate(_)), "{a} + {b}: {err}");
    }
}

#[test]
fn hundred_thousand_members_are_refused_at_the_member_cap() {
    let names: Vec<String> = (0..100_000).map(|i| format!("m{i}.yaml")).collect();
    let contents: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
    let bytes = tar_gz(
        names
            .iter()
            .zip(&contents)
            .map(|(n, c)| member(n, EntryType::Regular, c.as_bytes())),
    );
    // 10,000 members are kept before the cap, a few MiB of maps and strings.
    let err = refused("100k members", &bytes, BOMB_TIME, 32 * MIB);
    assert!(matches!(err, BundleError::TooManyMembers), "{err}");
    assert_eq!(MAX_MEMBERS, 10_000);
}

#[test]
fn truncated_and_garbage_archives_are_refused() {
    let good = tar_gz([member("a.yaml", EntryType::Regular, &[b'a'; 4096])]);
    // A cut in the gzip trailer alone (CRC, length) goes unnoticed: the tar ends before
    // it and members are verified by digest against the manifest anyway.
    for cut in [10, good.len() / 2] {
        let err = refused("truncated", &good[..cut], SMALL_TIME, SMALL_MEMORY);
        assert!(matches!(err, BundleError::Archive(_)), "cut {cut}: {err}");
    }
    let err = refused("garbage", &[0xff; 4096], SMALL_TIME, SMALL_MEMORY);
    assert!(matches!(err, BundleError::Archive(_)), "{err}");
}

/// The `hello` example deployment with `extra` under `metadata.annotations`.
fn deployment_with(extra: &str) -> String {
    include_str!("../../examples/deployments/hello.yaml").replace(
        "  namespace: examples\n",
        &format!("  namespace: examples\n  annotations: {extra}\n"),
    )
}

/// The `hello` example deployment with `deviceConstraints` set to `value`.
fn deployment_with_constraints(value: &str) -> String {
    deployment_with("{}").replace(
        "    type: custom\n",
        &format!("    type: custom\n    deviceConstraints: {value}\n"),
    )
}

/// The refusal of a deployment document, within the small bounds.
fn refused_yaml(what: &str, document: &str) -> wasmgate::deploy::model::ModelError {
    let err = bounded(what, SMALL_TIME, SMALL_MEMORY, || {
        Deployment::from_yaml(document.as_bytes())
    })
    .expect_err(what);
    eprintln!("{what}: {err}");
    err
}

#[test]
fn the_yaml_template_is_a_valid_deployment() {
    // Without this, the refusals below could be the template's fault.
    Deployment::from_yaml(deployment_with("{}").as_bytes()).unwrap();
}

#[test]
fn yaml_alias_bomb_in_an_ignored_field_is_never_expanded() {
    // "Billion laughs": nine levels of ten aliases each, 10^9 strings once expanded.
    let mut bomb = String::from("a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for level in 1..=9 {
        let prev = level - 1;
        let refs = vec![format!("*a{prev}"); 10].join(",");
        bomb.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    let document = format!("{bomb}{}", deployment_with("*a9"));
    assert!(document.len() < 4096);
    // Unknown fields are ignored (Margo extensibility), and so is what they alias.
    let d = bounded("alias bomb", SMALL_TIME, SMALL_MEMORY, || {
        Deployment::from_yaml(document.as_bytes())
    })
    .unwrap();
    assert_eq!(d.name, "hello");
}

#[test]
fn yaml_alias_bomb_in_a_known_field_is_refused() {
    // The same expansion aimed at a field the model keeps (`deviceConstraints` is kept
    // as a JSON value), not one serde skips.
    let mut anchors = String::from("x-a0: &a0 [1,1,1,1,1,1,1,1,1,1]\n");
    for level in 1..=9 {
        let refs = vec![format!("*a{}", level - 1); 10].join(",");
        anchors.push_str(&format!("x-a{level}: &a{level} [{refs}]\n"));
    }
    let document = format!("{anchors}{}", deployment_with_constraints("*a9"));
    let err = refused_yaml("alias bomb in deviceConstraints", &document);
    assert_eq!(err.field, "document", "{err}");
}

#[test]
fn deeply_nested_flow_yaml_is_refused_before_parsing() {
    // 200 KB of brackets; the YAML parser alone would spend minutes on them.
    let depth = 100_000;
    let flow = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let flow_map = format!("{}{}", "{a: ".repeat(depth), "}".repeat(depth));
    let in_unknown = |nested: &str| format!("{}x: {nested}\n", deployment_with("{}"));
    let in_constraints = deployment_with_constraints(&flow);
    for (what, document) in [
        ("flow sequences", in_unknown(&flow)),
        ("flow mappings", in_unknown(&flow_map)),
        ("flow sequences in deviceConstraints", in_constraints),
    ] {
        let err = refused_yaml(what, &document);
        assert_eq!(err.field, "document", "{what}: {err}");
        assert!(err.message.contains("nested deeper"), "{what}: {err}");
    }
}

#[test]
fn deeply_nested_block_yaml_is_refused() {
    // Block nesting costs indentation: 1,400 levels are about 1 MiB, the documented
    // YAML size limit.
    let block: String = (1..=1_400)
        .map(|i| format!("{}k:\n", " ".repeat(4 + i)))
        .collect();
    let document = deployment_with_constraints(&format!("\n{block}"));
    let err = refused_yaml("block mappings in deviceConstraints", &document);
    assert_eq!(err.field, "document", "{err}");
}

#[test]
fn manifest_with_hundred_thousand_deployments_is_handled_in_bounds() {
    let d = Digest::of(b"x");
    let deployments: Vec<String> = (0..100_000)
        .map(|i| format!(r#"{{"deploymentId":"d{i}","digest":"{d}","url":"/d/{i}"}}"#))
        .collect();
    let body = format!(
        r#"{{"manifestVersion":7,"bundle":{{"mediaType":"{BUNDLE_MEDIA_TYPE}","digest":"{d}","url":"/b"}},"deployments":[{}]}}"#,
        deployments.join(",")
    );
    drop(deployments);
    // About 10 MiB of JSON; the client never reads more than 1 MiB of a manifest
    // response, so this is the parser's own bound, ten times what can arrive.
    let body = body.into_bytes();
    let m = bounded("100k-deployment manifest", BOMB_TIME, 64 * MIB, || {
        StateManifest::parse(&body)
    })
    .unwrap();
    assert_eq!(m.deployments.len(), 100_000);
    // One duplicate among them is found, within the same bounds.
    let dup = String::from_utf8(body)
        .unwrap()
        .replacen("\"d99999\"", "\"d0\"", 1);
    let err = bounded("100k manifest, one duplicate", BOMB_TIME, 64 * MIB, || {
        StateManifest::parse(dup.as_bytes())
    })
    .unwrap_err();
    assert_eq!(err.field, "deployments", "{err}");
}

#[test]
fn deeply_nested_manifest_json_is_handled() {
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // In an unknown field it is skipped without recursion.
    let body = format!(r#"{{"manifestVersion":1,"bundle":null,"deployments":[],"x":{nested}}}"#);
    let m = bounded("nested unknown field", SMALL_TIME, SMALL_MEMORY, || {
        StateManifest::parse(body.as_bytes())
    })
    .unwrap();
    assert!(m.deployments.is_empty());
    // Where the manifest keeps values, the JSON recursion limit refuses it.
    let body = format!(r#"{{"manifestVersion":1,"bundle":null,"deployments":{nested}}}"#);
    let err = bounded("nested deployments", SMALL_TIME, SMALL_MEMORY, || {
        StateManifest::parse(body.as_bytes())
    })
    .unwrap_err();
    assert_eq!(err.field, "document", "{err}");
}
