//! Hostile files in local mode (issue 9, item 1): special files as component
//! repositories, huge YAMLs and links out of the deployments folder. Each is refused with
//! a clear code while memory, CPU and the reconciler stay bounded and the rest serves.

mod common;

use common::*;
use std::time::{Duration, Instant};

const HELLO_ID: &str = "11111111-1111-4111-8111-111111111111";
const OTHER_ID: &str = "22222222-2222-4222-8222-222222222222";
const HOSTILE_ID: &str = "33333333-3333-4333-8333-333333333333";
const INNER_ID: &str = "44444444-4444-4444-8444-444444444444";

/// How long a refusal or an unrelated change may take to show.
const PROMPT: Duration = Duration::from_secs(15);
/// How much the host's RSS may grow while a hostile file sits there.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 << 10;

fn config() -> String {
    // Ticks 5x faster than the default, so a per-tick cost shows five times as much.
    format!("watch-interval = \"100ms\"\n{TWO_PARTITIONS}")
}

fn hello(id: &str, name: &str, route: &str, repository: &str) -> String {
    let ext = format!("{{trigger: {{http: {{route: {route}}}}}}}");
    deployment(
        id,
        name,
        Some("edge-01/*"),
        &[("hello", repository, &ext)],
        &[],
    )
}

fn state_of<'a>(status: &'a serde_json::Value, file: &str) -> Option<&'a serde_json::Value> {
    status["deployments"]
        .as_array()?
        .iter()
        .find(|d| d["source"].as_str().is_some_and(|s| s.ends_with(file)))
}

fn code_of(status: &serde_json::Value, file: &str) -> Option<String> {
    state_of(status, file)
        .and_then(|d| d["error"]["code"].as_str())
        .map(str::to_owned)
}

fn installed(status: &serde_json::Value, file: &str) -> bool {
    state_of(status, file).is_some_and(|d| d["state"] == "installed")
}

/// Waits for `check`, failing when it takes longer than [`PROMPT`].
fn promptly(
    gate: &Wasmgate,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    let status = gate.wait_status(what, check);
    assert!(
        start.elapsed() < PROMPT,
        "{what} took {:?}",
        start.elapsed()
    );
    status
}

/// Another deployment still applies, and `/healthz` says the host is healthy.
fn still_reconciles(sandbox: &Sandbox, gate: &Wasmgate) {
    sandbox.put(
        "other.yaml",
        &hello(OTHER_ID, "other", "/other", wasmgate_examples::HELLO),
    );
    let start = Instant::now();
    gate.wait_for("/other", 200, "Hello");
    assert!(
        start.elapsed() < PROMPT,
        "an unrelated change took {:?} to apply",
        start.elapsed()
    );
    // Routes go live inside the reconcile pass; `/healthz` turns 200 when the pass ends.
    let deadline = Instant::now() + PROMPT;
    loop {
        let (code, body) = gate.admin_get("/healthz");
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still {code} after {PROMPT:?}: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the host serving `/hello` and returns it with its settled RSS.
fn start_with_hello(sandbox: &Sandbox) -> (Wasmgate, u64) {
    sandbox.put(
        "hello.yaml",
        &hello(HELLO_ID, "hello", "/hello", wasmgate_examples::HELLO),
    );
    let gate = sandbox.up(&config());
    gate.wait_for("/hello", 200, "Hello");
    let rss = rss_kib(gate.pid());
    (gate, rss)
}

fn assert_rss_bounded(gate: &Wasmgate, baseline_kib: u64, what: &str) {
    let now = rss_kib(gate.pid());
    let growth = now.saturating_sub(baseline_kib);
    eprintln!("{what}: RSS {baseline_kib} KiB -> {now} KiB");
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "{what}: RSS grew by {growth} KiB (from {baseline_kib} KiB)"
    );
}

#[test]
fn dev_zero_repository_is_refused_without_reading() {
    let sandbox = Sandbox::new();
    let (gate, baseline) = start_with_hello(&sandbox);
    sandbox.put(
        "zero.yaml",
        &hello(HOSTILE_ID, "zero", "/zero", "/dev/zero"),
    );
    let status = promptly(&gate, "/dev/zero refused", |s| {
        code_of(s, "zero.yaml").is_some()
    });
    assert_eq!(
        code_of(&status, "zero.yaml").as_deref(),
        Some("wasmgate.not-regular"),
        "{status:#}"
    );
    let message = state_of(&status, "zero.yaml").unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("character device"), "{message}");
    // Several more ticks with the file there: still nothing read.
    std::thread::sleep(Duration::from_secs(1));
    assert_rss_bounded(&gate, baseline, "/dev/zero repository");
    still_reconciles(&sandbox, &gate);
    assert_eq!(gate.get("/hello").0, 200);
}

#[test]
fn fifo_repository_does_not_block_the_reconciler() {
    let sandbox = Sandbox::new();
    let fifo = sandbox.path().join("pipe.wasm");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Present from the first pass, which used to hang in open() forever.
    sandbox.put(
        "fifo.yaml",
        &hello(HOSTILE_ID, "fifo", "/fifo", fifo.to_str().unwrap()),
    );
    let start = Instant::now();
    let (gate, baseline) = start_with_hello(&sandbox);
    let status = promptly(&gate, "FIFO refused", |s| {
        code_of(s, "fifo.yaml").is_some() && installed(s, "hello.yaml")
    });
    eprintln!(
        "first pass with a FIFO repository done after {:?}",
        start.elapsed()
    );
    assert_eq!(
        code_of(&status, "fifo.yaml").as_deref(),
        Some("wasmgate.not-regular"),
        "{status:#}"
    );
    assert!(state_of(&status, "fifo.yaml").unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("FIFO"));
    still_reconciles(&sandbox, &gate);
    // Deleting the YAML takes it away, as for any other file.
    sandbox.delete("fifo.yaml");
    promptly(&gate, "FIFO deployment gone", |s| {
        state_of(s, "fifo.yaml").is_none()
    });
    assert_rss_bounded(&gate, baseline, "FIFO repository");
}

#[test]
fn huge_yamls_cost_nothing_per_tick() {
    let sandbox = Sandbox::new();
    let (gate, baseline) = start_with_hello(&sandbox);
    // 50 MB of real content, and 2 GB that reads as zeros (sparse: costs no disk).
    let comment_line = format!("# {}\n", "x".repeat(98));
    let fifty = comment_line.repeat(50 * 1024 * 1024 / comment_line.len());
    std::fs::write(sandbox.deployments().join("fifty.yaml"), fifty).unwrap();
    let two_gb = std::fs::File::create(sandbox.deployments().join("two-gb.yaml")).unwrap();
    two_gb.set_len(2 << 30).unwrap();
    drop(two_gb);

    // With both files sitting there, from the first ticks that see them: CPU of an
    // idle host, RSS flat.
    std::thread::sleep(Duration::from_millis(500));
    let (cpu0, t0) = (cpu_seconds(gate.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let share = (cpu_seconds(gate.pid()) - cpu0) / t0.elapsed().as_secs_f64();
    eprintln!(
        "CPU with huge YAMLs present: {:.2}% of a core",
        share * 100.0
    );
    assert!(
        share < 0.05,
        "{:.1}% of a core with huge YAMLs in the folder",
        share * 100.0
    );
    assert_rss_bounded(&gate, baseline, "50 MB + 2 GB YAMLs");
    let status = promptly(&gate, "huge YAMLs refused", |s| {
        code_of(s, "fifty.yaml").is_some() && code_of(s, "two-gb.yaml").is_some()
    });
    for file in ["fifty.yaml", "two-gb.yaml"] {
        assert_eq!(
            code_of(&status, file).as_deref(),
            Some("wasmgate.too-large"),
            "{status:#}"
        );
        let message = state_of(&status, file).unwrap()["error"]["message"]
            .as_str()
            .unwrap();
        assert!(message.contains("limited to 1048576 bytes"), "{message}");
    }

    still_reconciles(&sandbox, &gate);

    // Cut down to size, the same file is read and applied.
    sandbox.put(
        "fifty.yaml",
        &hello(HOSTILE_ID, "fifty", "/fifty", wasmgate_examples::HELLO),
    );
    let start = Instant::now();
    gate.wait_for("/fifty", 200, "Hello");
    assert!(start.elapsed() < PROMPT);
}

#[test]
fn symlinked_yaml_to_passwd_is_refused_and_status_quotes_nothing() {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let sandbox = Sandbox::new();
    let dir = sandbox.deployments();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd.yaml")).unwrap();
    // The same content as a regular file is read, fails to parse, and is not quoted.
    std::fs::write(dir.join("copy.yaml"), &passwd).unwrap();
    // Links that stay inside the folder are followed (ConfigMap-style layouts).
    std::fs::create_dir(dir.join("..data")).unwrap();
    std::fs::write(
        dir.join("..data").join("inner.yaml"),
        hello(INNER_ID, "inner", "/inner", wasmgate_examples::HELLO),
    )
    .unwrap();
    std::os::unix::fs::symlink("..data/inner.yaml", dir.join("inner.yaml")).unwrap();
    let (gate, baseline) = start_with_hello(&sandbox);

    let status = promptly(&gate, "passwd refused", |s| {
        code_of(s, "passwd.yaml").is_some()
            && code_of(s, "copy.yaml").is_some()
            && installed(s, "inner.yaml")
    });
    assert_eq!(
        code_of(&status, "passwd.yaml").as_deref(),
        Some("wasmgate.symlink"),
        "{status:#}"
    );
    assert_eq!(
        code_of(&status, "copy.yaml").as_deref(),
        Some("wasmgate.invalid"),
        "{status:#}"
    );
    assert_eq!(gate.get("/inner").0, 200);

    let (code, body) = gate.admin_get("/status");
    assert_eq!(code, 200);
    let (_, health) = gate.admin_get("/healthz");
    let logs = gate.diagnostics();
    let mut checked = 0;
    for line in passwd.lines().filter(|l| l.contains(':')) {
        // The user name and the fields after it: never any part of a line.
        let head: String = line.chars().take(12).collect();
        for (what, text) in [("/status", &body), ("/healthz", &health), ("logs", &logs)] {
            assert!(
                !text.contains(line) && !text.contains(&head),
                "{what} quotes /etc/passwd ({head:?}): {text}"
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "/etc/passwd has no entries to look for");
    assert!(!body.contains("root:x:"), "{body}");
    // The position stays.
    let parse_error = state_of(&status, "copy.yaml").unwrap()["error"]["message"]
        .as_str()
        .unwrap();
    assert!(parse_error.contains("line 1 column 1"), "{parse_error}");
    assert_rss_bounded(&gate, baseline, "passwd links");
    still_reconciles(&sandbox, &gate);
}
