//! `/metrics` of the real binary after real traffic, checked with the Prometheus
//! project's own parser (`promtool check metrics`, Debian package `prometheus`), and
//! deployment names that would forge series refused by validation.

mod common;

use common::{agent, deployment, Sandbox, Wasmgate};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wasmgate::telemetry::{FailureKind, Format, Metrics, PartitionSample};

/// Runs `promtool check metrics` on `text`; fails the test when promtool is missing
/// (never a silent skip) or finds a problem.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => panic!(
            "promtool is required for this test and could not be started ({err}); install it \
             with `apt-get install -y --no-install-recommends prometheus`"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics failed ({}):\n{report}\n--- input ---\n{text}",
        out.status
    );
}

/// The value of the sample line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn must(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

const CONFIG: &str = r#"
[device]
id = "edge-01"
[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
[[partition]]
id = "tight"
cpu = 1.0
memory = "64Mi"
storage = "16Mi"
instance-memory = "16Mi"
concurrency = 1
timeout = "1s"
queue-timeout = "50ms"
"#;

/// A name that, written into the text format unescaped, adds a series of its own.
const FORGING_NAME: &str = "evil\"} 1\nwasmgate_invocations_total{deployment=\"forged";

fn source_of<'a>(status: &'a serde_json::Value, file: &str) -> Option<&'a serde_json::Value> {
    status["deployments"]
        .as_array()?
        .iter()
        .find(|d| d["source"].as_str().is_some_and(|s| s.ends_with(file)))
}

fn served(gate: &Wasmgate) -> serde_json::Value {
    gate.wait_status("hello and misbehave installed, evil refused", |s| {
        ["hello.yaml", "misbehave.yaml"]
            .iter()
            .all(|f| source_of(s, f).is_some_and(|d| d["state"] == "installed"))
            && source_of(s, "evil.yaml").is_some_and(|d| d["state"] == "failed")
    })
}

#[test]
fn metrics_after_traffic_pass_promtool_and_cannot_be_forged() {
    let sandbox = Sandbox::new();
    sandbox.put(
        "hello.yaml",
        &deployment(
            "11111111-1111-4111-8111-111111111111",
            "hello",
            Some("edge-01/apps"),
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
            Some("edge-01/tight"),
            &[(
                "misbehave",
                wasmgate_examples::MISBEHAVE,
                "{trigger: {http: {route: /bad}}}",
            )],
            &[],
        ),
    );
    // The name goes in as a YAML double-quoted string, so `"` and the newline are real.
    let evil = deployment(
        "33333333-3333-4333-8333-333333333333",
        "evil",
        Some("edge-01/apps"),
        &[(
            "evil",
            wasmgate_examples::HELLO,
            "{trigger: {http: {route: /evil}}}",
        )],
        &[],
    )
    .replacen(
        "  name: evil\n",
        &format!("  name: {}\n", serde_json::to_string(FORGING_NAME).unwrap()),
        1,
    );
    sandbox.put("evil.yaml", &evil);
    let gate = sandbox.up(CONFIG);
    let status = served(&gate);

    // The forging name is refused, naming the field, and nothing of it reaches the
    // status or the logs raw.
    let refused = source_of(&status, "evil.yaml").unwrap();
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("metadata.name"), "{message}");
    assert!(!message.contains('\n'), "{message:?}");
    assert_eq!(gate.get("/evil").0, 404);

    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(gate.get("/hello").0, 200);
    }
    // The hostile guest: a trap, a memory denial, a deadline kill and, while that one
    // holds the partition's only slot, a queue rejection.
    assert_eq!(gate.get("/bad/ok").0, 200);
    let (code, body) = gate.get("/bad/stack");
    assert_eq!(code, 500, "{body}");
    let (code, body) = gate.get("/bad/alloc");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("memory limit"), "{body}");
    let spin_url = gate.url("/bad/spin");
    let spinner = std::thread::spawn(move || common::http_get(&spin_url));
    let mut rejected = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !rejected && Instant::now() < deadline && !spinner.is_finished() {
        let (code, body) = gate.get("/bad/ok");
        rejected = code == 503 && body.contains("concurrency limit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(rejected, "no queue rejection while /bad/spin held the slot");
    let (code, body) = spinner.join().unwrap();
    assert_eq!(code, 504, "{body}");
    let traffic = started.elapsed();

    let (code, text) = gate.admin_get("/metrics");
    assert_eq!(code, 200, "{text}");
    promtool_check(&text);

    let hello = r#"{deployment="hello",component="hello",partition="edge-01/apps"}"#;
    assert_eq!(
        must(&text, &format!("wasmgate_invocations_total{hello}")),
        20.0
    );
    let bad = r#"deployment="misbehave",component="misbehave",partition="edge-01/tight""#;
    for (kind, at_least) in [
        ("trap", 1.0),
        ("memory", 1.0),
        ("deadline", 1.0),
        ("queue", 1.0),
    ] {
        let series = format!("wasmgate_invocation_failures_total{{{bad},kind=\"{kind}\"}}");
        assert!(must(&text, &series) >= at_least, "{series} in\n{text}");
    }
    let errors = format!("wasmgate_invocation_failures_total{{{bad},kind=\"error\"}}");
    assert_eq!(must(&text, &errors), 0.0);
    // Latency: every invocation is in the histogram; none of hello's took longer than
    // the whole traffic phase, and the deadline kill shows as >= 1 s.
    let count = must(
        &text,
        &format!("wasmgate_invocation_duration_seconds_count{hello}"),
    );
    assert_eq!(count, 20.0);
    let sum = must(
        &text,
        &format!("wasmgate_invocation_duration_seconds_sum{hello}"),
    );
    assert!(sum > 0.0 && sum < traffic.as_secs_f64(), "sum {sum}");
    let bad_sum = must(
        &text,
        &format!("wasmgate_invocation_duration_seconds_sum{{{bad}}}"),
    );
    assert!(
        bad_sum >= 1.0,
        "the 1 s deadline kill is missing: {bad_sum}"
    );
    let colds = must(&text, &format!("wasmgate_cold_start_seconds_count{hello}"));
    assert_eq!(colds, 20.0, "one instantiation per request");
    // Budgets of both partitions.
    for (series, value) in [
        (
            r#"wasmgate_partition_memory_limit_bytes{partition="edge-01/tight"}"#,
            64.0 * 1048576.0,
        ),
        (
            r#"wasmgate_partition_storage_quota_bytes{partition="edge-01/apps"}"#,
            16.0 * 1048576.0,
        ),
        (
            r#"wasmgate_partition_concurrency_limit{partition="edge-01/tight"}"#,
            1.0,
        ),
        (
            r#"wasmgate_partition_active_instances{partition="edge-01/apps"}"#,
            0.0,
        ),
    ] {
        assert_eq!(must(&text, series), value, "{series}");
    }
    assert!(sample(
        &text,
        r#"wasmgate_partition_cpu_throttled_seconds_total{partition="edge-01/apps"}"#
    )
    .is_some());
    assert!(sample(
        &text,
        r#"wasmgate_partition_memory_bytes{partition="edge-01/apps"}"#
    )
    .is_some());
    // Reconcile outcomes and the AOT cache (a fresh state directory: all misses).
    assert!(
        must(
            &text,
            r#"wasmgate_reconcile_deployments_total{outcome="installed"}"#
        ) >= 2.0
    );
    assert!(
        must(
            &text,
            r#"wasmgate_reconcile_deployments_total{outcome="failed"}"#
        ) >= 1.0
    );
    assert!(must(&text, "wasmgate_reconcile_duration_seconds_count") >= 1.0);
    assert!(must(&text, "wasmgate_aot_cache_misses_total") >= 2.0);

    // Nothing forged: one invocation series per running workload, none from the name.
    let rows = text
        .lines()
        .filter(|l| l.starts_with("wasmgate_invocations_total{"))
        .count();
    assert_eq!(rows, 2, "{text}");
    assert!(!text.contains("forged"), "{text}");
    let logs = gate.diagnostics();
    assert!(
        logs.contains("metadata.name"),
        "the refusal is logged: {logs}"
    );
    for line in logs.lines() {
        assert!(
            !line.starts_with("wasmgate_invocations_total"),
            "a log line was forged: {line:?}"
        );
    }

    // OpenMetrics for scrapers that ask for it.
    let agent = agent(Duration::from_secs(30));
    let mut response = agent
        .get(&format!("http://{}/metrics", gate.admin.unwrap()))
        .header("Accept", "application/openmetrics-text; version=1.0.0")
        .call()
        .unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let open = response.body_mut().read_to_string().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    gate.stop();
}

/// The escaping itself, with label values no validated document can produce, through
/// the same rendering `/metrics` uses and the same parser.
#[test]
fn hostile_label_values_render_escaped_and_parse() {
    let metrics = Metrics::new();
    let w = metrics.workload(FORGING_NAME, "back\\slash", "edge-01/p\"1");
    w.invocation(Duration::from_millis(4), Some(FailureKind::Trap));
    w.cold_start(Duration::from_micros(12));
    let partitions = vec![PartitionSample {
        partition: "edge-01/\"quoted\"\nline".into(),
        memory_limit: 1 << 20,
        concurrency_limit: 2,
        ..Default::default()
    }];
    let text = metrics.render(partitions.clone(), Format::Prometheus);
    promtool_check(&text);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("wasmgate_invocations_total"))
        .collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(
        rows[0],
        r#"wasmgate_invocations_total{deployment="evil\"} 1\nwasmgate_invocations_total{deployment=\"forged",component="back\\slash",partition="edge-01/p\"1"} 1"#
    );
    assert!(
        text.contains(r#"{partition="edge-01/\"quoted\"\nline"} 2"#),
        "{text}"
    );
    let open = metrics.render(partitions, Format::OpenMetrics);
    assert!(
        open.contains(r#"deployment="evil\"} 1\nwasmgate_invocations_total{deployment=\"forged""#),
        "{open}"
    );
}
