//! CPU shares, in a test binary of its own: other tests running alongside would take
//! CPU from the guest and blur what is measured.

mod common;
#[path = "support/sandbox_setup.rs"]
mod sandbox_setup;

use common::*;
use sandbox_setup::{hello_still_answers, start};
use std::time::{Duration, Instant};

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
        used >= 0.2,
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
