//! The Margo WFM client end to end: the real binary against the strict mock WFM over
//! real TLS on loopback, in both transport profiles.

mod common;

use common::pki::Pki;
use common::wfm::{DownMode, Fixture, MockOptions, MockWfm, Profile, SignatureVerifier};
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const HELLO_ID: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const COUNTER_ID: &str = "aaaaaaaa-0000-4000-8000-000000000002";
const SENSOR_ID: &str = "aaaaaaaa-0000-4000-8000-000000000003";
const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    sandbox: Sandbox,
    pki: Pki,
    mock: MockWfm,
    config: String,
}

fn setup(profile: Profile, mode: &str) -> Setup {
    setup_with(profile, mode, MockOptions::default())
}

fn setup_with(profile: Profile, mode: &str, options: MockOptions) -> Setup {
    let sandbox = Sandbox::new();
    let pki = Pki::new("example.org", "wfm-1", "edge-01");
    let files = pki.write_client_files(&sandbox.path().join("pki"));
    // rc.2 schemas predate `custom`; the device reports it anyway (see capabilities.rs).
    let mock = MockWfm::start_with(
        profile,
        &pki,
        MockOptions {
            rc2_allow_custom: true,
            ..options
        },
    );
    let transport = match profile {
        Profile::Rc3 => files.rc3_credentials(),
        Profile::Rc2 => files.rc2_credentials(),
    };
    let config = format!(
        r#"
[device]
id = "edge-01"
mode = "{mode}"
vendor = "Acme"
model = "EG-1"
serial = "SN-1"
labels = {{ site = "north" }}

[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
labels = {{ tier = "apps" }}

[[partition]]
id = "sensors"
cpu = 0.5
memory = "128Mi"
storage = "16Mi"
labels = {{ tier = "sensors" }}

[[partition]]
id = "spare"
cpu = 0.25
memory = "64Mi"
storage = "8Mi"
labels = {{ tier = "spare" }}

[wfm]
url = "{}"
poll-interval = "300ms"
{transport}
"#,
        mock.base_url()
    );
    Setup {
        sandbox,
        pki,
        mock,
        config,
    }
}

fn hello_yaml(device: &str, greeting: &str) -> String {
    deployment(
        HELLO_ID,
        "hello",
        Some(device),
        &[(
            "hello",
            &format!("file://{}", wasmgate_examples::HELLO),
            "{trigger: {http: {route: /hello}}}",
        )],
        &[("greeting", greeting, "greeting", "hello")],
    )
}

fn counter_yaml(device: &str) -> String {
    deployment(
        COUNTER_ID,
        "counter",
        Some(device),
        &[(
            "counter",
            &format!("file://{}", wasmgate_examples::COUNTER),
            "{trigger: {http: {route: /counter}}}",
        )],
        &[],
    )
}

fn sensor_yaml(device: &str) -> String {
    deployment(
        SENSOR_ID,
        "sensor",
        Some(device),
        &[(
            "sensor",
            &format!("file://{}", wasmgate_examples::SENSOR_FILTER),
            "{trigger: {http: {route: /sensor}, timer: {every: 1s}}}",
        )],
        &[],
    )
}

/// Status reports the mock accepted for `id`, as (state, adoptedManifestVersion).
fn reports(mock: &MockWfm, id: &str) -> Vec<(String, u64)> {
    mock.reports(id)
}

fn last_report(mock: &MockWfm, id: &str) -> Option<Value> {
    mock.statuses()
        .into_iter()
        .rfind(|s| s["deploymentId"] == id)
}

fn wait_state(mock: &MockWfm, id: &str, state: &str, version: u64) {
    mock.wait_state(id, state, version, WAIT);
}

#[path = "wfm/interop.rs"]
mod interop;

#[test]
fn rc3_see_thru_capabilities_deploy_update_remove() {
    let s = setup(Profile::Rc3, "see-thru");
    let gate = s.sandbox.up(&s.config);
    s.mock
        .wait_until("capabilities of host + 3 partitions", WAIT, |m| {
            m.capabilities().len() == 4
        });
    let caps = s.mock.capabilities();
    // The host hosts nothing itself: identity fields only.
    assert_eq!(
        caps["edge-01"]["properties"].as_object().unwrap().len(),
        4,
        "{:#}",
        caps["edge-01"]
    );
    let sensors = &caps["edge-01/sensors"];
    assert_eq!(sensors["properties"]["memory"], "128Mi");
    assert_eq!(sensors["properties"]["cpus"][0]["cores"], 0.5);
    assert_eq!(
        sensors["properties"]["supportedDeploymentTypes"],
        serde_json::json!(["custom"])
    );
    assert_eq!(sensors["labels"]["tier"], "sensors");
    assert!(sensors["x-wasmgate-extensions"]["witWorlds"].is_array());
    // The host is its workloads' collector by default (no key in the config), and
    // says where its telemetry goes: nowhere configured here.
    assert_eq!(sensors["properties"]["otelCollector"], true);
    assert_eq!(
        sensors["x-wasmgate-extensions"]["telemetry"],
        serde_json::json!({"collector": "wasmgate", "otlp": "none", "protocol": "http/protobuf"})
    );
    // The parent was reported before any child.
    let puts: Vec<String> = s
        .mock
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        puts.first().map(String::as_str),
        Some("/api/v1/capabilities/edge-01"),
        "{puts:?}"
    );

    // A directed and an autonomous deployment.
    s.mock.set_deployments(&[
        (HELLO_ID, hello_yaml("edge-01/apps", "Hi")),
        (COUNTER_ID, counter_yaml("edge-01/*")),
    ]);
    let v1 = s.mock.manifest_version();
    wait_state(&s.mock, HELLO_ID, "installed", v1);
    wait_state(&s.mock, COUNTER_ID, "installed", v1);
    assert_eq!(gate.get("/hello"), (200, "Hi, world!\n".to_string()));
    assert_eq!(gate.get("/counter").0, 200);
    let states: Vec<String> = reports(&s.mock, HELLO_ID)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(states, ["pending", "installing", "installed"]);
    let hello = last_report(&s.mock, HELLO_ID).unwrap();
    assert_eq!(hello["deviceId"], "edge-01/apps");
    assert_eq!(hello["components"][0]["name"], "hello");
    // Autonomous placement chose the partition with the most room.
    assert_eq!(
        last_report(&s.mock, COUNTER_ID).unwrap()["deviceId"],
        "edge-01/apps"
    );

    // Update one in place.
    s.mock.set_deployments(&[
        (HELLO_ID, hello_yaml("edge-01/apps", "Howdy")),
        (COUNTER_ID, counter_yaml("edge-01/*")),
    ]);
    let v2 = s.mock.manifest_version();
    wait_state(&s.mock, HELLO_ID, "installed", v2);
    gate.wait_for("/hello", 200, "Howdy, world!");

    // Remove one.
    s.mock
        .set_deployments(&[(HELLO_ID, hello_yaml("edge-01/apps", "Howdy"))]);
    let v3 = s.mock.manifest_version();
    wait_state(&s.mock, COUNTER_ID, "removed", v3);
    let states: Vec<String> = reports(&s.mock, COUNTER_ID)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(states[states.len() - 2..], ["removing", "removed"]);
    gate.wait_for("/counter", 404, "no deployment");
    assert_eq!(gate.get("/hello").0, 200);

    // Placement errors use the reserved gateway codes with the gateway as source.
    let nowhere = hello_yaml("edge-01/nope", "x")
        .replace(HELLO_ID, SENSOR_ID)
        .replace("/hello}", "/nowhere}");
    s.mock.set_deployments(&[
        (HELLO_ID, hello_yaml("edge-01/apps", "Howdy")),
        (SENSOR_ID, nowhere),
    ]);
    let v4 = s.mock.manifest_version();
    wait_state(&s.mock, SENSOR_ID, "failed", v4);
    let failed = last_report(&s.mock, SENSOR_ID).unwrap();
    assert_eq!(failed["status"]["error"]["code"], "101", "{failed:#}");
    assert_eq!(failed["status"]["error"]["source"], "edge-01", "{failed:#}");

    // A zero-deployment manifest (`bundle: null`) removes everything.
    s.mock.set_deployments::<&str, &str>(&[]);
    let v5 = s.mock.manifest_version();
    wait_state(&s.mock, HELLO_ID, "removed", v5);
    // The deployment that never ran is reported gone too.
    wait_state(&s.mock, SENSOR_ID, "removed", v5);
    gate.wait_for("/hello", 404, "no deployment");
    s.mock.assert_no_violations();
}

#[test]
fn rc3_opaque_reports_one_aggregated_device() {
    let s = setup(Profile::Rc3, "opaque");
    let gate = s.sandbox.up(&s.config);
    s.mock
        .wait_until("capabilities", WAIT, |m| !m.capabilities().is_empty());
    s.mock
        .set_deployments(&[(HELLO_ID, hello_yaml("edge-01", "Hi"))]);
    wait_state(&s.mock, HELLO_ID, "installed", s.mock.manifest_version());
    let caps = s.mock.capabilities();
    assert_eq!(caps.len(), 1, "{caps:?}");
    let p = &caps["edge-01"]["properties"];
    assert_eq!(p["cpus"].as_array().unwrap().len(), 3);
    assert_eq!(p["memory"], "448Mi");
    assert_eq!(
        last_report(&s.mock, HELLO_ID).unwrap()["deviceId"],
        "edge-01"
    );
    assert_eq!(gate.get("/hello").0, 200);
    s.mock.assert_no_violations();
}

#[test]
fn rc2_onboards_and_signs_every_request() {
    let s = setup(Profile::Rc2, "see-thru");
    let gate = s.sandbox.up(&s.config);
    s.mock
        .wait_until("capabilities of host + 3 partitions", WAIT, |m| {
            m.capabilities().len() == 4
        });
    s.mock
        .set_deployments(&[(HELLO_ID, hello_yaml("edge-01/apps", "Signed"))]);
    wait_state(&s.mock, HELLO_ID, "installed", s.mock.manifest_version());
    assert_eq!(gate.get("/hello").1, "Signed, world!\n");
    let client_ids = s.mock.rc2_client_ids();
    assert_eq!(client_ids.len(), 1);
    let saved = std::fs::read_to_string(s.sandbox.state().join("wfm/client-id")).unwrap();
    assert_eq!(saved.trim(), client_ids[0]);
    // Every request after onboarding was signed (the mock verifies each one).
    let signed = s
        .mock
        .requests()
        .iter()
        .filter(|r| r.header("signature-input").is_some())
        .count();
    assert!(signed >= 6, "only {signed} signed requests");
    s.mock.assert_no_violations();

    // A restart reuses the clientId instead of onboarding again.
    gate.stop();
    let gate = s.sandbox.up(&s.config);
    s.mock.wait_until("a poll after restart", WAIT, |m| {
        m.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/deployments"))
            .count()
            >= 3
    });
    assert_eq!(s.mock.rc2_client_ids().len(), 1);
    assert_eq!(gate.get("/hello").0, 200);
    s.mock.assert_no_violations();
}

/// Installs hello v1, then serves each bad manifest and checks it is refused while the
/// previous state keeps serving.
#[test]
fn negative_fixtures_are_refused_and_the_previous_state_serves() {
    negative_fixtures(Profile::Rc3);
}

#[test]
fn rc2_negative_fixtures_are_refused_and_the_previous_state_serves() {
    negative_fixtures(Profile::Rc2);
}

/// The manifest route of either profile (rc.2: `/clients/{clientId}/deployments`).
fn is_manifest_poll(path: &str) -> bool {
    path.strip_prefix("/api/v1").is_some_and(|p| {
        p == "/deployments" || p.starts_with("/clients/") && p.ends_with("/deployments")
    })
}

/// Every negative fixture of the conformance data is refused as a whole, in either
/// transport profile, and the running state keeps serving.
fn negative_fixtures(profile: Profile) {
    let s = setup(profile, "see-thru");
    let gate = s.sandbox.up(&s.config);
    s.mock
        .set_deployments(&[(HELLO_ID, hello_yaml("edge-01/apps", "Stable"))]);
    let good = s.mock.manifest_version();
    wait_state(&s.mock, HELLO_ID, "installed", good);
    let fixtures = [
        Fixture::UnsupportedDigestAlgorithm,
        Fixture::BundleDigestMismatch,
        Fixture::DeploymentDigestMismatch,
        Fixture::NonIncreasingManifestVersion,
        Fixture::ManifestVersionRollback { to: good },
        Fixture::BundleNullWithDeployments,
        Fixture::TarPathTraversal,
        Fixture::TarDuplicateEntry,
        Fixture::TarSymlink,
        Fixture::OversizeBundle,
        Fixture::UnknownBundleMediaType,
    ];
    for (i, fixture) in fixtures.into_iter().enumerate() {
        // Two changed deployments, so that the client takes the bundle path.
        let greeting = format!("Bad{i}");
        s.mock.set_fixture(fixture.clone());
        s.mock.set_deployments(&[
            (HELLO_ID, hello_yaml("edge-01/apps", &greeting)),
            (COUNTER_ID, counter_yaml("edge-01/apps")),
        ]);
        let before = s.mock.requests().len();
        s.mock
            .wait_until(&format!("{fixture:?}: three polls"), WAIT, |m| {
                m.requests()[before..]
                    .iter()
                    .filter(|r| r.method == "GET" && is_manifest_poll(&r.path))
                    .count()
                    >= 3
            });
        assert_eq!(
            gate.get("/hello"),
            (200, "Stable, world!\n".to_string()),
            "{fixture:?}"
        );
        assert_eq!(gate.get("/counter").0, 404, "{fixture:?} was applied");
        // Back to the running state, then a clean manifest (a fresh, higher version):
        // accepted without any change, so the next poll is answered 304.
        s.mock
            .set_deployments(&[(HELLO_ID, hello_yaml("edge-01/apps", "Stable"))]);
        s.mock.clear_fixture();
        let before = s.mock.requests().len();
        s.mock.wait_until(
            &format!("{fixture:?}: clean manifest accepted"),
            WAIT,
            |m| {
                m.requests()[before..]
                    .iter()
                    .any(|r| is_manifest_poll(&r.path) && r.status == 304)
            },
        );
    }
    assert!(
        reports(&s.mock, COUNTER_ID).is_empty(),
        "a refused manifest was reported on"
    );
    // sizeBytes is not an integrity check: a wrong one is accepted.
    s.mock.set_fixture(Fixture::WrongSizeBytes);
    s.mock.set_deployments(&[
        (HELLO_ID, hello_yaml("edge-01/apps", "Sized")),
        (COUNTER_ID, counter_yaml("edge-01/apps")),
    ]);
    wait_state(&s.mock, COUNTER_ID, "installed", s.mock.manifest_version());
    gate.wait_for("/hello", 200, "Sized, world!");
    let log = gate.stderr.lock().unwrap().join("\n");
    assert!(
        log.contains("desired state rejected"),
        "no security log line"
    );
    s.mock.assert_no_violations();
}

/// Installs hello, then adds the sensor; the WFM answers 503 + `Retry-After:
/// retry_after_secs` from the moment the client fetched the sensor's YAML. Returns the
/// manifest version that added it.
fn install_sensor_while_the_wfm_goes_away(s: &Setup, retry_after_secs: u64) -> u64 {
    s.mock
        .set_deployments(&[(HELLO_ID, hello_yaml("edge-01/apps", "Hi"))]);
    wait_state(&s.mock, HELLO_ID, "installed", s.mock.manifest_version());
    s.mock.set_deployments(&[
        (HELLO_ID, hello_yaml("edge-01/apps", "Hi")),
        (SENSOR_ID, sensor_yaml("edge-01/sensors")),
    ]);
    let version = s.mock.manifest_version();
    s.mock.wait_until("the new YAML fetched", WAIT, |m| {
        m.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.contains(SENSOR_ID))
    });
    s.mock
        .set_down(DownMode::ServiceUnavailable { retry_after_secs });
    version
}

#[test]
fn reports_made_while_the_wfm_is_down_arrive_in_order_once() {
    let s = setup(Profile::Rc3, "see-thru");
    let gate = s.sandbox.up(&s.config);
    // Every state change of the sensor's install happens while the WFM is unreachable.
    let version = install_sensor_while_the_wfm_goes_away(&s, 1);
    let down_since = Instant::now();
    // The host keeps serving while the WFM is away.
    gate.wait_for("/sensor", 200, "\"ticks\"");
    while down_since.elapsed() < Duration::from_secs(4) {
        assert_eq!(gate.get("/hello").0, 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    let queued = std::fs::read_dir(s.sandbox.state().join("wfm/outbox/queue"))
        .unwrap()
        .count();
    assert!(queued >= 1, "nothing queued while the WFM was down");
    // The queue shows in /metrics and /status while it waits, and empties afterwards.
    let depth = || {
        let (code, metrics) = gate.admin_get("/metrics");
        assert_eq!(code, 200, "{metrics}");
        let gauge = metrics
            .lines()
            .find_map(|l| l.strip_prefix("wasmgate_wfm_outbox_depth "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no outbox depth in:\n{metrics}"));
        (gauge, gate.status()["wfm"]["outboxDepth"].as_f64())
    };
    let (gauge, shown) = depth();
    assert!(gauge >= 1.0, "outbox depth {gauge} with {queued} queued");
    assert!(
        shown.is_some_and(|n| n >= 1.0),
        "/status outboxDepth {shown:?}"
    );
    s.mock.set_up();
    wait_state(&s.mock, SENSOR_ID, "installed", version);
    let deadline = Instant::now() + Duration::from_secs(10);
    while depth() != (0.0, Some(0.0)) {
        assert!(
            Instant::now() < deadline,
            "outbox depth stays {:?}",
            depth()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let states: Vec<String> = reports(&s.mock, SENSOR_ID)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        states,
        ["pending", "installing", "installed"],
        "lost, reordered or duplicated"
    );
    s.mock.assert_no_violations();
}

/// SIGTERM flushes the status reports made since the last cycle: the WFM asked for a
/// minute's pause (503 + Retry-After: 60) while an install finished, comes back, and
/// the host is stopped before its next cycle: the reports arrive before it exits 0.
#[test]
fn sigterm_delivers_the_pending_status_reports_before_exiting() {
    let s = setup(Profile::Rc3, "see-thru");
    let mut gate = s.sandbox.up(&s.config);
    let version = install_sensor_while_the_wfm_goes_away(&s, 60);
    s.mock.wait_until("a request answered 503", WAIT, |m| {
        m.requests().iter().any(|r| r.status == 503)
    });
    gate.wait_for("/sensor", 200, "\"ticks\"");
    assert!(
        !reports(&s.mock, SENSOR_ID)
            .iter()
            .any(|(state, _)| state == "installed"),
        "delivered before the stop: the test proves nothing"
    );
    s.mock.set_up();
    let stopped = Instant::now();
    gate.signal("TERM");
    let exit = gate
        .wait_exit(Duration::from_secs(15))
        .expect("still running 15 s after SIGTERM");
    assert!(exit.success(), "{exit:?}{}", gate.diagnostics());
    assert!(
        reports(&s.mock, SENSOR_ID).contains(&("installed".into(), version)),
        "the install's report was not delivered before exiting (after {:?}): {:?}",
        stopped.elapsed(),
        reports(&s.mock, SENSOR_ID)
    );
    let queued =
        std::fs::read_dir(s.sandbox.state().join("wfm/outbox/queue")).map_or(0, |d| d.count());
    assert_eq!(queued, 0, "reports left in the outbox");
    s.mock.assert_no_violations();
}

#[test]
fn restart_resumes_from_disk_without_rereporting_or_downloading() {
    let s = setup(Profile::Rc3, "see-thru");
    let gate = s.sandbox.up(&s.config);
    s.mock.set_deployments(&[
        (HELLO_ID, hello_yaml("edge-01/apps", "Hi")),
        (COUNTER_ID, counter_yaml("edge-01/apps")),
    ]);
    let version = s.mock.manifest_version();
    wait_state(&s.mock, HELLO_ID, "installed", version);
    wait_state(&s.mock, COUNTER_ID, "installed", version);
    // Let the outbox drain, then crash.
    std::thread::sleep(Duration::from_millis(800));
    drop(gate);
    let statuses_before = s.mock.statuses().len();
    s.mock.clear_records();

    // Restart with the WFM down: the last accepted state serves from disk.
    s.mock.set_down(DownMode::Refuse);
    let gate = s.sandbox.up(&s.config);
    gate.wait_for("/hello", 200, "Hi, world!");
    s.mock.set_up();
    s.mock.wait_until("polls after restart", WAIT, |m| {
        m.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == "/api/v1/deployments")
            .count()
            >= 3
    });
    let requests = s.mock.requests();
    let polls: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/api/v1/deployments")
        .collect();
    assert!(
        polls.iter().all(|r| r.status == 304),
        "{:?}",
        polls.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(polls[0].header("if-none-match").is_some());
    assert!(
        !requests.iter().any(|r| r.path.contains("/bundles/") || r.path.contains(&format!("{HELLO_ID}/sha256"))),
        "content downloaded again"
    );
    assert_eq!(
        s.mock.statuses().len(),
        statuses_before,
        "stale states reported again"
    );
    s.mock.assert_no_violations();
}

#[test]
fn renewed_svid_is_presented_and_a_wrong_wfm_identity_is_refused() {
    let s = setup(Profile::Rc3, "see-thru");
    let gate = s.sandbox.up(&s.config);
    s.mock
        .wait_until("first handshakes", WAIT, |m| m.handshakes().len() >= 2);
    let old = s.mock.handshakes()[0].client_cert_der.clone().unwrap();
    let renewed = s.pki.renew_client_svid(&s.sandbox.path().join("pki"));
    s.mock
        .wait_until("a handshake with the renewed SVID", WAIT, |m| {
            m.handshakes()
                .last()
                .and_then(|h| h.client_cert_der.clone())
                .is_some_and(|d| d == renewed.leaf_der())
        });
    assert_ne!(old, renewed.leaf_der());
    drop(gate);

    // A WFM presenting another SPIFFE ID is never talked to.
    let impostor = MockWfm::start_with(
        Profile::Rc3,
        &s.pki,
        common::wfm::MockOptions {
            server_identity: Some(
                s.pki
                    .wfm_svid_with_id("spiffe://example.org/margo/wfm/other-wfm"),
            ),
            ..Default::default()
        },
    );
    let config = s.config.replace(&s.mock.base_url(), &impostor.base_url());
    let sandbox = Sandbox::new();
    let gate = sandbox.up(&config);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        impostor.requests().is_empty(),
        "talked to an impostor: {:?}",
        impostor.requests().len()
    );
    let log = gate.stderr.lock().unwrap().join("\n");
    assert!(
        log.contains("other-wfm"),
        "the refusal should name the presented ID:\n{log}"
    );
}

/// A tiny MIS: the discovery document and the SPIFFE bundle over HTTPS, authenticated by
/// a pinned CA. Returns its base URL and a counter of requests served.
fn start_mis(
    pki: &Pki,
    trust_domain: &str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let server = pki.wfm_server();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(server.rustls_chain(), server.rustls_key())
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bundle = pki.trust_bundle_json(7, 1);
    let discovery = serde_json::json!({
        "trustDomain": trust_domain,
        "trustBundleUri": format!("https://{addr}/bundle.json"),
    })
    .to_string();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, bundle, discovery, counter) = (
                    acceptor.clone(),
                    bundle.clone(),
                    discovery.clone(),
                    counter.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let body = match req.uri().path() {
                                "/.well-known/margo" => discovery.clone(),
                                "/bundle.json" => bundle.clone(),
                                _ => String::new(),
                            };
                            async move {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from(body)),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
    });
    (format!("https://{addr}"), served)
}

#[test]
fn rc3_trust_bundle_through_discovery_with_a_pinned_ca() {
    let s = setup(Profile::Rc3, "see-thru");
    let (mis, served) = start_mis(&s.pki, "example.org");
    let files = s.sandbox.path().join("pki");
    let config = s.config.replace(
        &format!("trust-bundle = {:?}", files.join("bundle.json")),
        &format!(
            "discovery-url = \"{mis}/.well-known/margo\"\npinned-ca = {:?}",
            files.join("root-ca.pem")
        ),
    );
    assert!(config.contains("discovery-url"), "{config}");
    let gate = s.sandbox.up(&config);
    s.mock
        .wait_until("capabilities after discovery", WAIT, |m| {
            m.capabilities().len() == 4
        });
    let saved = std::fs::read_to_string(s.sandbox.state().join("wfm/trust-bundle.json")).unwrap();
    assert!(saved.contains("x509-svid"), "{saved}");
    // The bundle's refresh hint is 1 s: it is fetched again while the client runs.
    let first = served.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        served.load(std::sync::atomic::Ordering::SeqCst) > first,
        "bundle never refreshed"
    );
    drop(gate);

    // A discovery document naming another trust domain is refused: no WFM traffic.
    let s = setup(Profile::Rc3, "see-thru");
    let (mis, _) = start_mis(&s.pki, "other.org");
    let files = s.sandbox.path().join("pki");
    let config = s.config.replace(
        &format!("trust-bundle = {:?}", files.join("bundle.json")),
        &format!(
            "discovery-url = \"{mis}/.well-known/margo\"\npinned-ca = {:?}",
            files.join("root-ca.pem")
        ),
    );
    let gate = s.sandbox.up(&config);
    std::thread::sleep(Duration::from_secs(3));
    assert!(s.mock.requests().is_empty());
    let log = gate.stderr.lock().unwrap().join("\n");
    assert!(log.contains("other.org"), "{log}");
}

#[test]
fn known_downtime_silences_the_client_and_removed_partitions_are_unregistered() {
    let s = setup(Profile::Rc3, "see-thru");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let config = s.config.replace(
        "poll-interval = \"300ms\"",
        &format!(
            "poll-interval = \"300ms\"\ndowntime = [\"{}/{}\"]",
            now - 5,
            now + 5
        ),
    );
    let started = Instant::now();
    let gate = s.sandbox.up(&config);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        s.mock.requests().is_empty(),
        "the client talked during known downtime"
    );
    s.mock
        .wait_until("capabilities after the downtime", WAIT, |m| {
            m.capabilities().len() == 4
        });
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "downtime ended early"
    );
    gate.stop();

    // The `spare` partition leaves the configuration: it is unregistered.
    let spare = "[[partition]]\nid = \"spare\"\ncpu = 0.25\nmemory = \"64Mi\"\nstorage = \"8Mi\"\nlabels = { tier = \"spare\" }\n";
    assert!(s.config.contains(spare));
    let _gate = s.sandbox.up(&s.config.replace(spare, ""));
    s.mock
        .wait_until("DELETE of the removed partition", WAIT, |m| {
            m.requests().iter().any(|r| {
                r.method == "DELETE"
                    && r.path == "/api/v1/capabilities/edge-01/spare"
                    && r.status == 204
            })
        });
    assert_eq!(s.mock.capabilities().len(), 3);
    s.mock.assert_no_violations();
}

/// SIGHUP with a changed partition list: the WFM gets the new target's capabilities
/// and the resized one's new document, the removed target is unregistered, and a
/// deployment directed at it fails with a report, all without a restart.
#[test]
fn sighup_resends_capabilities_and_moves_deployments_without_a_restart() {
    let s = setup(Profile::Rc3, "see-thru");
    let gate = s.sandbox.up(&s.config);
    s.mock
        .wait_until("capabilities of host + 3 partitions", WAIT, |m| {
            m.capabilities().len() == 4
        });
    s.mock.set_deployments(&[
        (HELLO_ID, hello_yaml("edge-01/spare", "Hi")),
        (COUNTER_ID, counter_yaml("edge-01/*")),
    ]);
    let v1 = s.mock.manifest_version();
    wait_state(&s.mock, HELLO_ID, "installed", v1);
    wait_state(&s.mock, COUNTER_ID, "installed", v1);
    assert_eq!(gate.get("/counter").1, "hits: 1\n");

    let spare = "[[partition]]\nid = \"spare\"\ncpu = 0.25\nmemory = \"64Mi\"\nstorage = \"8Mi\"\nlabels = { tier = \"spare\" }\n";
    let extra = "[[partition]]\nid = \"extra\"\ncpu = 0.25\nmemory = \"32Mi\"\nstorage = \"8Mi\"\nlabels = { tier = \"extra\" }\n";
    assert!(s.config.contains(spare) && s.config.contains("memory = \"128Mi\""));
    s.sandbox.config(
        &s.config
            .replace(spare, extra)
            .replace("memory = \"128Mi\"", "memory = \"96Mi\""),
    );
    s.mock.clear_records();
    gate.signal("HUP");
    s.mock.wait_until(
        "the new target, the resized one and the DELETE",
        WAIT,
        |m| {
            let caps = m.capabilities();
            caps.contains_key("edge-01/extra")
                && !caps.contains_key("edge-01/spare")
                && caps["edge-01/sensors"]["properties"]["memory"] == "96Mi"
        },
    );
    let requests = s.mock.requests();
    assert!(requests.iter().any(|r| r.method == "DELETE"
        && r.path == "/api/v1/capabilities/edge-01/spare"
        && r.status == 204));
    // Only what changed is sent again: not the host, not `apps`.
    let puts: Vec<&str> = requests
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path.as_str())
        .collect();
    assert!(
        !puts.contains(&"/api/v1/capabilities/edge-01/apps"),
        "{puts:?}"
    );
    // The deployment directed at the removed partition stops and fails, reported.
    s.mock.wait_until("hello failed", WAIT, |m| {
        last_report(m, HELLO_ID).is_some_and(|r| r["status"]["state"] == "failed")
    });
    let failed = last_report(&s.mock, HELLO_ID).unwrap();
    assert!(
        failed.to_string().contains("spare"),
        "the report names the missing partition: {failed:#}"
    );
    gate.wait_for("/hello", 404, "");
    // The autonomous one still serves, its key-value data in place.
    assert_eq!(gate.get("/counter").1, "hits: 2\n");
    assert!(gate
        .stdout
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.starts_with("wasmgate: configuration reloaded")
            && l.contains("partitions added: edge-01/extra")));
    s.mock.assert_no_violations();
}

#[test]
fn outside_the_polling_window_only_capabilities_and_statuses_flow() {
    let s = setup(Profile::Rc3, "see-thru");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A one-hour window starting two hours from now (UTC).
    let start = (now / 60 + 120) % 1440;
    let end = (start + 60) % 1440;
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        start / 60,
        start % 60,
        end / 60,
        end % 60
    );
    let config = s.config.replace(
        "poll-interval = \"300ms\"",
        &format!("poll-interval = \"300ms\"\npolling-window = \"{window}\""),
    );
    let _gate = s.sandbox.up(&config);
    s.mock
        .wait_until("capabilities", WAIT, |m| m.capabilities().len() == 4);
    std::thread::sleep(Duration::from_secs(2));
    let polls = s
        .mock
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/deployments")
        .count();
    assert_eq!(polls, 0, "polled outside the window {window}");
}

#[test]
fn telemetry_disabled_reports_no_collector_and_a_strict_wfm_refuses() {
    let s = setup(Profile::Rc3, "see-thru");
    let gate = s
        .sandbox
        .up(&format!("{}\n[telemetry]\nenabled = false\n", s.config));
    s.mock
        .wait_until("the partitions' capabilities refused", WAIT, |m| {
            m.violations()
                .iter()
                .filter(|v| v.contains("properties.otelCollector"))
                .count()
                >= 3
        });
    // Only the host, which hosts nothing itself, is accepted.
    assert_eq!(
        s.mock.capabilities().keys().collect::<Vec<_>>(),
        vec!["edge-01"]
    );
    assert!(
        gate.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("Margo requires hosting devices to report otelCollector: true")),
        "no warning{}",
        gate.diagnostics()
    );
}
