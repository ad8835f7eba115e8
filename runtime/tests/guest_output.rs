//! A guest's stdout and stderr become log events of its component (a Rust panic message
//! included), under a per-component line budget.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn start() -> (Sandbox, Wasmgate) {
    let (sandbox, gate) = serve_one(
        (
            "misbehave",
            wasmgate_examples::MISBEHAVE,
            "{trigger: {http: {route: /misbehave}}}",
        ),
        "",
    );
    gate.wait_for("/misbehave/ok", 200, "ok");
    (sandbox, gate)
}

/// Log lines of the host that contain every one of `needles`, waiting up to 10 s for
/// at least `at_least` of them.
fn log_lines(gate: &Wasmgate, needles: &[&str], at_least: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<String> = gate
            .stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
            .collect();
        if found.len() >= at_least || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stdout_and_a_panic_message_reach_the_log() {
    let (_sandbox, gate) = start();
    let (code, _) = gate.get("/misbehave/panic?msg=boiler-7");
    assert_eq!(code, 500);
    let printed = log_lines(&gate, &["about to panic: boiler-7", "context=stdout"], 1);
    assert_eq!(printed.len(), 1, "stdout line missing");
    assert!(
        printed[0].contains("component=misbehave") && printed[0].contains("partition=edge-01/apps"),
        "{}",
        printed[0]
    );
    let panic = log_lines(&gate, &["guest panic: boiler-7", "context=stderr"], 1);
    assert!(!panic.is_empty(), "panic message missing");
    assert!(panic[0].contains("WARN"), "{}", panic[0]);
}

#[test]
fn a_chatty_guest_is_held_to_its_line_budget() {
    let (_sandbox, gate) = start();
    let started = Instant::now();
    assert_eq!(
        gate.get("/misbehave/shout?lines=5000"),
        (200, "shouted 5000 lines\n".to_string())
    );
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let shouted = log_lines(&gate, &["shout ", "context=stdout"], 1000).len();
    // The burst of 1000, plus 100 per second for as long as the request ran.
    let most = 1000 + (100.0 * (elapsed + 0.3)).ceil() as usize;
    assert!(
        (1000..=most).contains(&shouted),
        "{shouted} of 5000 lines logged in {elapsed:.2}s (expected 1000 to {most})"
    );
    // Each line let through after a dropped spell is preceded by the count dropped;
    // after a pause, one more line settles the account.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(gate.get("/misbehave/shout?lines=1").0, 200);
    let logged = log_lines(&gate, &["shout ", "context=stdout"], shouted + 1).len();
    assert_eq!(
        logged,
        shouted + 1,
        "the line after the pause was not logged"
    );
    let summaries = log_lines(&gate, &["guest log lines dropped"], 1);
    let dropped: usize = summaries
        .iter()
        .map(|line| {
            line.split("dropped=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no count in {line}"))
        })
        .sum();
    assert_eq!(logged + dropped, 5001, "{summaries:#?}");
}
