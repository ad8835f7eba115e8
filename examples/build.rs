//! Builds the guest workspace in `guests/` for `wasm32-wasip2` with a nested cargo, into
//! `<workspace root>/target/guests` (a fixed place the deployment YAMLs can point at), and
//! hands the `.wasm` paths to `src/lib.rs` through `rustc-env`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const TARGET: &str = "wasm32-wasip2";

/// (constant suffix, cargo package, artifact file stem). Cargo names cdylib artifacts after
/// the lib target, so hyphens become underscores.
const GUESTS: [(&str, &str, &str); 5] = [
    ("HELLO", "hello", "hello"),
    ("COUNTER", "counter", "counter"),
    ("SENSOR_FILTER", "sensor-filter", "sensor_filter"),
    ("MISBEHAVE", "misbehave", "misbehave"),
    ("PLAIN_HELLO", "plain-hello", "plain_hello"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let guests = manifest_dir.join("guests");
    let workspace_root = manifest_dir
        .parent()
        .expect("examples/ lives inside the workspace");
    let target_dir = workspace_root.join("target").join("guests");

    rerun_if_changed(&guests, &workspace_root.join("wit"));
    check_target_installed();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    scrub_env(&mut cmd);

    let output = cmd
        .output()
        .unwrap_or_else(|err| fail(&format!("cannot run cargo: {err}")));
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail(&format!(
            "building the guest components failed ({}); run `cargo build --release --target {TARGET}` in {} for details",
            output.status,
            guests.display()
        ));
    }

    let artifacts = target_dir.join(TARGET).join("release");
    for (constant, package, stem) in GUESTS {
        let wasm = artifacts.join(format!("{stem}.wasm"));
        if !wasm.is_file() {
            fail(&format!(
                "guest `{package}` built but {} is missing",
                wasm.display()
            ));
        }
        println!(
            "cargo:rustc-env=WASMGATE_GUEST_{constant}={}",
            wasm.display()
        );
    }
}

/// The outer build's settings (profile, flags, target, clippy wrapper, jobserver, target
/// dir...) must not leak into the guest build; user-level cargo configuration (home, network,
/// registries) is kept.
fn scrub_env(cmd: &mut Command) {
    const KEEP: [&str; 6] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    for (key, _) in env::vars_os() {
        let Some(name) = key.to_str() else { continue };
        let cargo_var = name == "CARGO" || name.starts_with("CARGO_");
        let leaks = (cargo_var && !KEEP.iter().any(|keep| name.starts_with(keep)))
            || name.starts_with("RUSTC")
            || matches!(
                name,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "MAKEFLAGS"
                    | "MFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "OUT_DIR"
            );
        if leaks {
            cmd.env_remove(&key);
        }
    }
}

/// Fails early with an actionable message rather than a wall of "can't find crate for `std`".
fn check_target_installed() {
    // `rustc` from PATH is what the nested cargo will use once `RUSTC` is scrubbed.
    let libdir = Command::new("rustc")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let installed = libdir.is_some_and(|dir| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
    });
    if !installed {
        fail(&format!(
            "the Rust target `{TARGET}` is not installed; run `rustup target add {TARGET}`"
        ));
    }
}

fn rerun_if_changed(guests: &Path, wit: &Path) {
    for file in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", guests.join(file).display());
    }
    // One entry per crate rather than `guests/` itself, so a stray `guests/target` from a
    // manual build does not force rebuilds. Cargo scans listed directories recursively.
    let crates = std::fs::read_dir(guests)
        .unwrap_or_else(|err| fail(&format!("cannot list {}: {err}", guests.display())));
    for entry in crates.flatten() {
        let path = entry.path();
        if path.join("Cargo.toml").is_file() {
            println!(
                "cargo:rerun-if-changed={}",
                path.join("Cargo.toml").display()
            );
            println!("cargo:rerun-if-changed={}", path.join("src").display());
        }
    }
    println!("cargo:rerun-if-changed={}", wit.display());
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1);
}
