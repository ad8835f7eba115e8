//! Instance reuse (`x-wasmgate-extensions.reuse`), end to end: the `misbehave` guest's
//! `count` behaviour answers how many requests its instance has served, so a fresh
//! instance answers 1 and a reused one more. The partition runs one request at a time,
//! so a request is admitted only after the one before it has parked its instance and
//! every sequence below is exact.

mod common;

use common::*;
use std::time::Duration;

const CONFIG: &str = "[device]\nid = \"edge-01\"\n[[partition]]\nid = \"apps\"\ncpu = 1.0\nmemory = \"256Mi\"\nstorage = \"16Mi\"\nconcurrency = 1\n";

/// `misbehave` on `/misbehave` with `extra` extension fields (`, reuse: ...`), plus
/// `plain` (a second deployment without reuse, on `/other`) when asked for.
fn serve(extra: &str, plain: bool) -> (Sandbox, Wasmgate) {
    let sandbox = Sandbox::new();
    let extensions = format!("{{trigger: {{http: {{route: /misbehave}}}}{extra}}}");
    sandbox.put(
        "misbehave.yaml",
        &deployment(
            "11111111-1111-4111-8111-111111111111",
            "misbehave",
            None,
            &[("misbehave", wasmgate_examples::MISBEHAVE, &extensions)],
            &[],
        ),
    );
    if plain {
        sandbox.put(
            "other.yaml",
            &deployment(
                "22222222-2222-4222-8222-222222222222",
                "other",
                None,
                &[(
                    "other",
                    wasmgate_examples::MISBEHAVE,
                    "{trigger: {http: {route: /other}}}",
                )],
                &[],
            ),
        );
    }
    let gate = sandbox.up(CONFIG);
    gate.wait_for("/misbehave/ok", 200, "ok");
    if plain {
        gate.wait_for("/other/ok", 200, "ok");
    }
    (sandbox, gate)
}

/// What `count` answers on `prefix`.
fn count(gate: &Wasmgate, prefix: &str) -> u32 {
    let (code, body) = gate.get(&format!("{prefix}/count"));
    assert_eq!(code, 200, "{body}{}", gate.diagnostics());
    body.trim()
        .strip_prefix("count ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {body:?}"))
}

fn counts(gate: &Wasmgate, n: usize) -> Vec<u32> {
    (0..n).map(|_| count(gate, "/misbehave")).collect()
}

#[test]
fn without_reuse_every_request_gets_a_fresh_instance() {
    let (_sandbox, gate) = serve("", false);
    assert_eq!(counts(&gate, 4), [1, 1, 1, 1]);
}

#[test]
fn a_reused_instance_serves_up_to_its_request_limit_then_a_fresh_one_follows() {
    let (_sandbox, gate) = serve(", reuse: {requests: 4, idle-timeout: 60s}", false);
    // `wait_for`'s `ok` was the first request of the first instance.
    assert_eq!(counts(&gate, 8), [2, 3, 4, 1, 2, 3, 4, 1]);
}

#[test]
fn a_trap_a_memory_kill_or_a_deadline_discards_the_instance() {
    let (_sandbox, gate) = serve(
        ", reuse: {requests: 1000, idle-timeout: 60s}, limits: {timeout: 2s, memory: 32Mi}",
        false,
    );
    assert_eq!(counts(&gate, 2), [2, 3]);
    for (behaviour, status) in [("panic", 500), ("alloc", 503), ("spin", 504)] {
        let (code, body) = gate.get(&format!("/misbehave/{behaviour}"));
        assert_eq!(code, status, "{behaviour}: {body}{}", gate.diagnostics());
        assert_eq!(
            counts(&gate, 2),
            [1, 2],
            "after {behaviour} a fresh instance serves"
        );
    }
}

#[test]
fn each_request_of_a_reused_instance_has_its_own_deadline() {
    let (_sandbox, gate) = serve(
        ", reuse: {requests: 1000, idle-timeout: 60s}, limits: {timeout: 1s}",
        false,
    );
    // Three requests of 0.6 s each on one instance: 1.8 s in all, each within 1 s.
    for _ in 0..3 {
        let (code, body) = gate.get("/misbehave/busy?ms=600");
        assert_eq!(code, 200, "{body}{}", gate.diagnostics());
    }
    assert_eq!(count(&gate, "/misbehave"), 5);
}

#[test]
fn an_idle_instance_ends_after_its_idle_timeout() {
    let (_sandbox, gate) = serve(", reuse: {requests: 1000, idle-timeout: 300ms}", false);
    assert_eq!(counts(&gate, 2), [2, 3]);
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(counts(&gate, 2), [1, 2]);
}

#[test]
fn a_parked_instance_makes_way_for_another_deployments_request() {
    // One slot: the instance parked by `/misbehave` must end for `/other` to run (the
    // pool has no second slot), as it did for `/other/ok` at start.
    let (_sandbox, gate) = serve(", reuse: {requests: 1000, idle-timeout: 60s}", true);
    assert_eq!(counts(&gate, 3), [1, 2, 3]);
    assert_eq!(count(&gate, "/other"), 1);
    assert_eq!(counts(&gate, 2), [1, 2]);
}

#[test]
fn wasmgate_run_reuses_instances_when_asked() {
    let sandbox = Sandbox::new();
    let gate = Wasmgate::start(&[
        "run",
        wasmgate_examples::MISBEHAVE,
        "--reuse",
        "3",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        sandbox.state().to_str().unwrap(),
    ]);
    gate.wait_for("/ok", 200, "ok");
    // `run`'s default partition admits several requests at once, so a request may
    // outrun the parking of the one before: only the bound is exact here.
    let mut seen = Vec::new();
    while seen.len() < 60 && !seen.contains(&3) {
        seen.push(count(&gate, ""));
    }
    assert!(seen.iter().all(|&n| (1..=3).contains(&n)), "{seen:?}");
    assert!(seen.contains(&3), "no instance served 3 requests: {seen:?}");
    for _ in 0..12 {
        let n = count(&gate, "");
        assert!(
            (1..=3).contains(&n),
            "served {n} requests, more than --reuse 3"
        );
    }
}
