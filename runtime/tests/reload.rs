//! SIGHUP reloads the configuration file while serving: partitions added, resized and
//! removed (deployments placed again or failed), listeners moved, the log filter; a
//! configuration that is invalid or needs a restart is refused and the running one
//! stays.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const HELLO_ID: &str = "11111111-1111-4111-8111-111111111111";
const COUNTER_ID: &str = "22222222-2222-4222-8222-222222222222";

fn partition(id: &str, cpu: f64, memory: &str) -> String {
    format!("[[partition]]\nid = \"{id}\"\ncpu = {cpu}\nmemory = \"{memory}\"\nstorage = \"16Mi\"\nconcurrency = 8\n")
}

fn config(partitions: &[String]) -> String {
    format!("[device]\nid = \"edge-01\"\n{}", partitions.concat())
}

fn hello(device: &str) -> String {
    deployment(
        HELLO_ID,
        "hello",
        Some(device),
        &[(
            "hello",
            wasmgate_examples::HELLO,
            "{trigger: {http: {route: /hello}}}",
        )],
        &[],
    )
}

fn counter() -> String {
    deployment(
        COUNTER_ID,
        "counter",
        Some("edge-01/*"),
        &[(
            "counter",
            wasmgate_examples::COUNTER,
            "{trigger: {http: {route: /counter}}}",
        )],
        &[],
    )
}

/// Waits for a stdout line containing `needle`; returns it.
fn wait_line(gate: &Wasmgate, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = gate
            .stdout
            .lock()
            .unwrap()
            .iter()
            .chain(gate.stderr.lock().unwrap().iter())
            .find(|l| l.contains(needle))
            .cloned();
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?}{}",
            gate.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many lines (stdout and stderr) contain `needle` so far.
fn count_lines(gate: &Wasmgate, needle: &str) -> usize {
    let out = gate.stdout.lock().unwrap().clone();
    let err = gate.stderr.lock().unwrap().clone();
    out.iter()
        .chain(err.iter())
        .filter(|l| l.contains(needle))
        .count()
}

fn is_outcome(line: &str) -> bool {
    line.starts_with("wasmgate: configuration reloaded")
        || line.starts_with("wasmgate: configuration reload refused")
}

/// Sends SIGHUP and waits for that reload's outcome line (applied ones go to stdout,
/// refused ones to stderr); `outcomes_before` is how many reloads came before.
fn reload(gate: &Wasmgate, outcomes_before: usize) -> String {
    let outcomes = |log: &std::sync::Mutex<Vec<String>>| -> Vec<String> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| is_outcome(l))
            .cloned()
            .collect()
    };
    let before = (outcomes(&gate.stdout), outcomes(&gate.stderr));
    assert_eq!(before.0.len() + before.1.len(), outcomes_before);
    gate.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (out, err) = (outcomes(&gate.stdout), outcomes(&gate.stderr));
        if let Some(line) = out.get(before.0.len()).or(err.get(before.1.len())) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no reload outcome{}",
            gate.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn partition_ids(status: &serde_json::Value) -> Vec<String> {
    status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["deviceId"].as_str().unwrap().to_owned())
        .collect()
}

fn deployment_state(status: &serde_json::Value, file: &str) -> Option<serde_json::Value> {
    status["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"].as_str().unwrap().ends_with(file))
        .cloned()
}

fn metric(gate: &Wasmgate, series: &str) -> f64 {
    let (_, body) = gate.admin_get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

#[test]
fn partitions_are_added_resized_and_removed_and_deployments_follow() {
    let sandbox = Sandbox::new();
    sandbox.put("hello.yaml", &hello("edge-01/sensors"));
    sandbox.put("counter.yaml", &counter());
    // Directed at a partition the device does not have yet.
    let late = deployment(
        "33333333-3333-4333-8333-333333333333",
        "late",
        Some("edge-01/extra"),
        &[(
            "late",
            wasmgate_examples::HELLO,
            "{trigger: {http: {route: /late}}}",
        )],
        &[],
    );
    sandbox.put("late.yaml", &late);
    let gate = sandbox.up(&config(&[
        partition("apps", 1.0, "256Mi"),
        partition("sensors", 0.5, "128Mi"),
    ]));
    gate.wait_for("/hello", 200, "Hello");
    gate.wait_status("late failed", |s| {
        deployment_state(s, "late.yaml").is_some_and(|d| d["error"]["code"] == "101")
    });
    gate.wait_for("/counter", 200, "hits: 1\n");
    let placed = gate.status();
    let counter_partition = deployment_state(&placed, "counter.yaml").unwrap()["deviceId"].clone();
    assert_eq!(counter_partition, "edge-01/apps", "{placed:#}");

    // `sensors` leaves, `extra` arrives, `apps` shrinks; the file is the only input.
    sandbox.config(&config(&[
        partition("apps", 0.5, "192Mi"),
        partition("extra", 0.5, "64Mi"),
    ]));
    let outcome = reload(&gate, 0);
    assert!(
        outcome.contains("partitions added: edge-01/extra")
            && outcome.contains("partitions removed: edge-01/sensors")
            && outcome.contains("partitions resized: edge-01/apps"),
        "{outcome}{}",
        gate.diagnostics()
    );
    let status = gate.wait_status("the partitions of the new file", |s| {
        partition_ids(s) == ["edge-01/apps", "edge-01/extra"]
            && deployment_state(s, "hello.yaml").is_some_and(|d| d["state"] == "failed")
    });
    // Directed at a partition that left: stopped, and failed with Margo's code.
    let failed = deployment_state(&status, "hello.yaml").unwrap();
    assert_eq!(failed["error"]["code"], "101", "{failed:#}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sensors"),
        "{failed:#}"
    );
    assert_eq!(gate.get("/hello").0, 404);
    // The counter was placed again in the resized `apps`, its data with it.
    let apps = &status["partitions"][0];
    assert_eq!(apps["memory"]["limit"], 192u64 << 20, "{status:#}");
    assert_eq!(apps["cpu"], 0.5);
    assert_eq!(
        deployment_state(&status, "counter.yaml").unwrap()["state"],
        "installed"
    );
    assert_eq!(gate.get("/counter"), (200, "hits: 2\n".to_owned()));
    // The one that waited for `extra` installs without a change of its file.
    gate.wait_status("late installed", |s| {
        deployment_state(s, "late.yaml").is_some_and(|d| d["state"] == "installed")
    });
    assert_eq!(gate.get("/late").0, 200);

    // Pointed at the new partition, the deployment serves from there.
    sandbox.put("hello.yaml", &hello("edge-01/extra"));
    let status = gate.wait_status("hello in extra", |s| {
        deployment_state(s, "hello.yaml")
            .is_some_and(|d| d["state"] == "installed" && d["deviceId"] == "edge-01/extra")
    });
    assert_eq!(gate.get("/hello").0, 200, "{status:#}");
    assert_eq!(
        metric(&gate, "wasmgate_config_reloads_total{result=\"applied\"}"),
        1.0
    );
}

#[test]
fn a_refused_configuration_leaves_the_running_one() {
    let sandbox = Sandbox::new();
    sandbox.put("hello.yaml", &hello("edge-01/apps"));
    let good = config(&[partition("apps", 1.0, "256Mi")]);
    let gate = sandbox.up(&good);
    gate.wait_for("/hello", 200, "Hello");

    let refusals = [
        // Not TOML.
        ("[[partition]\nid = ", "wasmgate.toml"),
        // Valid TOML, invalid configuration: the key is named.
        (
            &*good.replace("cpu = 1", "cpu = -1"),
            "cpu = -1: expected a number of cores",
        ),
        // Only a restart changes who the device is.
        (
            &*good.replace("edge-01", "edge-02"),
            "only a restart applies them: [device] id",
        ),
        // More instances than the pool planned at start.
        (
            &*good.replace("concurrency = 8", "concurrency = 64"),
            "instance pool of 64 instances",
        ),
        // Two partitions with one id.
        (
            &*format!("{good}{}", partition("apps", 0.5, "64Mi")),
            "duplicate partition id",
        ),
    ];
    for (n, (file, reason)) in refusals.iter().enumerate() {
        sandbox.config(file);
        let outcome = reload(&gate, n);
        assert!(
            outcome.starts_with("wasmgate: configuration reload refused")
                && outcome.contains(reason),
            "{reason:?} not in {outcome:?}"
        );
        assert_eq!(gate.get("/hello").0, 200);
        let status = gate.status();
        assert_eq!(partition_ids(&status), ["edge-01/apps"]);
        assert_eq!(status["partitions"][0]["memory"]["limit"], 256u64 << 20);
    }
    assert_eq!(
        metric(&gate, "wasmgate_config_reloads_total{result=\"refused\"}"),
        refusals.len() as f64
    );
    assert_eq!(
        metric(&gate, "wasmgate_config_reloads_total{result=\"applied\"}"),
        0.0
    );
    // Still reloadable afterwards.
    sandbox.config(&good.replace("256Mi", "200Mi"));
    let outcome = reload(&gate, refusals.len());
    assert!(
        outcome.contains("partitions resized: edge-01/apps"),
        "{outcome}"
    );
    gate.wait_status("the resize", |s| {
        s["partitions"][0]["memory"]["limit"] == 200u64 << 20
            && deployment_state(s, "hello.yaml").is_some_and(|d| d["state"] == "installed")
    });
    assert_eq!(gate.get("/hello").0, 200);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn listeners_move_and_the_log_filter_changes() {
    let sandbox = Sandbox::new();
    sandbox.put("hello.yaml", &hello("edge-01/apps"));
    let (port, admin) = (free_port(), free_port());
    let file = |port: u16, admin: u16, filter: &str| {
        format!(
            "log-filter = \"{filter}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\n{}",
            config(&[partition("apps", 1.0, "256Mi")])
        )
    };
    let path = sandbox.config(&file(port, admin, "warn"));
    // The file's filter decides only without WASMGATE_LOG (an empty filter: unset).
    let gate = Wasmgate::spawn_logging(
        Command::new(BIN),
        &[
            "up",
            "--config",
            path.to_str().unwrap(),
            "--deployments",
            sandbox.deployments().to_str().unwrap(),
            "--state-dir",
            sandbox.state().to_str().unwrap(),
        ],
        "",
    );
    gate.wait_for("/hello", 200, "Hello");
    // `warn`: the per-request info lines are not logged.
    let served = "deployment installed";
    assert_eq!(count_lines(&gate, served), 0, "{}", gate.diagnostics());

    let (new_port, new_admin) = (free_port(), free_port());
    sandbox.config(&file(new_port, new_admin, "info"));
    let outcome = reload(&gate, 0);
    assert!(
        outcome.contains(&format!("listening on 127.0.0.1:{new_port}")),
        "{outcome}"
    );
    wait_line(
        &gate,
        &format!("wasmgate: admin on http://127.0.0.1:{new_admin}"),
    );
    let (code, body) = http_get(&format!("http://127.0.0.1:{new_port}/hello"));
    assert_eq!((code, body.contains("Hello")), (200, true), "{body}");
    let (code, _) = http_get(&format!("http://127.0.0.1:{new_admin}/healthz"));
    assert_eq!(code, 200);
    // The old addresses stop accepting once drained (nothing was in flight).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        || std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
    {
        assert!(Instant::now() < deadline, "the old listeners still accept");
        std::thread::sleep(Duration::from_millis(50));
    }
    // `info` now: a change of the deployment is logged.
    sandbox.put(
        "hello.yaml",
        &hello("edge-01/apps").replace("revision: \"0.1.0\"", "revision: \"0.1.1\""),
    );
    wait_line(&gate, served);
}

#[test]
fn without_a_config_file_a_reload_says_so_and_changes_nothing() {
    let sandbox = Sandbox::new();
    let gate = Wasmgate::start(&[
        "up",
        "--deployments",
        sandbox.deployments().to_str().unwrap(),
        "--state-dir",
        sandbox.state().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let _ = gate.wait_status("the first pass", |_| true);
    let outcome = reload(&gate, 0);
    assert!(outcome.contains("started without --config"), "{outcome}");
    // SIGHUP does not end the process (its default action would).
    let _ = gate.status();
}
