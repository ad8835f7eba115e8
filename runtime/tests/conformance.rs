//! Margo's own device-supplier conformance scenarios (`tests/data/margo-conformance`),
//! step by step: each step a device performs is mapped to the test that drives the real
//! client through it against the strict mock WFM (`tests/wfm.rs`, `tests/wfm/interop.rs`),
//! and each step that is not a device's to perform says why. A scenario or step without a
//! mapping fails this test, and so does a mapping to a test that does not exist.
//!
//! `cargo test --test conformance -- --nocapture` prints the table.

use serde_json::Value;

const SCENARIO_FILES: [(&str, &str); 2] = [
    (
        "device-supplier.json",
        include_str!("data/margo-conformance/device-supplier.json"),
    ),
    (
        "test-scenarios.json",
        include_str!("data/margo-conformance/test-scenarios.json"),
    ),
];

/// The sources of the tests a step may be mapped to.
const TEST_SOURCES: [&str; 2] = [include_str!("wfm.rs"), include_str!("wfm/interop.rs")];

#[derive(Debug, PartialEq)]
enum Mapping {
    /// Exercised by this test in `tests/wfm.rs` / `tests/wfm/interop.rs`.
    Test(&'static str),
    /// Not a device's step, and why.
    NotApplicable(&'static str),
}
use Mapping::*;

const WFM_VALIDATION: &str = "checks the WFM's refusal of a malformed or unauthenticated request the device never sends; every client test ends with mock.assert_no_violations(): the strict mock found nothing to refuse in what the client sent";
const CONTENT_ADDRESSED: &str = "the client keeps every YAML by digest and never requests a digest it holds, so it has no ETag to send for it";

/// The step's `(method, endpoint, expected status)` in a scenario, as a device sees it.
fn map(file: &str, scenario: &str, step: &Value) -> Mapping {
    let method = step["method"].as_str().unwrap_or_default();
    let endpoint = step["endpoint"].as_str().unwrap_or_default();
    let expected = step["expected_status"].as_u64().unwrap_or(0);
    let rc2 = file == "test-scenarios.json";
    // Scenario-level meanings first: fixtures the device must react to.
    match scenario {
        "device-mi008-unsupported-digest-algorithm"
        | "device-mi006-bundle-digest-mismatch"
        | "device-mi019-deployment-digest-mismatch"
        | "device-mi010-non-increasing-manifest-version"
        | "device-mi025-026-sizebytes-not-integrity"
            if method == "GET" =>
        {
            return Test("negative_fixtures_are_refused_and_the_previous_state_serves")
        }
        "device-mi004-rfc5280-certificate" => {
            return Test("renewed_svid_is_presented_and_a_wrong_wfm_identity_is_refused")
        }
        "device-mi018-tls-trust" | "scenario-miaf-identity-svid-rotation" => {
            return Test("renewed_svid_is_presented_and_a_wrong_wfm_identity_is_refused")
        }
        "scenario-miaf-identity-mtls" => {
            return Test("rc3_see_thru_capabilities_deploy_update_remove")
        }
        "device-core-capability-roles" if expected < 400 => {
            return NotApplicable("roles were removed from rc.3 capabilities; wasmgate never sends them (it reports supportedRuntimes/supportedDeploymentTypes [custom])")
        }
        "scenario-live-assertion-demo" => {
            return NotApplicable("the conformance mock's own demonstration of a dynamic assertion on the WFM side")
        }
        "flex-desired-state-multi-app" if method == "POST" => {
            return NotApplicable("the sample apps are compose deployments; wasmgate runs custom (Wasm) only and reports a compose or helm deployment failed with wasmgate.unsupported-type (one_bad_deployment_fails_alone)")
        }
        _ => {}
    }
    if endpoint.contains("/api/v1/test/") {
        return NotApplicable("test-control endpoint with which the conformance harness changes the WFM's desired state; the mock's set_deployments / set_fixture do this in our tests");
    }
    if endpoint.starts_with("/sample-apps/") {
        return NotApplicable(
            "fetches a compose file of a compose sample app: not a Wasm component",
        );
    }
    if expected >= 400 {
        return NotApplicable(WFM_VALIDATION);
    }
    if step["name"]
        .as_str()
        .is_some_and(|n| n.contains("No Accept Header"))
    {
        return NotApplicable("the client always sends Accept: application/vnd.margo.manifest.v1+json (the mock flags a missing one as a violation)");
    }
    match (method, expected) {
        ("POST", _) if endpoint.ends_with("/onboarding") => {
            Test("rc2_onboards_and_signs_every_request")
        }
        ("GET", _) if endpoint.ends_with("/onboarding/certificate") => NotApplicable(
            "the client downloads the root CA only without `root-ca`, over a connection the public web PKI vouches for; a loopback test cannot present such a certificate, and every test configures `root-ca`",
        ),
        (_, _) if endpoint.contains("/capabilities") => {
            // The RFC 9421-era scenarios address `/clients/{clientId}/capabilities`; the
            // rc.2 OpenAPI we target (and wasmgate) uses `.../capabilities/{deviceId}`.
            if rc2 {
                Test("rc2_onboards_and_signs_every_request")
            } else {
                Test("rc3_see_thru_capabilities_deploy_update_remove")
            }
        }
        ("GET", 304) if endpoint.ends_with("/deployments") => {
            Test("negative_fixtures_are_refused_and_the_previous_state_serves")
        }
        ("GET", 304) => NotApplicable(CONTENT_ADDRESSED),
        ("GET", _) if rc2 && !endpoint.ends_with("/capabilities") => {
            // Manifest, bundle and single-YAML GETs, each signed.
            Test("rc2_signatures_verify_with_the_reference_fixed_order_verifier")
        }
        ("GET", _) if endpoint.contains("/bundles/") => {
            Test("negative_fixtures_are_refused_and_the_previous_state_serves")
        }
        ("GET", _) if endpoint.ends_with("/deployments") => {
            Test("rc3_see_thru_capabilities_deploy_update_remove")
        }
        ("GET", _) if endpoint.contains("/deployments/") => Test("one_bad_deployment_fails_alone"),
        ("POST", _) if endpoint.ends_with("/status") => {
            if rc2 {
                Test("rc2_onboards_and_signs_every_request")
            } else {
                Test("rc3_see_thru_capabilities_deploy_update_remove")
            }
        }
        _ => panic!("{file} {scenario} {}: no mapping for {method} {endpoint} -> {expected}", step["id"]),
    }
}

fn test_exists(name: &str) -> bool {
    let needle = format!("fn {name}()");
    TEST_SOURCES.iter().any(|src| {
        src.match_indices(&needle)
            .any(|(i, _)| src[..i].trim_end().ends_with("#[test]"))
    })
}

#[test]
fn every_scenario_step_is_exercised_or_explained() {
    let mut rows = Vec::new();
    for (file, text) in SCENARIO_FILES {
        let scenarios: Vec<Value> = serde_json::from_str(text).expect("scenario file is JSON");
        assert!(!scenarios.is_empty(), "{file}: no scenarios");
        for scenario in &scenarios {
            let id = scenario["id"].as_str().expect("scenario id");
            let steps = scenario["steps"].as_array().expect("scenario steps");
            assert!(!steps.is_empty(), "{file} {id}: no steps");
            let mut tests = Vec::new();
            let mut na = 0;
            for step in steps {
                match map(file, id, step) {
                    Test(name) => {
                        assert!(
                            test_exists(name),
                            "{file} {id} {}: mapped to missing test {name}",
                            step["id"]
                        );
                        if !tests.contains(&name) {
                            tests.push(name);
                        }
                    }
                    NotApplicable(reason) => {
                        assert!(!reason.is_empty());
                        na += 1;
                    }
                }
            }
            let verdict = if tests.is_empty() {
                "not applicable".to_owned()
            } else {
                format!("pass ({})", tests.join(", "))
            };
            rows.push(format!(
                "{id} | {file} | {verdict} | {} steps, {na} not applicable",
                steps.len()
            ));
        }
    }
    for row in &rows {
        println!("{row}");
    }
    assert_eq!(rows.len(), 30, "scenario count changed: map the new ones");
}

#[test]
fn mappings_are_checked() {
    assert!(test_exists("one_bad_deployment_fails_alone"));
    assert!(!test_exists("wait_state"), "a helper is not a test");
    assert!(!test_exists("no_such_test"));
}
