//! The module map as a test: data flows one way (margo -> deploy -> trigger / workload ->
//! sandbox -> engine; ingress -> trigger), `config` only reads the file and hands each
//! module its own settings type, the cross-cutting leaves (telemetry, fsutil, service)
//! import only the value types (units, types, names), and those import nothing. A
//! `crate::X` path in a module that may not reach X fails here with the file and line.
//!
//! It reads the sources (`runtime/src`), so it also catches a path used without a `use`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Value types every room may use; they import nothing of the crate.
const BASE: &[&str] = &["names", "types", "units"];

/// Cross-cutting services every room may use; they import only the value types.
const LEAVES: &[&str] = &["fsutil", "service", "telemetry"];

/// What each room may import besides itself and the leaves.
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        // The composition root and the binary edge: everything.
        (
            "host",
            &[
                "config", "margo", "deploy", "ingress", "trigger", "workload", "sandbox", "engine",
            ][..],
        ),
        (
            "cli",
            &[
                "config", "host", "margo", "deploy", "trigger", "workload", "sandbox", "engine",
            ][..],
        ),
        ("main", &["cli", "config", "host"][..]),
        // Reads the file into the settings types the modules own, and nothing imports it
        // back (only the composition root and the binary edge above).
        (
            "config",
            &["margo", "deploy", "ingress", "trigger", "sandbox", "engine"][..],
        ),
        (
            "margo",
            &["deploy", "trigger", "workload", "sandbox", "engine"][..],
        ),
        ("deploy", &["trigger", "workload", "sandbox", "engine"][..]),
        ("ingress", &["trigger"][..]),
        ("trigger", &["workload", "sandbox", "engine"][..]),
        ("workload", &["sandbox", "engine"][..]),
        ("sandbox", &["engine"][..]),
        ("engine", &[][..]),
        // lib.rs: the module list and the fuzzing entry points.
        ("lib", &["deploy", "margo", "config"][..]),
    ])
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("runtime/src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The room a source file belongs to: its first path component without `.rs`.
fn room(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `crate::NAME` in `line`, outside a line comment; a group `crate::{a::X, b}`
/// yields each of its top-level names.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        let after = &rest[at + "crate::".len()..];
        // `wasmgate_host_api::...` or `some_crate::` are other crates, not this one.
        let ours = !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if ours {
            if let Some(group) = after.strip_prefix('{') {
                let mut depth = 0usize;
                let mut start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            found.push(ident(&group[start..i]));
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.push(ident(&group[start..i]));
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
            } else {
                found.push(ident(after));
            }
        }
        rest = after;
    }
    found.retain(|name| !name.is_empty());
    found
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {} source files", files.len());
    let allowed = allowed();
    let mut violations = Vec::new();
    let mut rooms_seen = std::collections::BTreeSet::new();
    for file in &files {
        let from = room(&src, file);
        rooms_seen.insert(from.clone());
        let text = std::fs::read_to_string(file).expect("source is readable");
        for (n, line) in text.lines().enumerate() {
            for to in crate_paths(line) {
                if to == from {
                    continue;
                }
                let ok = if BASE.contains(&from.as_str()) {
                    false
                } else if LEAVES.contains(&from.as_str()) {
                    BASE.contains(&to.as_str())
                } else {
                    BASE.contains(&to.as_str())
                        || LEAVES.contains(&to.as_str())
                        || allowed
                            .get(from.as_str())
                            .is_some_and(|rooms| rooms.contains(&to.as_str()))
                };
                if !ok {
                    violations.push(format!(
                        "{}:{}: {from} imports {to}: {}",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    for known in rooms_seen {
        assert!(
            BASE.contains(&known.as_str())
                || LEAVES.contains(&known.as_str())
                || allowed.contains_key(known.as_str()),
            "a new room `{known}` under runtime/src: place it in the module map of this test and the README"
        );
    }
    assert!(
        violations.is_empty(),
        "imports against the data flow:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_path_scanner_finds_what_it_must() {
    assert_eq!(crate_paths("use crate::deploy::X;"), vec!["deploy"]);
    assert_eq!(
        crate_paths("let a = crate::config::A + crate::units::B;"),
        vec!["config", "units"]
    );
    assert_eq!(
        crate_paths("use crate::{config::Config, deploy::{A, B}, units};"),
        vec!["config", "deploy", "units"]
    );
    assert!(crate_paths("use other_crate::x;").is_empty());
    assert!(crate_paths("// crate::config in a comment").is_empty());
}
