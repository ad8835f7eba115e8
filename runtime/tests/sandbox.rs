//! Sandboxing: a misbehaving guest fails its own request with a clear error while
//! deployments in other partitions keep answering.

mod common;

use common::*;
use std::time::{Duration, Instant};

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

fn start() -> (Sandbox, Wasmgate) {
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

fn hello_still_answers(gate: &Wasmgate) {
    assert_eq!(gate.get("/hello"), (200, "Hello, world!\n".to_string()));
}

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
fn cpu_hungry_guest_stays_within_its_share() {
    let (_sandbox, gate) = start();
    // The guest busy-loops for 12 s of wall time in a partition with cpu = 0.5.
    let busy = {
        let url = gate.url("/busy?ms=12000");
        std::thread::spawn(move || http_get(&url))
    };
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_seconds(gate.pid());
    let window = Instant::now();
    let mut slowest = Duration::ZERO;
    while window.elapsed() < Duration::from_secs(10) {
        let asked = Instant::now();
        hello_still_answers(&gate);
        slowest = slowest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let used = (cpu_seconds(gate.pid()) - before) / window.elapsed().as_secs_f64();
    let (code, body) = busy.join().unwrap();
    assert_eq!(code, 200, "{body}");
    // The whole process (guest, hello requests, epoch ticker) stayed near the share,
    // and the guest really was running (a guest cut off early would use ~0).
    assert!(used <= 0.6, "used {used:.2} cores, the share is 0.5");
    assert!(
        used >= 0.35,
        "used only {used:.2} cores: was the busy guest running?"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "other partition slowed to {slowest:?}"
    );
    let status = gate.status();
    let throttled = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["deviceId"] == "edge-01/bad")
        .unwrap()["throttledSeconds"]
        .as_f64()
        .unwrap();
    assert!(
        throttled > 3.0,
        "the partition was throttled only {throttled} s"
    );
}
