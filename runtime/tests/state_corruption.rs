//! The accepted-manifest record is the replay guard (`manifestVersion` only goes up).
//! The real binary in WFM mode (rc3, the strict mock WFM on loopback) is stopped, the
//! record is damaged on disk (one flipped byte) or made unreadable (a directory in its
//! place: unreadable for root too), and the mock then serves an OLDER manifest version.
//! The restarted host must accept nothing, contact nobody, keep serving what was
//! installed, and say why in `/status` and `/metrics`; what the operator does next
//! (restore the record, or delete it) decides how it resumes.

mod common;

use common::pki::Pki;
use common::wfm::{Fixture, MockOptions, MockWfm, Profile};
use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const HELLO_ID: &str = "cccccccc-0000-4000-8000-000000000001";
const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    sandbox: Sandbox,
    _pki: Pki,
    mock: MockWfm,
    config: String,
}

fn setup() -> Setup {
    let sandbox = Sandbox::new();
    let pki = Pki::new("example.org", "wfm-1", "edge-01");
    let files = pki.write_client_files(&sandbox.path().join("pki"));
    let mock = MockWfm::start_with(Profile::Rc3, &pki, MockOptions::default());
    let config = format!(
        r#"
[device]
id = "edge-01"
otel-collector = true

[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"

[wfm]
url = "{}"
poll-interval = "300ms"
{}
"#,
        mock.base_url(),
        files.rc3_credentials()
    );
    Setup {
        sandbox,
        _pki: pki,
        mock,
        config,
    }
}

fn hello(greeting: &str) -> [(&'static str, String); 1] {
    [(
        HELLO_ID,
        deployment(
            HELLO_ID,
            "hello",
            Some("edge-01/apps"),
            &[(
                "hello",
                &format!("file://{}", wasmgate_examples::HELLO),
                "{trigger: {http: {route: /hello}}}",
            )],
            &[("greeting", greeting, "greeting", "hello")],
        ),
    )]
}

/// Whether a report from index `since` on says hello is installed at `version`.
fn installed_at(mock: &MockWfm, since: usize, version: u64) -> bool {
    mock.statuses().iter().skip(since).any(|s| {
        s["deploymentId"] == HELLO_ID
            && s["status"]["state"] == "installed"
            && s["adoptedManifestVersion"] == version
    })
}

fn state_polls(mock: &MockWfm) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/deployments")
        .count()
}

/// What the first run left: v1, the version the mock serves again afterwards (a
/// replay), the record's path, and how many status reports the mock had by then.
struct Stopped {
    v1: u64,
    record: PathBuf,
    reports: usize,
}

/// Installs hello "One" (v1) then "Two" (v2) and stops the host.
fn install_two_versions_then_stop(s: &Setup) -> Stopped {
    let gate = s.sandbox.up(&s.config);
    s.mock.set_deployments(&hello("One"));
    let v1 = s.mock.manifest_version();
    s.mock
        .wait_until("v1 installed", WAIT, |m| installed_at(m, 0, v1));
    s.mock.set_deployments(&hello("Two"));
    let v2 = s.mock.manifest_version();
    s.mock
        .wait_until("v2 installed", WAIT, |m| installed_at(m, 0, v2));
    gate.wait_for("/hello", 200, "Two, world!");
    gate.stop();
    // The older content, under the older version: what a replaying WFM (or an attacker
    // in its place) would serve.
    s.mock
        .set_fixture(Fixture::ManifestVersionRollback { to: v1 });
    s.mock.set_deployments(&hello("Old"));
    s.mock.clear_records();
    Stopped {
        v1,
        record: s.sandbox.state().join("wfm/accepted"),
        reports: s.mock.statuses().len(),
    }
}

/// The restarted host with an untrusted record: serves v2, says why, talks to nobody.
fn assert_blocked(s: &Setup, gate: &Wasmgate, stopped: &Stopped, reason: &str) {
    let record = &stopped.record;
    let status = gate.wait_status("the unreadable record in /status", |st| {
        st["wfm"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("accepted state unreadable"))
    });
    let error = status["wfm"]["lastError"].as_str().unwrap();
    assert!(
        error.contains(&record.display().to_string()) && error.contains(reason),
        "{error}"
    );
    assert_eq!(gate.get("/hello"), (200, "Two, world!\n".to_string()));
    let (_, metrics) = gate.admin_get("/metrics");
    assert!(
        metrics.contains("wasmgate_wfm_accepted_state_unreadable 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wasmgate_wfm_state_damaged_total{record=\"accepted\"} 1"),
        "{metrics}"
    );
    // Several retry rounds (300 ms, 600 ms, 1.2 s): still nothing asked or accepted.
    std::thread::sleep(Duration::from_secs(3));
    let requests: Vec<String> = s
        .mock
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(requests.is_empty(), "contacted the WFM: {requests:?}");
    assert_eq!(s.mock.statuses().len(), stopped.reports);
    assert_eq!(gate.get("/hello"), (200, "Two, world!\n".to_string()));
}

#[test]
fn a_damaged_record_accepts_nothing_until_the_operator_restores_it() {
    let s = setup();
    let stopped = install_two_versions_then_stop(&s);
    let (v1, record) = (stopped.v1, stopped.record.clone());
    let good = std::fs::read(&record).unwrap();
    let mut damaged = good.clone();
    let at = damaged.len() - 5;
    damaged[at] ^= 0x01;
    std::fs::write(&record, &damaged).unwrap();

    let gate = s.sandbox.up(&s.config);
    assert_blocked(&s, &gate, &stopped, "corrupt");
    assert_eq!(std::fs::read(&record).unwrap(), damaged, "left as it was");

    // Restored from a backup: the host reads it on its next retry, polls again, and
    // refuses the replayed older version with the guard it has back.
    std::fs::write(&record, &good).unwrap();
    let restored = Instant::now();
    s.mock
        .wait_until("polls after the restore", WAIT, |m| state_polls(m) >= 3);
    eprintln!("resumed {:?} after the restore", restored.elapsed());
    let status = gate.wait_status("the replay refused", |st| {
        st["wfm"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("not greater than the accepted"))
    });
    assert_eq!(gate.get("/hello"), (200, "Two, world!\n".to_string()));
    assert!(
        !s.mock
            .statuses()
            .iter()
            .skip(stopped.reports)
            .any(|r| r["adoptedManifestVersion"] == v1),
        "a report adopted the replayed v{v1}: {:?}",
        s.mock.statuses()
    );
    let (_, metrics) = gate.admin_get("/metrics");
    assert!(
        metrics.contains("wasmgate_wfm_accepted_state_unreadable 0"),
        "{metrics}"
    );
    assert!(status["wfm"]["acceptedManifestVersion"].as_u64().unwrap() > v1);

    // A genuinely newer manifest is accepted as usual.
    s.mock.clear_fixture();
    s.mock.set_deployments(&hello("Three"));
    let v = s.mock.manifest_version();
    s.mock.wait_until("v3 installed", WAIT, |m| {
        installed_at(m, stopped.reports, v)
    });
    gate.wait_for("/hello", 200, "Three, world!");
    s.mock.assert_no_violations();
}

#[test]
fn an_unreadable_record_accepts_nothing_and_deleting_it_is_an_explicit_reset() {
    let s = setup();
    let stopped = install_two_versions_then_stop(&s);
    let record = stopped.record.clone();
    // A directory where the record belongs: unreadable whoever runs the test.
    std::fs::remove_file(&record).unwrap();
    std::fs::create_dir(&record).unwrap();
    std::fs::write(record.join("stray"), b"x").unwrap();

    let gate = s.sandbox.up(&s.config);
    assert_blocked(&s, &gate, &stopped, "directory");

    // The documented operator reset: remove it. The host then starts from an empty
    // guard and takes whatever the WFM serves, here the older version.
    std::fs::remove_dir_all(&record).unwrap();
    s.mock.wait_until("the WFM's manifest accepted", WAIT, |m| {
        installed_at(m, stopped.reports, stopped.v1)
    });
    gate.wait_for("/hello", 200, "Old, world!");
    let raw = std::fs::read(&record).unwrap();
    assert!(raw.starts_with(b"wasmgate-record-v1 sha256:"));
    s.mock.assert_no_violations();
}
