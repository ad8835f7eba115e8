//! The bundled examples, served exactly as the README's first command serves them.

mod common;

use common::*;
use std::path::Path;

fn examples_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
}

#[test]
fn bundled_examples_answer() {
    // Make sure the guests exist (the examples crate builds them).
    assert!(Path::new(wasmgate_examples::HELLO).exists());
    let sandbox = Sandbox::new();
    let config = std::fs::read_to_string(examples_dir().join("wasmgate.toml")).unwrap();
    let gate = Wasmgate::start(&[
        "up",
        "--config",
        sandbox.config(&config).to_str().unwrap(),
        "--deployments",
        examples_dir().join("deployments").to_str().unwrap(),
        "--state-dir",
        sandbox.state().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let status = gate.wait_status("three installed examples", |s| {
        s["deployments"].as_array().unwrap().len() == 3
            && s["deployments"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["state"] == "installed")
    });
    let placed: Vec<(String, String)> = status["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_owned(),
                d["deviceId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        placed.contains(&("hello".into(), "edge-01/apps".into())),
        "{placed:?}"
    );
    assert!(
        placed.contains(&("sensor-filter".into(), "edge-01/sensors".into())),
        "{placed:?}"
    );

    assert_eq!(gate.get("/hello"), (200, "Hello, Margo!\n".to_string()));
    let (code, first) = gate.get("/counter");
    assert_eq!(code, 200);
    let (_, second) = gate.get("/counter");
    let n = |s: &str| {
        s.trim()
            .strip_prefix("hits: ")
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(n(&second), n(&first) + 1);

    // The timer runs every 2 s and its HTTP route reads what the ticks stored.
    let body = gate.wait_for("/sensor", 200, "\"ticks\": 2");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["average"].as_f64().unwrap() > 15.0, "{json}");

    assert_eq!(gate.admin_get("/healthz").0, 200);
    let (_, metrics) = gate.admin_get("/metrics");
    assert!(
        metrics.contains("wasmgate_invocations_total{deployment=\"hello\""),
        "{metrics}"
    );
    // Each route is printed for the user.
    let out = gate.stdout.lock().unwrap().join("\n");
    assert!(out.contains("/hello -> hello (edge-01/apps)"), "{out}");
}

#[test]
fn run_serves_one_component() {
    let sandbox = Sandbox::new();
    let gate = Wasmgate::start(&[
        "run",
        wasmgate_examples::HELLO,
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        sandbox.state().to_str().unwrap(),
    ]);
    assert_eq!(gate.wait_for("/", 200, "Hello"), "Hello, world!\n");
    assert_eq!(gate.get("/any/path").0, 200);
}
