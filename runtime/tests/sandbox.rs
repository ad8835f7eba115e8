//! Sandboxing: a misbehaving guest fails its own request with a clear error while
//! deployments in other partitions keep answering.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[path = "support/sandbox_setup.rs"]
mod sandbox_setup;

use sandbox_setup::{hello_still_answers, start};

#[test]
fn misbehaving_guests_fail_alone() {
    let (_sandbox, gate) = start();

    // Runs forever: cut off at its 2 s deadline while the other partition answers.
    let started = Instant::now();
    let spinner = {
        let url = gate.url("/bad/spin");
        std::thread::spawn(move || http_get(&url))
    };
    std::thread::sleep(Duration::from_millis(300));
    let hello_started = Instant::now();
    hello_still_answers(&gate);
    assert!(
        hello_started.elapsed() < Duration::from_secs(1),
        "hello slowed down by the spinner"
    );
    let (code, body) = spinner.join().unwrap();
    let took = started.elapsed();
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("exceeded its deadline of 2s"), "{body}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "spin took {took:?}"
    );

    // Allocates without bound: stopped at its 32 MiB instance limit.
    let (code, body) = gate.get("/bad/alloc");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("instance memory limit of 32Mi"), "{body}");
    hello_still_answers(&gate);

    // Unbounded recursion: traps on stack exhaustion.
    let (code, body) = gate.get("/bad/stack");
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("trapped") && body.contains("stack"), "{body}");
    hello_still_answers(&gate);

    // Reads outside its preopened directory are denied; its own /data works.
    let (code, body) = gate.get("/bad/escape");
    assert_eq!(code, 403, "{body}");
    assert!(body.starts_with("denied"), "{body}");
    assert!(body.contains("data-dir: ok"), "{body}");
    assert!(!body.contains("root:"), "{body}");
    hello_still_answers(&gate);

    // After all that, the partition's memory is back and the guest serves again.
    assert_eq!(gate.get("/bad/ok"), (200, "ok\n".to_string()));
    let status = gate.status();
    let bad = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["deviceId"] == "edge-01/bad")
        .unwrap();
    assert_eq!(bad["memory"]["used"], 0, "{bad:#}");
    assert_eq!(bad["activeInstances"], 0, "{bad:#}");
}

#[test]
fn a_full_partition_gets_its_data_dir_read_only() {
    let sandbox = Sandbox::new();
    sandbox.put(
        "misbehave.yaml",
        &deployment(
            "44444444-4444-4444-8444-444444444444",
            "misbehave",
            None,
            &[(
                "misbehave",
                wasmgate_examples::MISBEHAVE,
                "{trigger: {http: {route: /bad}}, data-dir: true}",
            )],
            &[],
        ),
    );
    // A quota of 8 bytes: the first probe file (15 bytes) fills it.
    let gate =
        sandbox.up("[[partition]]\nid = \"tiny\"\ncpu = 1.0\nmemory = \"64Mi\"\nstorage = \"8\"\n");
    let body = gate.wait_for("/bad/escape", 403, "denied");
    assert!(body.contains("data-dir: ok"), "{body}");
    // Usage is measured at most once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let (_, body) = gate.get("/bad/escape");
    assert!(
        !body.contains("data-dir: ok"),
        "a full partition could still write: {body}"
    );
    assert!(body.contains("data-dir:"), "{body}");
}
