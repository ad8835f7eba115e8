//! Precompiled components: `wasmgate compile` on the build host, the `.cwasm` shipped next
//! to the `.wasm`, and the device serving it only when it verifies.
//!
//! Serving uses this build's binary, or the compiler-free device build when
//! `WASMGATE_DEVICE_BIN` names one (`cargo build -p wasmgate --no-default-features
//! --features device`, then point the variable at its `target/debug/wasmgate`).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const CONFIG: &str = "[device]\nid = \"edge-01\"\n[[partition]]\nid = \"apps\"\ncpu = 1.0\nmemory = \"256Mi\"\nstorage = \"16Mi\"\ninstance-memory = \"64Mi\"\n";
/// Another device: its partitions allow larger memories, so its code differs.
const OTHER_DEVICE: &str = "[device]\nid = \"edge-02\"\n[[partition]]\nid = \"apps\"\ncpu = 1.0\nmemory = \"512Mi\"\nstorage = \"16Mi\"\ninstance-memory = \"128Mi\"\n";

fn device_command() -> Command {
    Command::new(std::env::var_os("WASMGATE_DEVICE_BIN").unwrap_or_else(|| BIN.into()))
}

/// `wasmgate compile COMPONENT -o OUT --config CONFIG [--target ARCH]`, asserting success.
fn compile(component: &Path, out: &Path, config: &Path, target: Option<&str>) -> String {
    let mut command = Command::new(BIN);
    command
        .arg("compile")
        .arg(component)
        .arg("-o")
        .arg(out)
        .arg("--config")
        .arg(config);
    if let Some(target) = target {
        command.args(["--target", target]);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "wasmgate compile failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A folder `name/` in the sandbox holding `hello.wasm` (a copy of `wasm`), and a
/// deployment serving it at `/name`.
fn component_dir(sandbox: &Sandbox, index: u32, name: &str, wasm: &str) -> std::path::PathBuf {
    let dir = sandbox.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hello.wasm");
    std::fs::copy(wasm, &path).unwrap();
    let ext = format!("{{trigger: {{http: {{route: /{name}}}}}}}");
    sandbox.put(
        &format!("{name}.yaml"),
        &deployment(
            &format!("11111111-1111-4111-8111-{index:012}"),
            name,
            Some("edge-01/apps"),
            &[("hello", path.to_str().unwrap(), &ext)],
            &[],
        ),
    );
    path
}

fn state_of<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no deployment {name} in {status:#}"))
}

/// The refusal of deployment `name`: its error code and message.
fn refusal(status: &serde_json::Value, name: &str) -> (String, String) {
    let state = state_of(status, name);
    assert_eq!(state["state"], "failed", "{name}: {state:#}");
    (
        state["error"]["code"].as_str().unwrap().to_owned(),
        state["error"]["message"].as_str().unwrap().to_owned(),
    )
}

fn metric(gate: &Wasmgate, name: &str) -> u64 {
    let (code, body) = gate.admin_get("/metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

#[test]
fn precompiled_components_are_served_only_when_they_verify() {
    let sandbox = Sandbox::new();
    let config = sandbox.config(CONFIG);
    let other_config = sandbox.path().join("other-device.toml");
    std::fs::write(&other_config, OTHER_DEVICE).unwrap();
    let hello = wasmgate_examples::HELLO;

    // The good one: compiled for this device's configuration.
    let good = component_dir(&sandbox, 1, "good", hello);
    let printed = compile(&good, &good.with_extension("cwasm"), &config, None);
    assert!(
        printed.contains("memory reservation 67108864 bytes"),
        "{printed}"
    );

    // Damaged or edited after compiling: one byte in the middle of the code flipped,
    // where wasmtime's own checks of the ELF image would not notice.
    let tampered = component_dir(&sandbox, 2, "tampered", hello);
    let cwasm = tampered.with_extension("cwasm");
    compile(&tampered, &cwasm, &config, None);
    let mut bytes = std::fs::read(&cwasm).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&cwasm, &bytes).unwrap();

    // Compiled for another architecture.
    let other_arch = if cfg!(target_arch = "aarch64") {
        "x86_64"
    } else {
        "aarch64"
    };
    let arm = component_dir(&sandbox, 3, "cross", hello);
    let printed = compile(
        &arm,
        &arm.with_extension("cwasm"),
        &config,
        Some(other_arch),
    );
    assert!(
        printed.contains(&format!("for {other_arch}-linux")),
        "{printed}"
    );

    // The precompiled hello, shipped next to another component.
    let swapped = component_dir(&sandbox, 4, "swapped", wasmgate_examples::COUNTER);
    std::fs::copy(
        good.with_extension("cwasm"),
        swapped.with_extension("cwasm"),
    )
    .unwrap();

    // Compiled for a device whose partitions allow larger memories.
    let elsewhere = component_dir(&sandbox, 5, "elsewhere", hello);
    compile(
        &elsewhere,
        &elsewhere.with_extension("cwasm"),
        &other_config,
        None,
    );

    let gate = sandbox.up_with(device_command(), CONFIG);
    let status = gate.wait_status("all five applied", |s| {
        s["deployments"].as_array().unwrap().len() == 5
            && s["deployments"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["state"] == "installed" || d["state"] == "failed")
    });
    assert_eq!(
        state_of(&status, "good")["state"],
        "installed",
        "{status:#}"
    );
    let (code, body) = gate.get("/good");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Hello"), "{body}");
    // Served from the precompiled file: nothing was compiled on the device.
    assert_eq!(metric(&gate, "wasmgate_aot_cache_misses_total"), 0);
    assert_eq!(metric(&gate, "wasmgate_aot_cache_hits_total"), 1);

    let (code, message) = refusal(&status, "tampered");
    assert_eq!(code, "wasmgate.precompiled", "{message}");
    assert!(message.contains("damaged or altered"), "{message}");
    assert!(message.contains("tampered/hello.cwasm"), "{message}");

    let (code, message) = refusal(&status, "cross");
    assert_eq!(code, "wasmgate.precompiled", "{message}");
    assert!(
        message.contains(&format!(
            "precompiled for {other_arch}-linux, but this engine runs {}-linux",
            std::env::consts::ARCH
        )),
        "{message}"
    );

    let (code, message) = refusal(&status, "swapped");
    assert_eq!(code, "wasmgate.precompiled", "{message}");
    let counter_sha = hex_sha256(wasmgate_examples::COUNTER);
    assert!(
        message.contains(&format!(
            "precompiled from component sha256:{}, but the component is sha256:{counter_sha}",
            hex_sha256(hello)
        )),
        "{message}"
    );

    let (code, message) = refusal(&status, "elsewhere");
    assert_eq!(code, "wasmgate.precompiled", "{message}");
    assert!(
        message
            .contains("memory reservation of 134217728 bytes, but this engine reserves 67108864"),
        "{message}"
    );
    // The refusals cost the good one nothing.
    assert_eq!(gate.get("/good").0, 200);
    gate.stop();

    // A restart without the shipped file (e.g. the applied bytes restored from the blob
    // store) finds the verified code in the AOT cache: still nothing compiled.
    for name in ["tampered", "cross", "swapped", "elsewhere"] {
        sandbox.delete(&format!("{name}.yaml"));
    }
    std::fs::remove_file(good.with_extension("cwasm")).unwrap();
    let gate = sandbox.up_with(device_command(), CONFIG);
    gate.wait_status("good installed again", |s| {
        s["deployments"].as_array().unwrap().len() == 1
            && state_of(s, "good")["state"] == "installed"
    });
    assert_eq!(gate.get("/good").0, 200);
    assert_eq!(metric(&gate, "wasmgate_aot_cache_misses_total"), 0);
    gate.stop();
}

fn hex_sha256(path: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}
