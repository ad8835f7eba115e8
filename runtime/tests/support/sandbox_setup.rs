//! The deployments shared by the sandboxing tests.

#![allow(dead_code)]

use super::common::*;

const CONFIG: &str = r#"
[device]
id = "edge-01"
[[partition]]
id = "good"
cpu = 1.0
memory = "128Mi"
storage = "16Mi"
[[partition]]
id = "bad"
cpu = 0.5
memory = "96Mi"
storage = "16Mi"
timeout = "20s"
"#;

pub fn start() -> (Sandbox, Wasmgate) {
    let sandbox = Sandbox::new();
    sandbox.put(
        "hello.yaml",
        &deployment(
            "11111111-1111-4111-8111-111111111111",
            "hello",
            Some("edge-01/good"),
            &[(
                "hello",
                wasmgate_examples::HELLO,
                "{trigger: {http: {route: /hello}}}",
            )],
            &[],
        ),
    );
    sandbox.put(
        "misbehave.yaml",
        &deployment(
            "22222222-2222-4222-8222-222222222222",
            "misbehave",
            Some("edge-01/bad"),
            &[(
                "misbehave",
                wasmgate_examples::MISBEHAVE,
                "{trigger: {http: {route: /bad}}, limits: {memory: 32Mi, timeout: 2s}, data-dir: true}",
            )],
            &[],
        ),
    );
    // A second workload in the bad partition with a longer deadline, for the CPU test.
    sandbox.put(
        "busy.yaml",
        &deployment(
            "33333333-3333-4333-8333-333333333333",
            "busy",
            Some("edge-01/bad"),
            &[(
                "busy",
                wasmgate_examples::MISBEHAVE,
                "{trigger: {http: {route: /busy}}, limits: {timeout: 20s}}",
            )],
            &[],
        ),
    );
    let gate = sandbox.up(CONFIG);
    gate.wait_status("three installed", |s| {
        let d = s["deployments"].as_array().unwrap();
        d.len() == 3 && d.iter().all(|d| d["state"] == "installed")
    });
    assert_eq!(gate.get("/bad/ok"), (200, "ok\n".to_string()));
    (sandbox, gate)
}

pub fn hello_still_answers(gate: &Wasmgate) {
    assert_eq!(gate.get("/hello"), (200, "Hello, world!\n".to_string()));
}
