//! `wasmgate status` against the real binary: the bundled examples plus broken
//! deployments in local mode, no listener at all, a listener that never answers, and
//! WFM sync state with the mock WFM refusing a target's capabilities.

mod common;

use common::pki::Pki;
use common::wfm::{DownMode, MockWfm, Profile};
use common::*;
use serde_json::Value;
use sha2::Digest;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `wasmgate status ARGS`. The command bounds itself (`--timeout`, default 5 s);
/// the test bounds it again so a hang fails instead of stalling CI.
fn status_cmd(args: &[&str]) -> Outcome {
    let mut child = Command::new(BIN)
        .arg("status")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wasmgate status");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wasmgate status {args:?} did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Repeats `status ARGS` until its exit status is `code` (bounded by [`WAIT`]).
fn wait_exit_code(args: &[&str], code: i32, gate: &Wasmgate) -> Outcome {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = status_cmd(args);
        if out.code == Some(code) {
            return out;
        }
        if Instant::now() > deadline {
            panic!(
                "status {args:?} still exits {:?}, want {code}:\n{}{}{}",
                out.code,
                out.stdout,
                out.stderr,
                gate.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn examples_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
}

/// An example YAML with its component path made absolute (the originals are relative
/// to the examples folder).
fn example_yaml(file: &str, wasm: &str) -> String {
    let yaml = std::fs::read_to_string(examples_dir().join("deployments").join(file)).unwrap();
    let relative = format!(
        "file:../../target/guests/wasm32-wasip2/release/{}",
        Path::new(wasm).file_name().unwrap().to_str().unwrap()
    );
    assert!(yaml.contains(&relative), "{file} does not name {relative}");
    yaml.replace(&relative, &format!("file:{wasm}"))
}

fn sha256_of(path: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
    )
}

fn by_source<'a>(status: &'a Value, source: &str) -> &'a Value {
    status["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"].as_str().is_some_and(|s| s.ends_with(source)))
        .unwrap_or_else(|| panic!("no deployment from {source}: {status:#}"))
}

#[test]
fn local_mode_examples_with_broken_deployments() {
    let sandbox = Sandbox::new();
    sandbox.put(
        "hello.yaml",
        &example_yaml("hello.yaml", wasmgate_examples::HELLO),
    );
    sandbox.put(
        "counter.yaml",
        &example_yaml("counter.yaml", wasmgate_examples::COUNTER),
    );
    sandbox.put(
        "sensor-filter.yaml",
        &example_yaml("sensor-filter.yaml", wasmgate_examples::SENSOR_FILTER),
    );
    // Not an ApplicationDeployment (no `id`), and one directed at a partition the
    // device does not have (Margo code 101).
    sandbox.put(
        "broken.yaml",
        "metadata:\n  name: broken\nspec:\n  deploymentProfile:\n    type: custom\n",
    );
    sandbox.put(
        "lost.yaml",
        &deployment(
            "22222222-2222-4222-8222-222222222222",
            "lost",
            Some("edge-01/nowhere"),
            &[(
                "lost",
                wasmgate_examples::HELLO,
                "{trigger: {http: {route: /lost}}}",
            )],
            &[],
        ),
    );
    let config = std::fs::read_to_string(examples_dir().join("wasmgate.toml")).unwrap();
    let gate = sandbox.up(&config);
    let admin = gate.admin.unwrap().to_string();
    gate.wait_status("three installed, two failed", |s| {
        let states: Vec<&str> = s["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["state"].as_str())
            .collect();
        states.iter().filter(|s| **s == "installed").count() == 3
            && states.iter().filter(|s| **s == "failed").count() == 2
    });

    let out = status_cmd(&["--admin", &admin, "--json"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let status: Value = serde_json::from_str(&out.stdout).expect("--json prints JSON");
    assert_eq!(status["deviceId"], "edge-01");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["reconciled"], true);
    assert!(status["wfm"].is_null(), "local mode has no WFM: {status:#}");

    let partitions = status["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 2, "{status:#}");
    let apps = partitions
        .iter()
        .find(|p| p["deviceId"] == "edge-01/apps")
        .unwrap();
    assert_eq!(apps["id"], "apps");
    assert_eq!(apps["cpu"], 1.0);
    assert_eq!(apps["memory"]["limit"], 256u64 << 20);
    assert_eq!(apps["memory"]["instanceLimit"], 128u64 << 20);
    assert!(apps["memory"]["used"].is_u64());
    assert_eq!(apps["storage"]["quota"], 64u64 << 20);
    assert!(apps["storage"]["used"].is_u64());
    assert_eq!(apps["concurrency"]["limit"], 32);
    assert_eq!(apps["concurrency"]["inUse"], 0);
    assert!(apps["throttledSeconds"].is_f64());
    // Existing fields stay for older readers.
    assert_eq!(apps["activeInstances"], 0);

    let hello = by_source(&status, "hello.yaml");
    assert_eq!(hello["name"], "hello");
    assert_eq!(hello["state"], "installed");
    assert_eq!(hello["deviceId"], "edge-01/apps");
    assert_eq!(hello["components"][0]["revision"], "0.1.0");
    assert_eq!(
        hello["components"][0]["digest"],
        sha256_of(wasmgate_examples::HELLO)
    );
    assert_eq!(
        by_source(&status, "sensor-filter.yaml")["deviceId"],
        "edge-01/sensors"
    );
    let broken = by_source(&status, "broken.yaml");
    assert_eq!(broken["state"], "failed");
    assert_eq!(broken["error"]["code"], "wasmgate.invalid", "{broken:#}");
    let lost = by_source(&status, "lost.yaml");
    assert_eq!(lost["state"], "failed");
    assert_eq!(lost["error"]["code"], "101", "{lost:#}");
    assert!(lost["components"][0]["digest"].is_null(), "{lost:#}");

    // Human output, the address taken from the config file's `[http] admin`.
    let conf = sandbox.path().join("status.toml");
    std::fs::write(&conf, format!("[http]\nadmin = \"{admin}\"\n")).unwrap();
    let conf = conf.to_str().unwrap();
    let out = status_cmd(&["--config", conf]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let text = out.stdout;
    for needle in [
        "on edge-01: reconciled",
        "PARTITION",
        "edge-01/apps",
        "edge-01/sensors",
        "DEPLOYMENT",
        "hello",
        "counter",
        "sensor-filter",
        "lost",
        "broken.yaml",
        "0.1.0",
        &sha256_of(wasmgate_examples::HELLO)[..19],
        "WFM: none (local mode)",
        "PROBLEMS",
        "[wasmgate.invalid]",
        "deployment lost (",
        "lost.yaml) failed: [101] metadata.deviceId",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let hello_row = text
        .lines()
        .find(|l| l.starts_with("hello "))
        .unwrap_or_else(|| panic!("no row for hello:\n{text}"));
    assert!(
        hello_row.split_whitespace().collect::<Vec<_>>()[..4]
            == ["hello", "installed", "edge-01/apps", "hello"],
        "{hello_row}"
    );

    // Fixed: exit 0 once the reconciler dropped the broken ones.
    sandbox.delete("broken.yaml");
    sandbox.delete("lost.yaml");
    let out = wait_exit_code(&["--admin", &admin], 0, &gate);
    assert!(out.stdout.contains("all well"), "{}", out.stdout);
    assert!(!out.stdout.contains("PROBLEMS"), "{}", out.stdout);
    let out = status_cmd(&["--admin", &admin, "--json"]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(status["deployments"].as_array().unwrap().len(), 3);
    gate.stop();
}

#[test]
fn unreachable_admin_listener_exits_2() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = status_cmd(&["--admin", &addr]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("cannot reach the admin listener at {addr}")),
        "{}",
        out.stderr
    );
    let out = status_cmd(&["--admin", &addr, "--json"]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);

    // Connected (the kernel completes the handshake) but never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = status_cmd(&["--admin", &addr, "--timeout", "500ms"]);
    let took = started.elapsed();
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("did not answer within 0.5s"),
        "{}",
        out.stderr
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // A configuration without an admin listener says so.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("wasmgate.toml");
    std::fs::write(&conf, "[device]\nid = \"edge-01\"\n").unwrap();
    let out = status_cmd(&["--config", conf.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("has no [http] admin"), "{}", out.stderr);
}

#[test]
fn wfm_sync_state_and_refused_capabilities() {
    let sandbox = Sandbox::new();
    let pki = Pki::new("example.org", "wfm-1", "edge-01");
    let files = pki.write_client_files(&sandbox.path().join("pki"));
    let mock = MockWfm::start(Profile::Rc3, &pki);
    // Refused from the first report on, so no earlier acceptance can hide it.
    mock.refuse_capabilities("edge-01/apps", Some(422));
    let config = format!(
        r#"
[device]
id = "edge-01"
mode = "see-thru"
otel-collector = true

[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"

[wfm]
url = "{}"
poll-interval = "300ms"
{}
"#,
        mock.base_url(),
        files.rc3_credentials()
    );
    let gate = sandbox.up(&config);
    let admin = gate.admin.unwrap().to_string();

    let out = wait_exit_code(&["--admin", &admin, "--json"], 1, &gate);
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    let wfm = &status["wfm"];
    assert_eq!(wfm["profile"], "rc3", "{wfm:#}");
    assert!(wfm["outboxDepth"].is_u64(), "{wfm:#}");
    assert!(wfm["acceptedManifestVersion"].is_u64(), "{wfm:#}");
    let refused = wfm["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["deviceId"] == "edge-01/apps")
        .unwrap_or_else(|| panic!("no target edge-01/apps: {wfm:#}"));
    assert_eq!(refused["state"], "refused", "{wfm:#}");
    assert_eq!(refused["status"], 422, "{wfm:#}");

    let out = status_cmd(&["--admin", &admin]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    for needle in [
        "WFM (rc3): connected",
        "CAPABILITIES",
        "refused",
        "422",
        "WFM refused the capabilities of edge-01/apps (HTTP 422)",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle:?} not in:\n{}",
            out.stdout
        );
    }

    // Accepted on a later attempt: all well, with a sync time.
    mock.refuse_capabilities("edge-01/apps", None);
    let out = wait_exit_code(&["--admin", &admin, "--json"], 0, &gate);
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    let targets = status["wfm"]["targets"].as_array().unwrap();
    assert!(
        targets.iter().all(|t| t["state"] == "accepted"),
        "{targets:?}"
    );
    assert!(status["wfm"]["lastSync"].is_u64(), "{status:#}");
    let out = status_cmd(&["--admin", &admin]);
    assert!(out.stdout.contains("last sync "), "{}", out.stdout);

    // The WFM goes away: the failed sync round makes it exit 1 again.
    mock.set_down(DownMode::Refuse);
    let out = wait_exit_code(&["--admin", &admin, "--json"], 1, &gate);
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(status["wfm"]["lastError"].is_string(), "{status:#}");
    let out = status_cmd(&["--admin", &admin]);
    assert!(
        out.stdout.contains("WFM: the last sync round failed"),
        "{}",
        out.stdout
    );
    gate.stop();
}

#[test]
fn compile_shows_plain_progress_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("hello.cwasm");
    let out = Command::new(BIN)
        .args(["compile", wasmgate_examples::HELLO, "--output"])
        .arg(&output)
        .env("WASMGATE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(output.exists());
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("wasmgate: reading ")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("wasmgate: compiling ") && l.contains("for this machine")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("wasmgate: writing ")),
        "{stderr}"
    );
    // No redraws: a pipe gets lines, never carriage returns or escape sequences.
    assert!(
        !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "{stderr:?}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("wasmgate: compiled "), "{stdout}");
}
