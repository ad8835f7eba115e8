//! Local mode: a watched folder of deployment YAMLs drives what the host serves.

mod common;

use common::*;

const HELLO_ID: &str = "11111111-1111-4111-8111-111111111111";
const COUNTER_ID: &str = "22222222-2222-4222-8222-222222222222";

fn hello_http(route: &str) -> String {
    format!("{{trigger: {{http: {{route: {route}}}}}}}")
}

fn state_of<'a>(status: &'a serde_json::Value, file: &str) -> Option<&'a serde_json::Value> {
    status["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"].as_str().unwrap().ends_with(file))
}

#[test]
fn parameters_reach_only_their_components() {
    let sandbox = Sandbox::new();
    let hello = wasmgate_examples::HELLO;
    let (ext_a, ext_b) = (hello_http("/a"), hello_http("/b"));
    sandbox.put(
        "two.yaml",
        &deployment(
            HELLO_ID,
            "two",
            Some("edge-01/apps"),
            &[("first", hello, &ext_a), ("second", hello, &ext_b)],
            &[
                ("greeting", "Bonjour", "greeting", "first"),
                ("who", "Edge", "name", "first"),
                ("count", "42", "name", "second"),
            ],
        ),
    );
    let gate = sandbox.up(TWO_PARTITIONS);
    assert_eq!(gate.wait_for("/a", 200, "Bonjour"), "Bonjour, Edge!\n");
    // `second` gets only the parameter targeted at it; numbers arrive as text.
    assert_eq!(gate.get("/b"), (200, "Hello, 42!\n".to_string()));
}

#[test]
fn folder_changes_apply_without_restart() {
    let sandbox = Sandbox::new();
    let gate = sandbox.up(TWO_PARTITIONS);
    assert_eq!(gate.get("/hello").0, 404);
    let ext = hello_http("/hello");
    let yaml = |greeting: &str| {
        deployment(
            HELLO_ID,
            "hello",
            Some("edge-01/*"),
            &[("hello", wasmgate_examples::HELLO, &ext)],
            &[("greeting", greeting, "greeting", "hello")],
        )
    };
    // Add.
    sandbox.put("hello.yaml", &yaml("Hi"));
    gate.wait_for("/hello", 200, "Hi, world!");
    // Update in place: same id, new parameters.
    sandbox.put("hello.yaml", &yaml("Howdy"));
    gate.wait_for("/hello", 200, "Howdy, world!");
    // Remove.
    sandbox.delete("hello.yaml");
    gate.wait_for("/hello", 404, "no deployment serves /hello");
    gate.wait_status("empty status", |s| {
        s["deployments"].as_array().unwrap().is_empty()
    });
}

#[test]
fn key_value_data_survives_restart() {
    let sandbox = Sandbox::new();
    let ext = "{trigger: {http: {route: /counter}}}";
    sandbox.put(
        "counter.yaml",
        &deployment(
            COUNTER_ID,
            "counter",
            None,
            &[("counter", wasmgate_examples::COUNTER, ext)],
            &[],
        ),
    );
    let gate = sandbox.up(TWO_PARTITIONS);
    gate.wait_for("/counter", 200, "hits: 1\n");
    assert_eq!(gate.get("/counter").1, "hits: 2\n");
    assert_eq!(gate.get("/counter/peek").1, "hits: 2\n");
    gate.stop();

    let gate = sandbox.up(TWO_PARTITIONS);
    gate.wait_for("/counter", 200, "hits: 3\n");
}

#[test]
fn bad_input_is_reported_and_others_keep_serving() {
    let sandbox = Sandbox::new();
    let hello = wasmgate_examples::HELLO;
    let ext = hello_http("/hello");
    sandbox.put(
        "a-good.yaml",
        &deployment(
            HELLO_ID,
            "good",
            Some("edge-01/apps"),
            &[("hello", hello, &ext)],
            &[],
        ),
    );
    // Malformed YAML.
    sandbox.put("b-malformed.yaml", "id: [unclosed\nmetadata: {\n");
    // A component file that does not exist.
    sandbox.put(
        "c-missing.yaml",
        &deployment(
            "33333333-3333-4333-8333-333333333333",
            "missing",
            None,
            &[(
                "gone",
                "file:does-not-exist.wasm",
                "{trigger: {http: {route: /gone}}}",
            )],
            &[],
        ),
    );
    // An HTTP-only component behind a timer trigger lacks the world the trigger needs.
    sandbox.put(
        "d-wrong-world.yaml",
        &deployment(
            "44444444-4444-4444-8444-444444444444",
            "wrong-world",
            None,
            &[("hello", hello, "{trigger: {timer: {every: 1s}}}")],
            &[],
        ),
    );
    // The same route as the good deployment.
    sandbox.put(
        "e-duplicate-route.yaml",
        &deployment(
            "55555555-5555-4555-8555-555555555555",
            "dup",
            None,
            &[("hello", hello, &ext)],
            &[],
        ),
    );
    // An unknown trigger kind.
    sandbox.put(
        "f-unknown-trigger.yaml",
        &deployment(
            "66666666-6666-4666-8666-666666666666",
            "mqtt",
            None,
            &[("hello", hello, "{trigger: {mqtt: {topic: a}}}")],
            &[],
        ),
    );
    // A partition that does not exist (Margo error 101).
    sandbox.put(
        "g-unknown-partition.yaml",
        &deployment(
            "77777777-7777-4777-8777-777777777777",
            "nowhere",
            Some("edge-01/nope"),
            &[("hello", hello, "{trigger: {http: {route: /nowhere}}}")],
            &[],
        ),
    );
    let gate = sandbox.up(TWO_PARTITIONS);
    let status = gate.wait_status("all seven processed", |s| {
        s["deployments"].as_array().unwrap().len() == 7
    });
    assert_eq!(gate.get("/hello"), (200, "Hello, world!\n".to_string()));
    assert_eq!(
        state_of(&status, "a-good.yaml").unwrap()["state"],
        "installed"
    );
    let expect = [
        ("b-malformed.yaml", "wasmgate.invalid", "line"),
        ("c-missing.yaml", "wasmgate.artifact", "does-not-exist.wasm"),
        (
            "d-wrong-world.yaml",
            "wasmgate.component",
            "margo:edge/event-handler",
        ),
        (
            "e-duplicate-route.yaml",
            "wasmgate.route-conflict",
            "already served by deployment good",
        ),
        (
            "f-unknown-trigger.yaml",
            "wasmgate.invalid",
            "unknown trigger kind \"mqtt\"",
        ),
        ("g-unknown-partition.yaml", "101", "nope"),
    ];
    for (file, code, needle) in expect {
        let entry =
            state_of(&status, file).unwrap_or_else(|| panic!("{file} missing from {status:#}"));
        assert_eq!(entry["state"], "failed", "{file}: {entry:#}");
        assert_eq!(entry["error"]["code"], code, "{file}: {entry:#}");
        let message = entry["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{file}: {message:?} should mention {needle:?}"
        );
    }
    // Health reflects a finished reconciliation and lists what failed.
    let (code, health) = gate.admin_get("/healthz");
    assert_eq!(code, 200);
    assert!(health.contains("b-malformed.yaml"), "{health}");

    // A failed update keeps the previous version serving.
    sandbox.put(
        "a-good.yaml",
        &deployment(
            HELLO_ID,
            "good",
            Some("edge-01/apps"),
            &[("hello", "file:nope.wasm", &ext)],
            &[],
        ),
    );
    gate.wait_status("failed update", |s| {
        state_of(s, "a-good.yaml").is_some_and(|d| d["state"] == "failed")
    });
    assert_eq!(gate.get("/hello"), (200, "Hello, world!\n".to_string()));
}

#[test]
fn invalid_config_is_refused_with_the_field_named() {
    let sandbox = Sandbox::new();
    let config = sandbox
        .config("[[partition]]\nid = \"p\"\ncpu = 0.5\nmemory = \"lots\"\nstorage = \"1Gi\"\n");
    let output = std::process::Command::new(BIN)
        .args([
            "up",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("memory") && stderr.contains("128Mi"),
        "{stderr}"
    );
}

#[test]
fn broken_edit_keeps_the_running_version_and_late_files_are_picked_up() {
    let sandbox = Sandbox::new();
    let ext = hello_http("/hello");
    sandbox.put(
        "hello.yaml",
        &deployment(
            HELLO_ID,
            "hello",
            None,
            &[("hello", wasmgate_examples::HELLO, &ext)],
            &[],
        ),
    );
    // A component file that does not exist yet.
    sandbox.put(
        "late.yaml",
        &deployment(
            COUNTER_ID,
            "late",
            None,
            &[(
                "late",
                "file:../late.wasm",
                "{trigger: {http: {route: /late}}}",
            )],
            &[],
        ),
    );
    let gate = sandbox.up(TWO_PARTITIONS);
    gate.wait_for("/hello", 200, "Hello, world!");
    gate.wait_status("late fails", |s| {
        state_of(s, "late.yaml").is_some_and(|d| d["state"] == "failed")
    });

    // A broken edit of a running deployment: reported, but the old version serves on.
    sandbox.put("hello.yaml", "id: [oops\n");
    let status = gate.wait_status("broken edit reported", |s| {
        state_of(s, "hello.yaml").is_some_and(|d| d["state"] == "failed")
    });
    let message = state_of(&status, "hello.yaml").unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("previous version keeps serving"),
        "{message}"
    );
    assert_eq!(gate.get("/hello"), (200, "Hello, world!\n".to_string()));

    // The missing component file appears: the deployment installs without a YAML edit.
    std::fs::copy(wasmgate_examples::HELLO, sandbox.path().join("late.wasm")).unwrap();
    gate.wait_for("/late", 200, "Hello, world!");
}
