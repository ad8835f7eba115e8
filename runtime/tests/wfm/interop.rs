//! Working with the fleet managers customers run: Margo's reference stack (narrower than
//! the RFCs) and strict WFMs that refuse part of what we send. Each test is one point of
//! the interop issue; they share the setup of `wfm.rs`.

use super::*;

fn wait_secs(gate: &Wasmgate, what: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let status = gate.status();
        if check(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in {secs}s; /status: {status:#}{}",
            gate.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn target<'a>(status: &'a Value, device: &str) -> &'a Value {
    status["wfm"]["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["deviceId"] == device))
        .unwrap_or(&Value::Null)
}

fn capability_puts(mock: &MockWfm, device: &str) -> usize {
    let path = format!("/capabilities/{device}");
    mock.requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with(&path))
        .count()
}

/// Margo's reference stack rebuilds `@signature-params` in the fixed order `created`,
/// `expires`, `keyid`, `alg`; every signed request must verify there (and, in
/// `rc2_onboards_and_signs_every_request`, with the strict RFC 9421 verifier).
#[test]
fn rc2_signatures_verify_with_the_reference_fixed_order_verifier() {
    let s = setup_with(
        Profile::Rc2,
        "see-thru",
        MockOptions {
            verifier: SignatureVerifier::FixedOrder,
            ..Default::default()
        },
    );
    let gate = s.sandbox.up(&s.config);
    // Two new deployments: the bundle path; then one changed: the single-YAML path.
    s.mock.set_deployments(&[
        (HELLO_ID, hello_yaml("edge-01/apps", "Bundled")),
        (COUNTER_ID, counter_yaml("edge-01/apps")),
    ]);
    wait_state(&s.mock, COUNTER_ID, "installed", s.mock.manifest_version());
    s.mock.set_deployments(&[
        (HELLO_ID, hello_yaml("edge-01/apps", "Signed")),
        (COUNTER_ID, counter_yaml("edge-01/apps")),
    ]);
    wait_state(&s.mock, HELLO_ID, "installed", s.mock.manifest_version());
    assert_eq!(gate.get("/hello").1, "Signed, world!\n");
    let requests = s.mock.requests();
    for kind in ["/bundles/", "/deployments/"] {
        assert!(
            requests
                .iter()
                .any(|r| r.method == "GET" && r.path.contains(kind) && r.status == 200),
            "no signed GET of {kind}"
        );
    }
    let signed: Vec<_> = requests
        .iter()
        .filter(|r| r.header("signature-input").is_some())
        .collect();
    assert!(signed.len() >= 6, "only {} signed requests", signed.len());
    for r in &signed {
        assert_ne!(
            r.status, 401,
            "{} {} refused: {:?}",
            r.method, r.path, r.body
        );
        let input = r.header("signature-input").unwrap();
        assert!(
            input.contains(";keyid=") && input.ends_with(";alg=\"ecdsa-p256-sha256\""),
            "parameters not in created;keyid;alg order: {input}"
        );
    }
    s.mock.assert_no_violations();
}

/// A WFM that refuses one target's capabilities (a strict WFM's 422, a router's 404, a
/// 500) still gets manifest polls and status reports, the other targets deploy, the
/// refusal shows in `/status`, and the document is offered again with back-off until
/// it is accepted.
#[test]
fn a_refused_capabilities_report_stops_nothing_else() {
    let s = setup(Profile::Rc3, "see-thru");
    s.mock.refuse_capabilities("edge-01/sensors", Some(422));
    let gate = s.sandbox.up(&s.config);
    s.mock.set_deployments(&[
        (HELLO_ID, hello_yaml("edge-01/apps", "Refused")),
        (COUNTER_ID, counter_yaml("edge-01/spare")),
    ]);
    let v1 = s.mock.manifest_version();
    wait_state(&s.mock, HELLO_ID, "installed", v1);
    wait_state(&s.mock, COUNTER_ID, "installed", v1);
    assert_eq!(gate.get("/hello").1, "Refused, world!\n");
    let status = wait_secs(&gate, "sensors refused with 422", 30, |st| {
        target(st, "edge-01/sensors")["status"] == 422
    });
    assert_eq!(target(&status, "edge-01/sensors")["state"], "refused");
    assert_eq!(target(&status, "edge-01/apps")["state"], "accepted");
    assert!(s.mock.capabilities().contains_key("edge-01/apps"));
    assert!(!s.mock.capabilities().contains_key("edge-01/sensors"));

    for code in [404u16, 500] {
        s.mock.refuse_capabilities("edge-01/sensors", Some(code));
        let puts = capability_puts(&s.mock, "edge-01/sensors");
        // Retried with back-off (no document change): at least one more attempt.
        wait_secs(&gate, &format!("sensors refused with {code}"), 30, |st| {
            target(st, "edge-01/sensors")["status"] == code
        });
        assert!(capability_puts(&s.mock, "edge-01/sensors") > puts);
        // Desired state still flows while the refusal lasts.
        s.mock.set_deployments(&[
            (
                HELLO_ID,
                hello_yaml("edge-01/apps", &format!("Still{code}")),
            ),
            (COUNTER_ID, counter_yaml("edge-01/spare")),
        ]);
        wait_state(&s.mock, HELLO_ID, "installed", s.mock.manifest_version());
        gate.wait_for("/hello", 200, &format!("Still{code}, world!"));
    }
    // Backed off: by now at least three refusals in a row, so the next waits are 2.4 s,
    // 4.8 s, ...; one attempt per poll (300 ms) would be about 16 in this window.
    let before = capability_puts(&s.mock, "edge-01/sensors");
    std::thread::sleep(Duration::from_secs(5));
    let attempts = capability_puts(&s.mock, "edge-01/sensors") - before;
    assert!(
        attempts <= 3,
        "{attempts} capability reports for a refused target in 5 s"
    );
    let log = gate.stderr.lock().unwrap().join("\n");
    assert!(
        log.contains("refused the capabilities of this target"),
        "no log line for the refusal"
    );
    // Counted per target in /metrics, and the requests are timed by kind and outcome.
    let puts = capability_puts(&s.mock, "edge-01/sensors");
    let (code, metrics) = gate.admin_get("/metrics");
    assert_eq!(code, 200, "{metrics}");
    let refused = metric_value(
        &metrics,
        "wasmgate_wfm_capabilities_refused_total{device=\"edge-01/sensors\"}",
    )
    .unwrap_or_else(|| panic!("no refusal counter for edge-01/sensors in:\n{metrics}"));
    assert!(
        (puts.saturating_sub(1) as f64..=puts as f64).contains(&refused),
        "{refused} refusals counted, {puts} reports refused"
    );
    assert!(
        metric_value(
            &metrics,
            "wasmgate_wfm_capabilities_refused_total{device=\"edge-01/apps\"}"
        )
        .is_none(),
        "an accepted target counted as refused"
    );
    for series in [
        "wasmgate_wfm_request_duration_seconds_count{kind=\"capabilities\",outcome=\"rejected\"}",
        "wasmgate_wfm_request_duration_seconds_count{kind=\"capabilities\",outcome=\"ok\"}",
        "wasmgate_wfm_request_duration_seconds_count{kind=\"state\",outcome=\"ok\"}",
        "wasmgate_wfm_request_duration_seconds_count{kind=\"status\",outcome=\"ok\"}",
    ] {
        assert!(
            metric_value(&metrics, series).is_some_and(|n| n >= 1.0),
            "{series} missing in:\n{metrics}"
        );
    }

    // A changed document is offered at once, whatever is left of the back-off: a
    // reload that relabels the refused target sends it within a poll or two.
    let status = wait_secs(&gate, "a long wait before the next offer", 30, |st| {
        target(st, "edge-01/sensors")["retryInSeconds"]
            .as_u64()
            .is_some_and(|s| s >= 4)
    });
    let failures = target(&status, "edge-01/sensors")["failures"]
        .as_u64()
        .unwrap();
    assert!(failures >= 3, "{status:#}");
    let relabelled = s
        .config
        .replace("tier = \"sensors\"", "tier = \"relabelled\"");
    assert_ne!(relabelled, s.config);
    s.sandbox.config(&relabelled);
    let offered_with_new_label = |m: &MockWfm| {
        m.requests().iter().any(|r| {
            r.method == "PUT"
                && r.path.ends_with("/capabilities/edge-01/sensors")
                && String::from_utf8_lossy(&r.body).contains("relabelled")
        })
    };
    assert!(!offered_with_new_label(&s.mock));
    gate.signal("HUP");
    s.mock.wait_until(
        "the relabelled document offered",
        Duration::from_secs(3),
        offered_with_new_label,
    );
    // Still refused, but as a new document: its back-off starts again.
    let status = wait_secs(&gate, "the new document's refusal", 10, |st| {
        target(st, "edge-01/sensors")["failures"]
            .as_u64()
            .is_some_and(|f| f < failures)
    });
    assert_eq!(target(&status, "edge-01/sensors")["state"], "refused");

    s.mock.refuse_capabilities("edge-01/sensors", None);
    s.mock
        .wait_until("sensors accepted once the WFM takes it", WAIT, |m| {
            m.capabilities().contains_key("edge-01/sensors")
        });
    wait_secs(&gate, "sensors accepted in /status", 30, |st| {
        target(st, "edge-01/sensors")["state"] == "accepted"
    });
}

/// Only a refusal of who we are stops the cycle: a 403 `#not-authorized` on the
/// capabilities means no manifest poll until it changes.
#[test]
fn an_unauthorized_client_stops_the_cycle() {
    let s = setup(Profile::Rc3, "see-thru");
    let gate = s.sandbox.up(&s.config);
    s.mock
        .wait_until("capabilities of host + 3 partitions", WAIT, |m| {
            m.capabilities().len() == 4
        });
    s.mock.set_authorized(false);
    let status = wait_secs(&gate, "the refusal shows", 30, |st| {
        st["wfm"]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("403"))
    });
    assert_eq!(status["wfm"]["connected"], true);
    // Every request is refused now: the first refusal ends the cycle (no manifest poll,
    // no status delivery after it) and the next cycle waits the longest back-off.
    std::thread::sleep(Duration::from_secs(3));
    let refused: Vec<_> = s
        .mock
        .requests()
        .into_iter()
        .filter(|r| r.status == 403)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(refused.len(), 1, "requests after the refusal: {refused:?}");
}

/// The value of one series (`name{labels}` exactly as rendered) in a text exposition.
fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn yaml_without_id() -> String {
    // Margo's sample templates still use the older shape with no top-level `id`.
    hello_yaml("edge-01/apps", "Old")
        .lines()
        .filter(|l| !l.starts_with("id:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths of every document (bundle or deployment YAML) fetched after request `from`.
fn documents_fetched_since(mock: &MockWfm, from: usize) -> Vec<String> {
    mock.requests()[from..]
        .iter()
        .filter(|r| r.method == "GET" && r.path != "/api/v1/deployments")
        .map(|r| r.path.clone())
        .collect()
}

const OLD_SHAPE_ID: &str = "aaaaaaaa-0000-4000-8000-000000000011";
const HELM_ID: &str = "aaaaaaaa-0000-4000-8000-000000000012";
const MISMATCH_ID: &str = "aaaaaaaa-0000-4000-8000-000000000013";
const COMPOSE_ID: &str = "aaaaaaaa-0000-4000-8000-000000000014";
const UNDIRECTED_ID: &str = "aaaaaaaa-0000-4000-8000-000000000015";
const NO_FIT_ID: &str = "aaaaaaaa-0000-4000-8000-000000000016";

/// A hello deployment on `route` with no `metadata.deviceId` (required by rc.3; a WFM
/// that leaves it out gets the host's choice of partition), needing `cores` if given.
fn undirected_yaml(id: &str, route: &str, cores: Option<u32>) -> String {
    let yaml = deployment(
        id,
        "undirected",
        None,
        &[(
            "hello",
            &format!("file://{}", wasmgate_examples::HELLO),
            &format!("{{trigger: {{http: {{route: {route}}}}}}}"),
        )],
        &[("greeting", "Placed", "greeting", "hello")],
    );
    match cores {
        Some(cores) => yaml.replace(
            "    type: custom\n",
            &format!("    type: custom\n    deviceConstraints:\n      capacityRequirements:\n        cpu:\n          cores: {cores}\n"),
        ),
        None => yaml,
    }
}

/// A manifest with three valid deployments (one without `metadata.deviceId`) and five
/// bad ones (no `id`, type `helm`, type `compose`, another `id` than listed, no
/// partition fits) applies the three, reports each bad one failed under the
/// manifest's deploymentId with a code, accepts the version and never downloads the
/// bad YAMLs again while their digests stay; a bad one mended is fetched and applied.
#[test]
fn one_bad_deployment_fails_alone() {
    let s = setup(Profile::Rc3, "see-thru");
    let gate = s.sandbox.up(&s.config);
    let helm = hello_yaml("edge-01/apps", "Helm").replace("type: custom", "type: helm");
    let compose = hello_yaml("edge-01/apps", "Compose").replace("type: custom", "type: compose");
    let mismatch = hello_yaml("edge-01/apps", "Other").replace(HELLO_ID, SENSOR_ID);
    let bad = [
        (OLD_SHAPE_ID, yaml_without_id()),
        (HELM_ID, helm),
        (COMPOSE_ID, compose),
        (MISMATCH_ID, mismatch),
        // No deviceId and 4 cores: no partition (1, 0.5, 0.25 cores) can take it.
        (NO_FIT_ID, undirected_yaml(NO_FIT_ID, "/big", Some(4))),
    ];
    let mut all = vec![
        (HELLO_ID, hello_yaml("edge-01/apps", "Good")),
        (COUNTER_ID, counter_yaml("edge-01/apps")),
        (UNDIRECTED_ID, undirected_yaml(UNDIRECTED_ID, "/free", None)),
    ];
    all.extend(bad.iter().map(|(id, y)| (*id, y.clone())));
    s.mock.set_deployments(&all);
    let v = s.mock.manifest_version();
    wait_state(&s.mock, HELLO_ID, "installed", v);
    wait_state(&s.mock, COUNTER_ID, "installed", v);
    // Without a deviceId the host chooses: the partition with the most free memory.
    wait_state(&s.mock, UNDIRECTED_ID, "installed", v);
    let placed = last_report(&s.mock, UNDIRECTED_ID).unwrap();
    assert_eq!(placed["deviceId"], "edge-01/apps", "{placed:#}");
    assert_eq!(gate.get("/free").1, "Placed, world!\n");
    for (id, code, field, source) in [
        (OLD_SHAPE_ID, "wasmgate.invalid", "id:", "hello"),
        (
            HELM_ID,
            "wasmgate.unsupported-type",
            "spec.deploymentProfile.type",
            "hello",
        ),
        (
            COMPOSE_ID,
            "wasmgate.unsupported-type",
            "spec.deploymentProfile.type",
            "hello",
        ),
        (MISMATCH_ID, "wasmgate.id-mismatch", "id:", "hello"),
        // A reserved gateway code: its source is the gateway, not the deployment.
        (NO_FIT_ID, "103", "cores", "edge-01"),
    ] {
        wait_state(&s.mock, id, "failed", v);
        let report = last_report(&s.mock, id).unwrap();
        let error = &report["status"]["error"];
        assert_eq!(error["code"], code, "{report:#}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{report:#}"
        );
        assert_eq!(error["source"], source, "{report:#}");
    }
    assert_eq!(gate.get("/hello").1, "Good, world!\n");
    // The version was accepted: the next polls are answered 304.
    let before = s.mock.requests().len();
    s.mock.wait_until("a 304 poll", WAIT, |m| {
        m.requests()[before..]
            .iter()
            .any(|r| r.path == "/api/v1/deployments" && r.status == 304)
    });
    // A new version that changes only hello fetches hello alone.
    let before = s.mock.requests().len();
    all[0].1 = hello_yaml("edge-01/apps", "Better");
    s.mock.set_deployments(&all);
    wait_state(&s.mock, HELLO_ID, "installed", s.mock.manifest_version());
    gate.wait_for("/hello", 200, "Better, world!");
    let fetched = documents_fetched_since(&s.mock, before);
    assert_eq!(fetched.len(), 1, "fetched {fetched:?}");
    assert!(!fetched[0].contains("bundles"), "fetched {fetched:?}");
    // The old-shape YAML mended (a new digest): fetched again and applied.
    let before = s.mock.requests().len();
    let mended = all.iter().position(|(id, _)| *id == OLD_SHAPE_ID).unwrap();
    all[mended].1 = hello_yaml("edge-01/spare", "Mended")
        .replace(HELLO_ID, OLD_SHAPE_ID)
        .replace("route: /hello", "route: /mended");
    s.mock.set_deployments(&all);
    wait_state(
        &s.mock,
        OLD_SHAPE_ID,
        "installed",
        s.mock.manifest_version(),
    );
    assert_eq!(gate.get("/mended").1, "Mended, world!\n");
    let fetched = documents_fetched_since(&s.mock, before);
    assert_eq!(fetched.len(), 1, "fetched {fetched:?}");
    assert!(fetched[0].contains(OLD_SHAPE_ID), "fetched {fetched:?}");
    s.mock.assert_no_violations();
}

/// rc.2 first start with the WFM down: the host keeps running (and serving what is on
/// disk), retries onboarding with back-off, and onboards once the WFM is up.
#[test]
fn rc2_first_start_without_the_wfm_keeps_running_and_onboards_later() {
    let s = setup(Profile::Rc2, "see-thru");
    s.mock.set_down(DownMode::Refuse);
    let gate = s.sandbox.up(&s.config);
    let status = wait_secs(&gate, "WFM client waiting", 30, |st| {
        st["wfm"]["connected"] == false && st["wfm"]["lastError"].is_string()
    });
    assert!(
        status["wfm"]["lastError"]
            .as_str()
            .unwrap()
            .contains("onboarding")
            || status["wfm"]["lastError"]
                .as_str()
                .unwrap()
                .contains("connect"),
        "{status:#}"
    );
    assert_eq!(gate.get("/hello").0, 404, "the ingress serves meanwhile");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gate.get("/hello").0, 404, "still running");
    s.mock.set_up();
    s.mock
        .set_deployments(&[(HELLO_ID, hello_yaml("edge-01/apps", "Late"))]);
    wait_state(&s.mock, HELLO_ID, "installed", s.mock.manifest_version());
    assert_eq!(s.mock.rc2_client_ids().len(), 1);
    assert_eq!(gate.get("/hello").1, "Late, world!\n");
    let log = gate.stderr.lock().unwrap().join("\n");
    assert!(log.contains("retrying"), "no retry log line");
    s.mock.assert_no_violations();
}
