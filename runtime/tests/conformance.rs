//! Margo's own device-supplier conformance scenarios (`tests/data/margo-conformance/`) as
//! tests of the real binary against the strict mock WFM.
//!
//! The suite's runner plays the device and sends each step's request itself. Here the
//! device is wasmgate: one session per file drives the client through what the scenarios
//! describe (capabilities, desired state, bundle and YAML downloads, status reports, the
//! negative fixtures, SVID rotation, onboarding), then every step of the file is looked up
//! in an explicit mapping and either checked on what the client sent and how it reacted,
//! or listed as not applicable with the reason. A scenario or step without a mapping
//! fails `every_scenario_step_is_mapped`, so new scenarios cannot slip by.
//!
//! The mock answers like Margo's conformance mock (`conformance_replies`: JSON
//! acknowledgements, status always 200) and adds its non-spec `_client_cert` member to
//! every rc.3 manifest, so the steps' expected status codes are asserted as written.

mod common;

use base64::Engine as _;
use common::pki::Pki;
use common::wfm::{self, Fixture, MockOptions, MockWfm, Profile, Recorded, MANIFEST_MEDIA_TYPE};
use common::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

const RC3_FILE: &str = "device-supplier.json";
const RC2_FILE: &str = "test-scenarios.json";
const WAIT: Duration = Duration::from_secs(60);

/// Deployment ids the scenarios use: the conformance mock's default deployment, the
/// reconciliation scenario's temporary one, the two sample apps, the rotation report.
const DEFAULT_ID: &str = "a3e2f5dc-912e-494f-8395-52cf3769bc06";
const RECON_ID: &str = "aaaaaaaa-0000-4000-8000-00000000c001";
const ROTATION_ID: &str = "aaaaaaaa-0000-4000-8000-00000000c002";
/// Margo's ApplicationDeployment `id` is a UUID (LinkML pattern; = `deploymentId`), and
/// wasmgate refuses any other: the two scenarios that use free strings are played with
/// UUIDs, and the literal id is served once to check that it fails alone.
const ALIASES: [(&str, &str); 2] = [
    ("recon-temp-deployment-001", RECON_ID),
    ("miaf-rotation-test", ROTATION_ID),
];
const APP_A_ID: &str = "b7f1c3a0-1a2b-4c3d-9e5f-6a7b8c9d0e1a";
const APP_B_ID: &str = "c8e2d4b1-2b3c-5d4e-0f6a-7b8c9d0e1f2b";
const TARGETS: [&str; 3] = ["edge-01", "edge-01/apps", "edge-01/sensors"];
const RC2_ONBOARDING_API_VERSION: &str = "onboarding.margo.org/v1alpha1";

fn load(file: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/margo-conformance")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str::<Vec<Value>>(&text)
        .unwrap_or_else(|e| panic!("{} is not a JSON array of scenarios: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// What a session recorded

#[derive(Clone, Copy)]
struct Phase {
    start: usize,
    end: usize,
    /// The mock's manifest version once the phase was done.
    version: u64,
}

struct Session {
    profile: Profile,
    requests: Vec<Recorded>,
    phases: BTreeMap<String, Phase>,
    /// Reactions observed while the session ran (the gate's answers, `/status`, log).
    facts: BTreeMap<String, Result<(), String>>,
    advertised: HashSet<String>,
    spiffe_id: String,
    /// rc.2: the clientId the mock handed out.
    client_id: Option<String>,
    enums: Enums,
}

enum Kind<'a> {
    Onboarding,
    Capabilities(&'a str),
    Manifest,
    Bundle(&'a str),
    /// The digest of `deployments/{id}/{digest}`.
    Yaml(&'a str),
    Status(&'a str),
    Other,
}

impl Session {
    fn api(&self, rest: &str) -> String {
        match &self.client_id {
            Some(id) => format!("/api/v1/clients/{id}/{rest}"),
            None => format!("/api/v1/{rest}"),
        }
    }

    fn kind<'a>(&self, r: &'a Recorded) -> Kind<'a> {
        if r.path == "/api/v1/onboarding" {
            return Kind::Onboarding;
        }
        let rest = match self.profile {
            Profile::Rc3 => r.path.strip_prefix("/api/v1/"),
            Profile::Rc2 => r
                .path
                .strip_prefix("/api/v1/clients/")
                .and_then(|p| p.split_once('/'))
                .map(|(_, rest)| rest),
        };
        let Some(rest) = rest else {
            return Kind::Other;
        };
        if let Some(device) = rest.strip_prefix("capabilities/") {
            return Kind::Capabilities(device);
        }
        if rest == "deployments" {
            return Kind::Manifest;
        }
        if let Some(digest) = rest.strip_prefix("bundles/") {
            return Kind::Bundle(digest);
        }
        if let Some(tail) = rest.strip_prefix("deployments/") {
            return match tail.split_once('/') {
                Some((id, "status")) => Kind::Status(id),
                Some((_, digest)) => Kind::Yaml(digest),
                None => Kind::Other,
            };
        }
        Kind::Other
    }

    fn phase(&self, name: &str) -> &[Recorded] {
        let p = self
            .phases
            .get(name)
            .unwrap_or_else(|| panic!("no phase {name}"));
        &self.requests[p.start..p.end]
    }

    fn of<'a>(
        &'a self,
        requests: &'a [Recorded],
        pick: impl Fn(&Kind) -> bool + 'a,
    ) -> impl Iterator<Item = &'a Recorded> + 'a {
        requests.iter().filter(move |r| pick(&self.kind(r)))
    }

    fn capability_puts(&self) -> Vec<&Recorded> {
        self.of(&self.requests, |k| matches!(k, Kind::Capabilities(_)))
            .filter(|r| r.method == "PUT")
            .collect()
    }

    fn manifest_gets(&self) -> Vec<&Recorded> {
        self.of(&self.requests, |k| matches!(k, Kind::Manifest))
            .collect()
    }

    fn status_posts<'a>(&'a self, requests: &'a [Recorded]) -> Vec<&'a Recorded> {
        self.of(requests, |k| matches!(k, Kind::Status(_)))
            .collect()
    }

    fn fact(&self, name: &str) -> Result<(), String> {
        self.facts
            .get(name)
            .cloned()
            .unwrap_or_else(|| Err(format!("the session recorded no fact {name:?}")))
    }
}

fn body(r: &Recorded) -> Result<Value, String> {
    serde_json::from_slice(&r.body)
        .map_err(|e| format!("{} {}: body is not JSON: {e}", r.method, r.path))
}

fn expected_statuses(step: &Value) -> Vec<u16> {
    let mut codes = vec![step["expected_status"].as_u64().unwrap_or(0) as u16];
    if let Some(more) = step["accepted_statuses"].as_array() {
        codes.extend(more.iter().filter_map(Value::as_u64).map(|c| c as u16));
    }
    codes
}

fn check(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}

fn summary(requests: &[&Recorded]) -> String {
    let list: Vec<String> = requests
        .iter()
        .rev()
        .take(8)
        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
        .collect();
    format!("last of {}: {list:?}", requests.len())
}

/// Enums of the rc.3 OpenAPI (`tests/data/margo/data`): what a conformant device sends.
struct Enums {
    architecture: Vec<String>,
    interface: Vec<String>,
    peripheral: Vec<String>,
    runtime: Vec<String>,
    deployment_type: Vec<String>,
    state: Vec<String>,
}

impl Enums {
    fn load() -> Enums {
        let doc = wfm::load_openapi("workload-management-api-1.0.0-rc.3.yaml");
        let list = |pointer: &str| -> Vec<String> {
            doc.pointer(pointer)
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("rc.3 OpenAPI has no enum at {pointer}"))
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        };
        let caps =
            "/components/schemas/DeviceCapabilitiesManifest/properties/properties/properties";
        Enums {
            architecture: list(&format!("{caps}/cpus/items/properties/architecture/enum")),
            interface: list("/components/schemas/DeviceCommunicationInterface/properties/type/enum"),
            peripheral: list("/components/schemas/DevicePeripheral/properties/type/enum"),
            runtime: list(&format!("{caps}/supportedRuntimes/items/enum")),
            deployment_type: list(&format!("{caps}/supportedDeploymentTypes/items/enum")),
            state: list("/components/schemas/DeploymentStatusManifest/properties/status/properties/state/enum"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Probes: one check of the recorded session per kind of step

type Probe = Box<dyn Fn(&Session, &Value) -> Result<(), String>>;

enum Verdict {
    Pass(Probe),
    NotApplicable(&'static str),
}

struct Entry {
    scenario: &'static str,
    step: &'static str,
    verdict: Verdict,
}

fn pass(
    scenario: &'static str,
    step: &'static str,
    probe: impl Fn(&Session, &Value) -> Result<(), String> + 'static,
) -> Entry {
    Entry {
        scenario,
        step,
        verdict: Verdict::Pass(Box::new(probe)),
    }
}

fn na(scenario: &'static str, step: &'static str, why: &'static str) -> Entry {
    Entry {
        scenario,
        step,
        verdict: Verdict::NotApplicable(why),
    }
}

const HARNESS: &str = "harness call (test-control endpoint of the conformance mock); a device never makes it, the session sets the same desired state through the mock's API";

/// Same JSON type wherever both documents have a member; arrays compared by their first
/// elements. `theirs` is the step's request body, `ours` what the client sent.
fn same_shape(path: &str, theirs: &Value, ours: &Value) -> Result<(), String> {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    check(kind(theirs) == kind(ours), || {
        format!(
            "{path}: the scenario sends a {}, the client a {} ({ours})",
            kind(theirs),
            kind(ours)
        )
    })?;
    match (theirs, ours) {
        (Value::Object(t), Value::Object(o)) => {
            for (k, v) in t {
                if let Some(mine) = o.get(k) {
                    same_shape(&format!("{path}.{k}"), v, mine)?;
                }
            }
            Ok(())
        }
        (Value::Array(t), Value::Array(o)) => match (t.first(), o.first()) {
            (Some(t), Some(o)) => same_shape(&format!("{path}.0"), t, o),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn identity_fields(device: &str, doc: &Value) -> Result<(), String> {
    let props = &doc["properties"];
    check(props.is_object(), || {
        format!("{device}: no `properties` object")
    })?;
    check(props["id"] == device, || {
        format!(
            "{device}: properties.id is {} (must be the path deviceId)",
            props["id"]
        )
    })?;
    for field in ["vendor", "modelNumber", "serialNumber"] {
        check(props[field].as_str().is_some_and(|s| !s.is_empty()), || {
            format!("{device}: properties.{field} must be a non-empty string")
        })?;
    }
    if let Some(roles) = props.get("roles") {
        return Err(format!("{device}: sends the retired `roles` ({roles})"));
    }
    Ok(())
}

/// The capabilities PUTs of every target in `requests` (the first one per target):
/// answered as the step expects, identity fields right, over the client's own identity,
/// hosting targets shaped like the step's body.
fn capabilities_in(s: &Session, step: &Value, requests: &[Recorded]) -> Result<(), String> {
    let allowed = expected_statuses(step);
    for target in TARGETS {
        let put = s
            .of(
                requests,
                |k| matches!(k, Kind::Capabilities(d) if *d == target),
            )
            .find(|r| r.method == "PUT" || r.method == "POST")
            .ok_or_else(|| format!("no capabilities report of {target}"))?;
        check(put.method == "PUT", || {
            format!(
                "{target}: method {} (the client reports with PUT)",
                put.method
            )
        })?;
        check(allowed.contains(&put.status), || {
            format!(
                "{target}: answered {}, the step expects {allowed:?}",
                put.status
            )
        })?;
        check(
            put.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            || format!("{target}: Content-Type {:?}", put.header("content-type")),
        )?;
        let doc = body(put)?;
        identity_fields(target, &doc)?;
        match s.profile {
            Profile::Rc3 => {
                check(
                    put.peer_spiffe_id.as_deref() == Some(s.spiffe_id.as_str()),
                    || {
                        format!(
                            "{target}: sent over a connection of {:?}",
                            put.peer_spiffe_id
                        )
                    },
                )?;
                if target.contains('/') {
                    let theirs = &step["request_body"];
                    same_shape("body", theirs, &doc)?;
                    let missing: Vec<&String> = theirs["properties"]
                        .as_object()
                        .map(|o| {
                            o.keys()
                                .filter(|k| doc["properties"].get(*k).is_none())
                                .collect()
                        })
                        .unwrap_or_default();
                    check(missing.is_empty(), || {
                        format!("{target}: a hosting target lacks {missing:?}")
                    })?;
                }
            }
            Profile::Rc2 => {
                check(doc["apiVersion"] == "device.margo.org/v1alpha1", || {
                    format!("{target}: apiVersion {}", doc["apiVersion"])
                })?;
                check(doc["kind"] == "DeviceCapabilitiesManifest", || {
                    format!("{target}: kind {}", doc["kind"])
                })?;
            }
        }
    }
    Ok(())
}

/// ... and the client took the replies as acceptance (`/status` targets `accepted`).
fn first_capabilities(s: &Session, step: &Value) -> Result<(), String> {
    capabilities_in(s, step, &s.requests)?;
    s.fact("caps-accepted")
}

/// After a restart the client reports every target again: an update to the WFM.
fn updated_capabilities(s: &Session, step: &Value) -> Result<(), String> {
    capabilities_in(s, step, s.phase("restart"))?;
    s.fact("restart")
}

/// rc.2: every capabilities body names its schema (`apiVersion`, `kind`).
fn caps_api_version(s: &Session, _: &Value) -> Result<(), String> {
    let puts = s.capability_puts();
    check(!puts.is_empty(), || "no capabilities reports".into())?;
    for put in puts {
        let doc = body(put)?;
        check(
            doc["apiVersion"] == "device.margo.org/v1alpha1"
                && doc["kind"] == "DeviceCapabilitiesManifest",
            || {
                format!(
                    "{}: apiVersion {} kind {}",
                    put.path, doc["apiVersion"], doc["kind"]
                )
            },
        )?;
    }
    Ok(())
}

/// `check_doc` on every capabilities body sent; at least `min_values` values looked at.
fn every_capabilities(
    s: &Session,
    what: &str,
    values: impl Fn(&Value) -> Vec<Value>,
    ok: impl Fn(&Value) -> bool,
) -> Result<(), String> {
    let puts = s.capability_puts();
    let mut seen = 0;
    for put in &puts {
        let doc = body(put)?;
        for v in values(&doc) {
            seen += 1;
            check(ok(&v), || {
                format!("{}: {what}: {v} is not allowed", put.path)
            })?;
        }
    }
    check(seen > 0, || {
        format!("no {what} in {} capabilities reports", puts.len())
    })
}

fn props_list(doc: &Value, field: &str) -> Vec<Value> {
    let p = &doc["properties"];
    let list = match field {
        "cpus" => p.get("cpus").or_else(|| p.get("cpu")),
        f => p.get(f),
    };
    list.and_then(Value::as_array).cloned().unwrap_or_default()
}

fn caps_have_properties(s: &Session, _: &Value) -> Result<(), String> {
    let puts = s.capability_puts();
    check(!puts.is_empty(), || "no capabilities reports".into())?;
    for put in puts {
        let device = match s.kind(put) {
            Kind::Capabilities(d) => d,
            _ => unreachable!(),
        };
        identity_fields(device, &body(put)?)?;
    }
    Ok(())
}

/// Values of `field` in every capabilities body (of `member` in each list entry when
/// given) are in the rc.3 enum `allowed` picks.
fn in_enum(
    field: &'static str,
    member: Option<&'static str>,
    allowed: fn(&Enums) -> &Vec<String>,
) -> impl Fn(&Session, &Value) -> Result<(), String> {
    move |s, _| {
        every_capabilities(
            s,
            field,
            |d| {
                props_list(d, field)
                    .into_iter()
                    .map(|v| member.map_or(v.clone(), |m| v[m].clone()))
                    .collect()
            },
            |v| {
                v.as_str()
                    .is_some_and(|t| allowed(&s.enums).iter().any(|e| e == t))
            },
        )
    }
}

fn cpus_have_cores(s: &Session, _: &Value) -> Result<(), String> {
    every_capabilities(
        s,
        "cpus[]",
        |d| props_list(d, "cpus"),
        |c| c["cores"].as_f64().is_some_and(|n| n > 0.0),
    )
}

/// memory / storage are free-format strings (`256Mi`), accepted as such.
fn memory_strings(s: &Session, step: &Value) -> Result<(), String> {
    every_capabilities(
        s,
        "memory / storage",
        |d| {
            vec![
                d["properties"]["memory"].clone(),
                d["properties"]["storage"].clone(),
            ]
            .into_iter()
            .filter(|v| !v.is_null())
            .collect()
        },
        |v| v.as_str().is_some_and(|t| !t.is_empty()),
    )?;
    capabilities_in(s, step, &s.requests)
}

/// The see-thru host hosts nothing: identity fields only, no cpus, and it is accepted.
fn host_without_cpus(s: &Session, step: &Value) -> Result<(), String> {
    let allowed = expected_statuses(step);
    let puts = s.capability_puts();
    let host: Vec<&&Recorded> = puts
        .iter()
        .filter(|r| matches!(s.kind(r), Kind::Capabilities("edge-01")))
        .collect();
    check(!host.is_empty(), || "no report of the host".into())?;
    for r in &host {
        let doc = body(r)?;
        check(doc["properties"].get("cpus").is_none(), || {
            format!("the host reports cpus: {doc}")
        })?;
    }
    check(host.iter().any(|r| allowed.contains(&r.status)), || {
        format!(
            "host answered {:?}",
            host.iter().map(|r| r.status).collect::<Vec<_>>()
        )
    })
}

/// A partition without peripherals sends `peripherals: []`, which is accepted.
fn empty_peripherals(s: &Session, step: &Value) -> Result<(), String> {
    let allowed = expected_statuses(step);
    let puts = s.capability_puts();
    let sensors = puts
        .iter()
        .filter(|r| matches!(s.kind(r), Kind::Capabilities("edge-01/sensors")))
        .collect::<Vec<_>>();
    let last = sensors.last().ok_or("no report of edge-01/sensors")?;
    check(
        body(last)?["properties"]["peripherals"] == json!([]),
        || "edge-01/sensors does not send an empty peripherals list".into(),
    )?;
    check(sensors.iter().any(|r| allowed.contains(&r.status)), || {
        format!(
            "edge-01/sensors answered {:?}",
            sensors.iter().map(|r| r.status).collect::<Vec<_>>()
        )
    })
}

/// Every manifest poll asks for the manifest type (and honours the step's headers); at
/// least one was answered as the step expects.
fn manifest_polls(s: &Session, step: &Value) -> Result<(), String> {
    let gets = s.manifest_gets();
    check(!gets.is_empty(), || "no manifest poll".into())?;
    for r in &gets {
        check(r.method == "GET", || format!("{} {}", r.method, r.path))?;
        check(r.path == s.api("deployments"), || {
            format!("polled {}", r.path)
        })?;
        let accept = r.header("accept").unwrap_or_default();
        check(accept.contains(MANIFEST_MEDIA_TYPE), || {
            format!("Accept {accept:?}")
        })?;
        if let Some(want) = step["headers"]["Accept"].as_str() {
            check(accept.contains(want), || {
                format!("Accept {accept:?}, the step sends {want:?}")
            })?;
        }
    }
    let allowed = expected_statuses(step);
    check(gets.iter().any(|r| allowed.contains(&r.status)), || {
        format!("no poll answered {allowed:?}; {}", summary(&gets))
    })
}

/// Re-polls carry the ETag as `If-None-Match` and are answered 304.
fn conditional_polls(s: &Session, step: &Value) -> Result<(), String> {
    let gets = s.manifest_gets();
    for r in &gets {
        if let Some(tag) = r.header("if-none-match") {
            check(
                tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"'),
                || format!("If-None-Match {tag:?} is not a quoted entity-tag"),
            )?;
        }
    }
    let allowed = expected_statuses(step);
    check(
        gets.iter()
            .any(|r| r.header("if-none-match").is_some() && allowed.contains(&r.status)),
        || {
            format!(
                "no conditional poll answered {allowed:?}; {}",
                summary(&gets)
            )
        },
    )
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Content GETs name a digest the WFM advertised, raw in the path.
fn fetched_digests_advertised(s: &Session, bundle: bool) -> Result<(), String> {
    let mut seen = 0;
    for r in &s.requests {
        let digest = match (s.kind(r), bundle) {
            (Kind::Bundle(d), true) | (Kind::Yaml(d), false) => d,
            _ => continue,
        };
        seen += 1;
        check(valid_digest(digest), || {
            format!("{} {}: digest syntax", r.method, r.path)
        })?;
        check(s.advertised.contains(digest), || {
            format!("{} {}: a digest the WFM never advertised", r.method, r.path)
        })?;
    }
    check(seen > 0, || "no such download".into())
}

fn bundle_fetch(s: &Session, step: &Value) -> Result<(), String> {
    fetched_digests_advertised(s, true)?;
    let allowed = expected_statuses(step);
    let ok = s
        .of(&s.requests, |k| matches!(k, Kind::Bundle(_)))
        .find(|r| allowed.contains(&r.status))
        .ok_or_else(|| format!("no bundle download answered {allowed:?}"))?;
    let accept = ok.header("accept").unwrap_or("*/*");
    check(
        accept.contains(wfm::BUNDLE_MEDIA_TYPE) || accept.contains("*/*"),
        || format!("bundle Accept {accept:?}"),
    )
}

fn yaml_fetch(s: &Session, step: &Value) -> Result<(), String> {
    fetched_digests_advertised(s, false)?;
    let allowed = expected_statuses(step);
    check(
        s.of(&s.requests, |k| matches!(k, Kind::Yaml(_)))
            .any(|r| allowed.contains(&r.status)),
        || format!("no deployment YAML download answered {allowed:?}"),
    )
}

fn bundle_digests(s: &Session, _: &Value) -> Result<(), String> {
    fetched_digests_advertised(s, true)
}

fn yaml_digests(s: &Session, _: &Value) -> Result<(), String> {
    fetched_digests_advertised(s, false)
}

/// Content is addressed by digest and verified: what the client holds it never downloads
/// again, so it needs no conditional GET. Counted over the phases without fixtures.
fn content_not_refetched(s: &Session, _: &Value) -> Result<(), String> {
    let mut fetched: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, p) in &s.phases {
        if name.starts_with("fx-") {
            continue;
        }
        for r in &s.requests[p.start..p.end] {
            if matches!(s.kind(r), Kind::Bundle(_) | Kind::Yaml(_)) && r.status == 200 {
                *fetched.entry(r.path.as_str()).or_default() += 1;
            }
        }
    }
    check(!fetched.is_empty(), || "no content downloaded".into())?;
    let again: Vec<_> = fetched.iter().filter(|(_, n)| **n > 1).collect();
    check(again.is_empty(), || format!("downloaded again: {again:?}"))
}

/// Every status report: the path's deploymentId, a state of the enum, named components
/// with states of the enum, `adoptedManifestVersion` (rc.3) or apiVersion/kind (rc.2).
fn status_well_formed(s: &Session, r: &Recorded) -> Result<Value, String> {
    let Kind::Status(id) = s.kind(r) else {
        unreachable!()
    };
    let b = body(r)?;
    let at = format!("POST {}", r.path);
    check(r.method == "POST", || format!("{at}: method {}", r.method))?;
    check(b["deploymentId"] == id, || {
        format!(
            "{at}: body deploymentId {} differs from the path",
            b["deploymentId"]
        )
    })?;
    let known_state = |v: &Value| {
        v.as_str()
            .is_some_and(|t| s.enums.state.iter().any(|e| e == t))
    };
    check(known_state(&b["status"]["state"]), || {
        format!("{at}: status.state {}", b["status"]["state"])
    })?;
    let comps = b["components"].as_array().cloned().unwrap_or_default();
    check(!comps.is_empty(), || format!("{at}: no components"))?;
    for c in &comps {
        check(c["name"].as_str().is_some_and(|n| !n.is_empty()), || {
            format!("{at}: a component without name: {c}")
        })?;
        check(known_state(&c["state"]), || {
            format!("{at}: component state {}", c["state"])
        })?;
    }
    if let Some(d) = b.get("deviceId") {
        check(d.is_string(), || {
            format!("{at}: deviceId {d} is not a string")
        })?;
    }
    match s.profile {
        Profile::Rc3 => check(
            b["adoptedManifestVersion"].as_u64().is_some_and(|v| v >= 1),
            || {
                format!(
                    "{at}: adoptedManifestVersion {}",
                    b["adoptedManifestVersion"]
                )
            },
        )?,
        Profile::Rc2 => {
            check(b["apiVersion"] == "deployment.margo.org/v1alpha1", || {
                format!("{at}: apiVersion {}", b["apiVersion"])
            })?;
            check(b["kind"] == "DeploymentStatusManifest", || {
                format!("{at}: kind {}", b["kind"])
            })?;
        }
    }
    Ok(b)
}

fn all_statuses_well_formed(s: &Session, _: &Value) -> Result<(), String> {
    let posts = s.status_posts(&s.requests);
    check(posts.len() >= 5, || {
        format!("only {} status reports", posts.len())
    })?;
    for r in posts {
        status_well_formed(s, r)?;
    }
    Ok(())
}

/// The report the step makes (its deploymentId, state and component names; a
/// `{deploymentId}` placeholder is the default deployment, as the suite's mock serves
/// it) was made by the client in `phase` (`None`: anywhere), answered as the step
/// expects, adopting the phase's manifest version.
fn reported(phase: Option<&'static str>) -> impl Fn(&Session, &Value) -> Result<(), String> {
    move |s, step| {
        let want = &step["request_body"];
        let id = want["deploymentId"].as_str().unwrap_or_default();
        let id = if id.starts_with('{') { DEFAULT_ID } else { id };
        let id = ALIASES
            .iter()
            .find(|(literal, _)| *literal == id)
            .map_or(id, |(_, uuid)| *uuid);
        let state = want["status"]["state"].as_str().unwrap_or_default();
        let names: BTreeSet<&str> = want["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let (requests, version) = match phase {
            Some(p) => (s.phase(p), Some(s.phases[p].version)),
            None => (&s.requests[..], None),
        };
        let allowed = expected_statuses(step);
        let mut seen = vec![];
        for r in s.status_posts(requests) {
            let b = status_well_formed(s, r)?;
            if b["deploymentId"] != id {
                continue;
            }
            let got: BTreeSet<&str> = b["components"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            seen.push(format!("{} {}", b["status"]["state"], r.status));
            let version_ok = match (s.profile, version) {
                (Profile::Rc3, Some(v)) => b["adoptedManifestVersion"] == v,
                _ => true,
            };
            if b["status"]["state"] == state
                && got == names
                && version_ok
                && allowed.contains(&r.status)
            {
                return Ok(());
            }
        }
        Err(format!(
            "no {state:?} report of {id} with components {names:?} answered {allowed:?}{} in {}; saw {seen:?}",
            version.map(|v| format!(" at v{v}")).unwrap_or_default(),
            phase.unwrap_or("the session"),
        ))
    }
}

/// Reports for partition deployments name the partition in `deviceId`.
fn status_names_device(s: &Session, step: &Value) -> Result<(), String> {
    let allowed = expected_statuses(step);
    let posts = s.status_posts(&s.requests);
    check(!posts.is_empty(), || "no status reports".into())?;
    for r in posts {
        let b = status_well_formed(s, r)?;
        check(
            b["deviceId"]
                .as_str()
                .is_some_and(|d| d.starts_with("edge-01/")),
            || format!("POST {}: deviceId {}", r.path, b["deviceId"]),
        )?;
        check(allowed.contains(&r.status), || {
            format!("POST {} answered {}", r.path, r.status)
        })?;
    }
    Ok(())
}

/// Every manifest poll accepts the manifest type; none was answered 406.
fn accept_allows_manifest(s: &Session, _: &Value) -> Result<(), String> {
    let gets = s.manifest_gets();
    check(!gets.is_empty(), || "no manifest poll".into())?;
    for r in gets {
        let accept = r.header("accept").unwrap_or_default();
        check(
            accept.contains(MANIFEST_MEDIA_TYPE) && r.status != 406,
            || format!("poll with Accept {accept:?} answered {}", r.status),
        )?;
    }
    Ok(())
}

fn mtls_identity(s: &Session, step: &Value) -> Result<(), String> {
    let strangers: Vec<_> = s
        .requests
        .iter()
        .filter(|r| r.peer_spiffe_id.as_deref() != Some(s.spiffe_id.as_str()))
        .map(|r| format!("{} {} as {:?}", r.method, r.path, r.peer_spiffe_id))
        .collect();
    check(strangers.is_empty(), || {
        format!("requests without the client's SVID: {strangers:?}")
    })?;
    manifest_polls(s, step)
}

/// The reconciliation scenario's second deployment, played with a UUID; served with the
/// scenario's literal non-UUID id it fails alone, naming the field.
fn second_installed(s: &Session, step: &Value) -> Result<(), String> {
    reported(Some("add-second"))(s, step)?;
    s.fact("non-uuid-id")
}

fn fact(name: &'static str) -> impl Fn(&Session, &Value) -> Result<(), String> {
    move |s, _| s.fact(name)
}

// rc.2 only ------------------------------------------------------------------------------

fn successful_onboarding(s: &Session) -> Result<(&Recorded, Value), String> {
    let ok: Vec<&Recorded> = s
        .of(&s.requests, |k| matches!(k, Kind::Onboarding))
        .filter(|r| r.status == 201 || r.status == 200)
        .collect();
    check(ok.len() == 1, || {
        format!(
            "{} successful onboardings (the clientId is kept across restarts)",
            ok.len()
        )
    })?;
    Ok((ok[0], body(ok[0])?))
}

fn onboarded(s: &Session, step: &Value) -> Result<(), String> {
    let (r, b) = successful_onboarding(s)?;
    let allowed = expected_statuses(step);
    check(allowed.contains(&r.status), || {
        format!("onboarding answered {}", r.status)
    })?;
    check(r.method == "POST", || {
        format!("onboarding with {}", r.method)
    })?;
    check(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        || format!("onboarding Content-Type {:?}", r.header("content-type")),
    )?;
    onboarding_body(&b)?;
    client_id_in_paths(s, step)
}

fn onboarding_body(b: &Value) -> Result<(), String> {
    check(b["apiVersion"] == RC2_ONBOARDING_API_VERSION, || {
        format!("onboarding apiVersion {}", b["apiVersion"])
    })?;
    check(b["kind"] == "OnboardingRequest", || {
        format!("onboarding kind {}", b["kind"])
    })?;
    let cert = b["certificate"].as_str().unwrap_or_default();
    let pem = base64::engine::general_purpose::STANDARD
        .decode(cert)
        .map_err(|e| format!("onboarding certificate is not base64: {e}"))?;
    check(
        String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----"),
        || "onboarding certificate is not base64 of a PEM certificate".into(),
    )
}

fn onboarding_fields(s: &Session, _: &Value) -> Result<(), String> {
    let attempts: Vec<&Recorded> = s
        .of(&s.requests, |k| matches!(k, Kind::Onboarding))
        .collect();
    check(!attempts.is_empty(), || "no onboarding".into())?;
    for r in attempts {
        onboarding_body(&body(r)?)?;
    }
    Ok(())
}

/// Onboarding is the one request that is not signed.
fn onboarding_unsigned(s: &Session, step: &Value) -> Result<(), String> {
    let (r, _) = successful_onboarding(s)?;
    check(
        r.header("signature-input").is_none() && r.header("signature").is_none(),
        || "the onboarding request is signed".into(),
    )?;
    let allowed = expected_statuses(step);
    check(allowed.contains(&r.status), || {
        format!("onboarding answered {}", r.status)
    })
}

fn client_id_in_paths(s: &Session, _: &Value) -> Result<(), String> {
    let id = s.client_id.as_deref().ok_or("no clientId")?;
    let prefix = format!("/api/v1/clients/{id}/");
    let stray: Vec<_> = s
        .requests
        .iter()
        .filter(|r| !matches!(s.kind(r), Kind::Onboarding) && !r.path.starts_with(&prefix))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    check(stray.is_empty(), || {
        format!("requests outside {prefix}: {stray:?}")
    })
}

/// Every request of the chosen kind is RFC 9421-signed and verified (never a 401).
fn signed(pick: fn(&Kind) -> bool) -> impl Fn(&Session, &Value) -> Result<(), String> {
    move |s, _| {
        let list: Vec<&Recorded> = s.of(&s.requests, pick).collect();
        check(!list.is_empty(), || "no such request".into())?;
        for r in list {
            check(
                r.header("signature-input").is_some() && r.header("signature").is_some(),
                || format!("{} {} is not signed", r.method, r.path),
            )?;
            check(r.status != 401, || {
                format!("{} {}: signature refused", r.method, r.path)
            })?;
            if r.body.is_empty() {
                check(r.header("content-digest").is_none(), || {
                    format!("{} {}: Content-Digest without a body", r.method, r.path)
                })?;
            }
        }
        Ok(())
    }
}

/// Every request with a body of the chosen kind carries the RFC 9530 digest of it.
fn content_digest(pick: fn(&Kind) -> bool) -> impl Fn(&Session, &Value) -> Result<(), String> {
    move |s, _| {
        let list: Vec<&Recorded> = s
            .of(&s.requests, pick)
            .filter(|r| !r.body.is_empty())
            .collect();
        check(!list.is_empty(), || "no such request with a body".into())?;
        for r in list {
            let want = format!(
                "sha-256=:{}:",
                base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&r.body))
            );
            check(r.header("content-digest") == Some(want.as_str()), || {
                format!(
                    "{} {}: Content-Digest {:?}, want {want}",
                    r.method,
                    r.path,
                    r.header("content-digest")
                )
            })?;
        }
        Ok(())
    }
}

fn is_caps(k: &Kind) -> bool {
    matches!(k, Kind::Capabilities(_))
}
fn is_status(k: &Kind) -> bool {
    matches!(k, Kind::Status(_))
}
fn is_manifest(k: &Kind) -> bool {
    matches!(k, Kind::Manifest)
}
fn is_bundle(k: &Kind) -> bool {
    matches!(k, Kind::Bundle(_))
}
fn is_yaml(k: &Kind) -> bool {
    matches!(k, Kind::Yaml(_))
}

// ---------------------------------------------------------------------------------------
// The mappings

const NO_COMPOSE: &str = "fetches the compose file named by a compose deployment's packageLocation; wasmgate runs Wasm components (deploymentProfile.type custom, OCI or file repository) and never fetches compose files (Margo's compose samples fail alone with wasmgate.unsupported-type: interop test one_bad_deployment_fails_alone)";
const ROLE_VARIANT: &str = "WFM-side acceptance of another device's role variant (compose-only / helm-only device); wasmgate reports `custom` only, checked against the rc.3 enums in step-core-1.3 / step-core-1.4";

fn rc3_mapping() -> Vec<Entry> {
    let mut m = vec![
        pass("scenario-capabilities", "step-2.1", first_capabilities),
        pass("scenario-capabilities", "step-2.2", updated_capabilities),
    ];
    for (scenario, get) in [
        ("scenario-deployments", "step-3.1"),
        ("scenario-status-and-retrieval-errors", "step-6.1"),
        ("flex-bundle", "flex-bundle-setup-get-deployments"),
        ("flex-deployment-manifest", "flex-deployment-manifest-setup"),
        ("flex-desired-state", "flex-desired-state-get"),
        ("flex-status", "flex-status-setup"),
    ] {
        m.push(pass(scenario, get, manifest_polls));
    }
    m.extend([
        pass("scenario-deployments", "step-3.2", conditional_polls),
        pass("scenario-deployments", "step-3.3", bundle_fetch),
        pass("scenario-deployments", "step-3.4", content_not_refetched),
        pass("scenario-deployments", "step-3.5", yaml_fetch),
        pass("scenario-deployments", "step-3.6", content_not_refetched),
        pass("scenario-deployments", "step-3.7", reported(None)),
        pass("scenario-capabilities-errors", "step-5.1", caps_have_properties),
        pass("scenario-capabilities-errors", "step-5.2", in_enum("peripherals", Some("type"), |e| &e.peripheral)),
        pass("scenario-capabilities-errors", "step-5.3", in_enum("interfaces", Some("type"), |e| &e.interface)),
        pass("scenario-capabilities-errors", "step-5.4", in_enum("cpus", Some("architecture"), |e| &e.architecture)),
        pass("scenario-status-and-retrieval-errors", "step-6.2", accept_allows_manifest),
        pass("scenario-status-and-retrieval-errors", "step-6.3", bundle_digests),
        pass("scenario-status-and-retrieval-errors", "step-6.4", yaml_digests),
        pass("scenario-status-and-retrieval-errors", "step-6.5", all_statuses_well_formed),
        pass("scenario-status-and-retrieval-errors", "step-6.6", all_statuses_well_formed),
        pass("scenario-status-and-retrieval-errors", "step-6.7", all_statuses_well_formed),
        pass("scenario-live-assertion-demo", "step-custom-1", memory_strings),
        na("device-core-capability-roles", "step-core-1.1", ROLE_VARIANT),
        na("device-core-capability-roles", "step-core-1.2", ROLE_VARIANT),
        pass("device-core-capability-roles", "step-core-1.3", in_enum("supportedDeploymentTypes", None, |e| &e.deployment_type)),
        pass("device-core-capability-roles", "step-core-1.4", in_enum("supportedRuntimes", None, |e| &e.runtime)),
        pass("device-core-capability-roles", "step-core-1.5", cpus_have_cores),
        na("device-core-manifest-semantics", "step-core-2.1", "WFM-side default negotiation of a GET without Accept; the client always sends Accept with the manifest type (step-6.2)"),
        na("device-core-manifest-semantics", "step-core-2.2", HARNESS),
        pass("device-core-manifest-semantics", "step-core-2.3", fact("zero")),
        na("device-core-manifest-semantics", "step-core-2-cleanup", HARNESS),
        pass("device-mi004-rfc5280-certificate", "step-mi004-1.0", mtls_identity),
        pass("device-mi018-tls-trust", "step-mi018-1.0", mtls_identity),
    ]);
    for (scenario, prefix, name) in [
        (
            "device-mi008-unsupported-digest-algorithm",
            "step-mi008",
            "mi008",
        ),
        ("device-mi006-bundle-digest-mismatch", "step-mi006", "mi006"),
        (
            "device-mi019-deployment-digest-mismatch",
            "step-mi019",
            "mi019",
        ),
        (
            "device-mi025-026-sizebytes-not-integrity",
            "step-mi025",
            "mi025",
        ),
    ] {
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        m.push(na(scenario, leak(format!("{prefix}-1.1")), HARNESS));
        m.push(pass(scenario, leak(format!("{prefix}-1.2")), fact(name)));
        m.push(na(scenario, leak(format!("{prefix}-cleanup")), HARNESS));
    }
    let mi010 = "device-mi010-non-increasing-manifest-version";
    m.extend([
        na(mi010, "step-mi010-1.1", HARNESS),
        pass(mi010, "step-mi010-1.2", fact("mi010-accepted")),
        na(mi010, "step-mi010-1.3", HARNESS),
        pass(mi010, "step-mi010-1.4", fact("mi010")),
        na(mi010, "step-mi010-cleanup", HARNESS),
        pass("flex-bundle", "flex-bundle-download", bundle_fetch),
        pass(
            "flex-bundle",
            "flex-bundle-etag-match",
            content_not_refetched,
        ),
        pass(
            "flex-bundle",
            "flex-bundle-reject-wrong-digest",
            bundle_digests,
        ),
        pass(
            "flex-capabilities",
            "flex-capabilities-post-full",
            first_capabilities,
        ),
        pass(
            "flex-capabilities",
            "flex-capabilities-put-full",
            updated_capabilities,
        ),
        pass(
            "flex-capabilities",
            "flex-capabilities-post-no-resources",
            empty_peripherals,
        ),
        pass(
            "flex-capabilities",
            "flex-capabilities-reject-resources-missing-cpu",
            host_without_cpus,
        ),
        pass(
            "flex-capabilities",
            "flex-capabilities-reject-missing-properties",
            caps_have_properties,
        ),
        pass(
            "flex-capabilities",
            "flex-capabilities-reject-invalid-role",
            in_enum("peripherals", Some("type"), |e| &e.peripheral),
        ),
        pass(
            "flex-capabilities",
            "flex-capabilities-reject-invalid-interface-type",
            in_enum("interfaces", Some("type"), |e| &e.interface),
        ),
        pass(
            "flex-capabilities",
            "flex-capabilities-reject-invalid-cpu-architecture",
            in_enum("cpus", Some("architecture"), |e| &e.architecture),
        ),
        pass(
            "flex-deployment-manifest",
            "flex-deployment-manifest-download",
            yaml_fetch,
        ),
        pass(
            "flex-deployment-manifest",
            "flex-deployment-manifest-etag-match",
            content_not_refetched,
        ),
        pass(
            "flex-deployment-manifest",
            "flex-deployment-manifest-reject-wrong-digest",
            yaml_digests,
        ),
        pass(
            "flex-desired-state",
            "flex-desired-state-etag-match",
            conditional_polls,
        ),
        pass(
            "flex-desired-state",
            "flex-desired-state-reject-bad-accept",
            accept_allows_manifest,
        ),
    ]);
    let recon = "flex-desired-state-reconciliation";
    m.extend([
        na(recon, "flex-reconciliation-reset-empty", HARNESS),
        pass(recon, "flex-reconciliation-get-empty", fact("empty")),
        pass(
            recon,
            "flex-reconciliation-steady-state-304",
            fact("empty-304"),
        ),
        na(recon, "flex-reconciliation-add-default", HARNESS),
        pass(
            recon,
            "flex-reconciliation-get-after-add",
            fact("get-after-add"),
        ),
        pass(
            recon,
            "flex-reconciliation-fetch-bundle",
            fact("add-default-content"),
        ),
        pass(
            recon,
            "flex-reconciliation-fetch-manifest",
            fact("add-default-content"),
        ),
        pass(
            recon,
            "flex-reconciliation-status-pending",
            reported(Some("add-default")),
        ),
        pass(
            recon,
            "flex-reconciliation-status-installing",
            reported(Some("add-default")),
        ),
        pass(
            recon,
            "flex-reconciliation-status-installed",
            reported(Some("add-default")),
        ),
        na(recon, "flex-reconciliation-add-second-deployment", HARNESS),
        pass(
            recon,
            "flex-reconciliation-status-second-installed",
            second_installed,
        ),
        na(
            recon,
            "flex-reconciliation-remove-second-deployment",
            HARNESS,
        ),
        pass(
            recon,
            "flex-reconciliation-status-second-removed",
            reported(Some("remove-second")),
        ),
        pass(
            recon,
            "flex-reconciliation-get-final-state",
            fact("recon-final"),
        ),
    ]);
    let multi = "flex-desired-state-multi-app";
    m.extend([
        na(multi, "flex-multiapp-assign-both", HARNESS),
        pass(multi, "flex-multiapp-get-both", fact("multi-both")),
        pass(
            multi,
            "flex-multiapp-fetch-app-a-manifest",
            fact("multi-content"),
        ),
        na(multi, "flex-multiapp-fetch-app-a-compose", NO_COMPOSE),
        pass(
            multi,
            "flex-multiapp-fetch-app-b-manifest",
            fact("multi-content"),
        ),
        na(multi, "flex-multiapp-fetch-app-b-compose", NO_COMPOSE),
        na(multi, "flex-multiapp-remove-app-b", HARNESS),
        pass(
            multi,
            "flex-multiapp-get-after-remove",
            fact("multi-after-remove"),
        ),
        pass(
            multi,
            "flex-multiapp-status-app-b-removed",
            reported(Some("multi-remove-b")),
        ),
        na(multi, "flex-multiapp-restore-default", HARNESS),
        pass(multi, "flex-multiapp-get-final-state", fact("multi-final")),
    ]);
    for app in ["a", "b"] {
        for state in ["pending", "installing", "installed"] {
            let step: &'static str =
                Box::leak(format!("flex-multiapp-status-app-{app}-{state}").into_boxed_str());
            m.push(pass(multi, step, reported(Some("multi-assign"))));
        }
    }
    m.extend([
        pass("flex-status", "flex-status-post-installed", reported(None)),
        pass(
            "flex-status",
            "flex-status-post-with-deviceid",
            status_names_device,
        ),
        pass(
            "flex-status",
            "flex-status-reject-invalid-state",
            all_statuses_well_formed,
        ),
        pass(
            "flex-status",
            "flex-status-reject-missing-component-name",
            all_statuses_well_formed,
        ),
        pass(
            "flex-status",
            "flex-status-reject-deploymentid-mismatch",
            all_statuses_well_formed,
        ),
        pass(
            "scenario-miaf-identity-mtls",
            "step-miaf-mtls-1",
            first_capabilities,
        ),
        pass(
            "scenario-miaf-identity-mtls",
            "step-miaf-mtls-2",
            fact("unknown-members"),
        ),
        pass(
            "scenario-miaf-identity-svid-rotation",
            "step-miaf-rotation-1",
            reported(Some("rotation-before")),
        ),
        pass(
            "scenario-miaf-identity-svid-rotation",
            "step-miaf-rotation-2",
            fact("rotation"),
        ),
    ]);
    m
}

fn rc2_mapping() -> Vec<Entry> {
    let mut m = vec![];
    for (scenario, step) in [
        ("scenario-capabilities", "step-2.0"),
        ("scenario-capabilities-errors", "step-5.0"),
        ("scenario-deployments", "step-3.0"),
        ("scenario-live-assertion-demo", "step-7.0"),
        ("scenario-onboarding", "step-1.2"),
        ("scenario-status-and-retrieval-errors", "step-6.0"),
    ] {
        m.push(pass(scenario, step, onboarded));
    }
    m.extend([
        pass("scenario-capabilities", "step-2.1", first_capabilities),
        pass("scenario-capabilities", "step-2.2", updated_capabilities),
        pass("scenario-capabilities-errors", "step-5.1", caps_have_properties),
        // The older rule set refused unknown roles; rc.3 retired roles, the client sends none.
        pass("scenario-capabilities-errors", "step-5.2", caps_have_properties),
        pass("scenario-capabilities-errors", "step-5.3", in_enum("interfaces", Some("type"), |e| &e.interface)),
        pass("scenario-capabilities-errors", "step-5.4", in_enum("cpus", Some("architecture"), |e| &e.architecture)),
        pass("scenario-capabilities-errors", "step-5.5", content_digest(is_caps)),
        pass("scenario-capabilities-errors", "step-5.6", signed(is_caps)),
        pass("scenario-capabilities-errors", "step-5.7", client_id_in_paths),
        pass("scenario-deployments", "step-3.1", manifest_polls),
        pass("scenario-deployments", "step-3.2", conditional_polls),
        pass("scenario-deployments", "step-3.3", bundle_fetch),
        pass("scenario-deployments", "step-3.4", content_not_refetched),
        pass("scenario-deployments", "step-3.5", yaml_fetch),
        pass("scenario-deployments", "step-3.6", content_not_refetched),
        pass("scenario-deployments", "step-3.7", reported(None)),
        pass("scenario-live-assertion-demo", "step-7.1", caps_api_version),
        na("scenario-onboarding", "step-1.1", "the WFM root CA is provisioned (`root-ca`); without it the client fetches GET /onboarding/certificate over the public web PKI, which a loopback mock cannot present"),
        pass("scenario-onboarding", "step-1.3", fact("onboarding-refused")),
        pass("scenario-onboarding-errors", "step-4.1", onboarding_fields),
        pass("scenario-onboarding-errors", "step-4.2", onboarding_fields),
        pass("scenario-onboarding-errors", "step-4.3", onboarding_fields),
        pass("scenario-onboarding-errors", "step-4.5", onboarding_fields),
        pass("scenario-onboarding-errors", "step-4.6", onboarding_fields),
        pass("scenario-onboarding-errors", "step-4.4", onboarding_unsigned),
        pass("scenario-status-and-retrieval-errors", "step-6.1", manifest_polls),
        pass("scenario-status-and-retrieval-errors", "step-6.2", accept_allows_manifest),
        pass("scenario-status-and-retrieval-errors", "step-6.3", bundle_digests),
        pass("scenario-status-and-retrieval-errors", "step-6.4", yaml_digests),
        pass("scenario-status-and-retrieval-errors", "step-6.5", all_statuses_well_formed),
        pass("scenario-status-and-retrieval-errors", "step-6.6", all_statuses_well_formed),
        pass("scenario-status-and-retrieval-errors", "step-6.7", all_statuses_well_formed),
        pass("scenario-status-and-retrieval-errors", "step-6.8", content_digest(is_status)),
        pass("scenario-status-and-retrieval-errors", "step-6.9", signed(is_status)),
        pass("scenario-status-and-retrieval-errors", "step-6.10", signed(is_manifest)),
        pass("scenario-status-and-retrieval-errors", "step-6.11", signed(is_bundle)),
        pass("scenario-status-and-retrieval-errors", "step-6.12", signed(is_yaml)),
    ]);
    m
}

/// Runs every step of `file` through `mapping`; panics naming each failing
/// file / scenario / step, and prints the table of verdicts.
fn judge(file: &str, mapping: &[Entry], session: &Session) {
    let mut failures = vec![];
    let mut table = vec![];
    for scenario in load(file) {
        let sid = scenario["id"].as_str().unwrap_or_default();
        for step in scenario["steps"].as_array().into_iter().flatten() {
            let tid = step["id"].as_str().unwrap_or_default();
            let Some(entry) = mapping.iter().find(|e| e.scenario == sid && e.step == tid) else {
                failures.push(format!("{file} {sid} / {tid}: no mapping"));
                continue;
            };
            match &entry.verdict {
                Verdict::Pass(probe) => match probe(session, step) {
                    Ok(()) => table.push(format!("| {sid} | {tid} | {file} | pass |")),
                    Err(why) => {
                        table.push(format!("| {sid} | {tid} | {file} | FAIL |"));
                        failures.push(format!("{file} {sid} / {tid}: {why}"));
                    }
                },
                Verdict::NotApplicable(why) => table.push(format!(
                    "| {sid} | {tid} | {file} | not applicable: {why} |"
                )),
            }
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        failures.is_empty(),
        "conformance steps failed:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn every_scenario_step_is_mapped() {
    for (file, mapping) in [(RC3_FILE, rc3_mapping()), (RC2_FILE, rc2_mapping())] {
        let scenarios = load(file);
        let mut steps = HashSet::new();
        for scenario in &scenarios {
            let sid = scenario["id"].as_str().expect("scenario id");
            let list = scenario["steps"].as_array().cloned().unwrap_or_default();
            assert!(
                !list.is_empty(),
                "{file} {sid}: a scenario without steps has no mapping"
            );
            for step in list {
                let tid = step["id"].as_str().expect("step id").to_owned();
                assert!(
                    mapping.iter().any(|e| e.scenario == sid && e.step == tid),
                    "{file} {sid} / {tid}: the step has no mapping in conformance.rs"
                );
                assert!(
                    steps.insert((sid.to_owned(), tid.clone())),
                    "{file} {sid} / {tid}: twice"
                );
            }
        }
        for e in &mapping {
            assert!(
                steps.contains(&(e.scenario.to_owned(), e.step.to_owned())),
                "{file} {} / {}: mapped but not in the file",
                e.scenario,
                e.step
            );
        }
        assert_eq!(
            steps.len(),
            mapping.len(),
            "{file}: duplicate mapping entries"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Sessions

fn config(profile: Profile, mock: &MockWfm, files: &common::pki::ClientFiles) -> String {
    let transport = match profile {
        Profile::Rc3 => files.rc3_credentials(),
        Profile::Rc2 => files.rc2_credentials(),
    };
    // Identity as in the scenarios' capability bodies; one partition with an interface
    // and a peripheral, one with none.
    format!(
        r#"
[device]
id = "edge-01"
mode = "see-thru"
vendor = "Acme Corp"
model = "ACM-XYZ"
serial = "SN-12345"
otel-collector = true
labels = {{ site = "north" }}

[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
interfaces = [{{ type = "ethernet" }}]
peripherals = [{{ type = "camera" }}]

[[partition]]
id = "sensors"
cpu = 0.5
memory = "128Mi"
storage = "16Mi"

[wfm]
url = "{}"
poll-interval = "300ms"
{transport}
"#,
        mock.base_url()
    )
}

fn app(
    id: &str,
    target: &str,
    component: &str,
    wasm: &str,
    route: &str,
    greeting: Option<&str>,
) -> String {
    let params: Vec<(&str, &str, &str, &str)> = greeting
        .map(|g| vec![("greeting", g, "greeting", component)])
        .unwrap_or_default();
    deployment(
        id,
        "conformance",
        Some(target),
        &[(
            component,
            &format!("file://{wasm}"),
            &format!("{{trigger: {{http: {{route: {route}}}}}}}"),
        )],
        &params,
    )
}

fn default_app(greeting: &str) -> String {
    app(
        DEFAULT_ID,
        "edge-01/apps",
        "app-component-1",
        wasmgate_examples::HELLO,
        "/hello",
        Some(greeting),
    )
}

fn app_a() -> String {
    app(
        APP_A_ID,
        "edge-01/apps",
        "sample-app-a",
        wasmgate_examples::HELLO,
        "/app-a",
        Some("A"),
    )
}

fn app_b() -> String {
    app(
        APP_B_ID,
        "edge-01/sensors",
        "sample-app-b",
        wasmgate_examples::COUNTER,
        "/app-b",
        None,
    )
}

fn recon_app() -> String {
    app(
        RECON_ID,
        "edge-01/sensors",
        "app-component-1",
        wasmgate_examples::COUNTER,
        "/counter",
        None,
    )
}

fn rotation_app(route: &str) -> String {
    app(
        ROTATION_ID,
        "edge-01/sensors",
        "miaf-test-component",
        wasmgate_examples::COUNTER,
        route,
        None,
    )
}

/// Drives the client and records phases and facts.
struct Run {
    profile: Profile,
    mock: MockWfm,
    phases: BTreeMap<String, Phase>,
    facts: BTreeMap<String, Result<(), String>>,
}

impl Run {
    /// A strict mock answering like Margo's conformance mock, and the client's config.
    fn start(profile: Profile) -> (Run, Pki, Sandbox, String) {
        let pki = Pki::new("example.org", "wfm-1", "edge-01");
        let sandbox = Sandbox::new();
        let files = pki.write_client_files(&sandbox.path().join("pki"));
        let mock = MockWfm::start_with(
            profile,
            &pki,
            MockOptions {
                conformance_replies: true,
                // rc.2 schemas predate `custom`; the device reports it (with labels) anyway.
                rc2_allow_custom: true,
                ..Default::default()
            },
        );
        let config = config(profile, &mock, &files);
        let run = Run {
            profile,
            mock,
            phases: BTreeMap::new(),
            facts: BTreeMap::new(),
        };
        (run, pki, sandbox, config)
    }

    /// A restart reports every target again (an update for the WFM) and downloads
    /// nothing; then the session is over.
    fn restart_and_finish(
        mut self,
        gate: Wasmgate,
        sandbox: &Sandbox,
        config: &str,
        pki: &Pki,
    ) -> Session {
        gate.stop();
        let start = self.mark();
        let gate = sandbox.up(config);
        self.mock.wait_until(
            "scenario-capabilities: every target reported again after a restart",
            WAIT,
            |m| {
                TARGETS.iter().all(|t| {
                    m.requests()[start..].iter().any(|r| {
                        r.method == "PUT" && r.path.ends_with(&format!("/capabilities/{t}"))
                    })
                })
            },
        );
        self.wait_304("restart", start);
        self.close("restart", start);
        self.fact("restart", all_accepted(&gate));
        let violations = self.mock.violations();
        assert!(
            violations.is_empty(),
            "mock WFM violations:\n  {}",
            violations.join("\n  ")
        );
        drop(gate);
        self.finish(pki.client_spiffe_id())
    }

    fn mark(&self) -> usize {
        self.mock.requests().len()
    }

    fn close(&mut self, name: &str, start: usize) {
        let phase = Phase {
            start,
            end: self.mark(),
            version: self.mock.manifest_version(),
        };
        self.phases.insert(name.to_owned(), phase);
    }

    fn fact(&mut self, name: &str, result: Result<(), String>) {
        self.facts.insert(name.to_owned(), result);
    }

    fn reports(&self, id: &str) -> Vec<(String, u64)> {
        self.mock.reports(id)
    }

    /// Waits for a report of `id` in `state` (at `version` in rc.3).
    fn wait_state(&self, scenario: &str, id: &str, state: &str, version: u64) {
        let rc3 = self.profile == Profile::Rc3;
        let deadline = Instant::now() + WAIT;
        loop {
            let reports = self.reports(id);
            if reports
                .iter()
                .any(|(s, v)| s == state && (!rc3 || *v == version))
            {
                return;
            }
            let last = self
                .mock
                .statuses()
                .into_iter()
                .rfind(|s| s["deploymentId"] == id);
            assert!(
                Instant::now() < deadline,
                "{scenario}: {id} never {state} at v{version}; its reports {reports:?}, last {last:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_polls(&self, scenario: &str, start: usize, count: usize) {
        self.mock
            .wait_until(&format!("{scenario}: {count} polls"), WAIT, |m| {
                m.requests()[start..]
                    .iter()
                    .filter(|r| r.method == "GET" && r.path.ends_with("/deployments"))
                    .count()
                    >= count
            });
    }

    fn wait_304(&self, scenario: &str, start: usize) {
        self.mock
            .wait_until(&format!("{scenario}: a 304 poll"), WAIT, |m| {
                m.requests()[start..]
                    .iter()
                    .any(|r| r.path.ends_with("/deployments") && r.status == 304)
            });
    }

    /// Status posts made since `start`.
    fn posts_since(&self, start: usize) -> Vec<Value> {
        self.mock.requests()[start..]
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/status"))
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    }

    /// Content downloads (bundle or YAML) since `start` as paths.
    fn downloads_since(&self, start: usize) -> Vec<String> {
        self.mock.requests()[start..]
            .iter()
            .filter(|r| {
                r.method == "GET" && (r.path.contains("/bundles/") || r.path.contains("/sha256:"))
            })
            .map(|r| r.path.clone())
            .collect()
    }

    fn finish(self, spiffe_id: String) -> Session {
        let client_id = match self.profile {
            Profile::Rc2 => self.mock.rc2_client_ids().first().cloned(),
            Profile::Rc3 => None,
        };
        Session {
            profile: self.profile,
            requests: self.mock.requests(),
            phases: self.phases,
            facts: self.facts,
            advertised: self.mock.advertised_digests(),
            spiffe_id,
            client_id,
            enums: Enums::load(),
        }
    }
}

/// Waits (bounded: the client publishes after each cycle) until `/status` satisfies
/// `ok`; the last `/status` either way.
fn status_shows(gate: &Wasmgate, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = gate.status();
        if ok(&status) {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not in /status: {:#}", status["wfm"]));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_accepted(gate: &Wasmgate) -> Result<(), String> {
    status_shows(gate, "every target's capabilities accepted", |st| {
        let targets = st["wfm"]["targets"].as_array().cloned().unwrap_or_default();
        targets.len() == TARGETS.len() && targets.iter().all(|t| t["state"] == "accepted")
    })
    .map(drop)
}

fn serves(gate: &Wasmgate, path: &str, code: u16, needle: &str) -> Result<(), String> {
    let (got, body) = gate.get(path);
    check(got == code && body.contains(needle), || {
        format!("{path}: {got} {body:?}, want {code} with {needle:?}")
    })
}

fn both(a: Result<(), String>, b: Result<(), String>) -> Result<(), String> {
    a.and(b)
}

/// One wasmgate run through the rc.3 scenarios of `device-supplier.json`.
fn rc3_session() -> Session {
    let (mut run, pki, sandbox, config) = Run::start(Profile::Rc3);
    // The ctt-runner copy of Margo's mock adds this non-spec member to every manifest.
    let extra = json!({ "_client_cert": { "spiffe_id": pki.client_spiffe_id(), "trust_domain": "example.org" } });
    run.mock.set_manifest_extra(extra.as_object().cloned());
    let gate = sandbox.up(&config);

    // flex-desired-state-reconciliation: an empty desired state (bundle null), then 304s.
    let start = run.mark();
    run.mock.wait_until(
        "scenario-capabilities: host + 2 partitions reported",
        WAIT,
        |m| m.capabilities().len() == TARGETS.len(),
    );
    run.wait_304("flex-reconciliation-steady-state-304", start);
    run.close("empty", start);
    let empty = run.phases["empty"];
    let polls: Vec<Recorded> = run.mock.requests()[start..]
        .iter()
        .filter(|r| r.path == "/api/v1/deployments")
        .cloned()
        .collect();
    run.fact(
        "empty",
        both(
            check(polls.first().is_some_and(|r| r.status == 200), || {
                format!(
                    "first poll of the empty manifest: {:?}",
                    polls.first().map(|r| r.status)
                )
            }),
            check(run.downloads_since(empty.start).is_empty(), || {
                "downloads for an empty manifest".into()
            }),
        ),
    );
    run.fact(
        "empty-304",
        check(
            polls
                .iter()
                .any(|r| r.status == 304 && r.header("if-none-match").is_some()),
            || "no conditional 304 poll".into(),
        ),
    );
    run.fact("caps-accepted", all_accepted(&gate));

    // One new deployment: a poll with the now stale ETag gets the new manifest; its YAML
    // alone is fetched (a single changed deployment), verified, installed, reported.
    let start = run.mark();
    run.mock
        .set_deployments(&[(DEFAULT_ID, default_app("Hello"))]);
    let v = run.mock.manifest_version();
    run.wait_state(
        "flex-desired-state-reconciliation",
        DEFAULT_ID,
        "installed",
        v,
    );
    gate.wait_for("/hello", 200, "Hello, world!");
    run.close("add-default", start);
    let reqs = run.mock.requests()[start..].to_vec();
    run.fact(
        "get-after-add",
        check(
            reqs.iter().any(|r| {
                r.path == "/api/v1/deployments"
                    && r.status == 200
                    && r.header("if-none-match").is_some()
            }),
            || "no 200 to a poll with the stale ETag".into(),
        ),
    );
    run.fact(
        "add-default-content",
        check(
            reqs.iter().any(|r| {
                r.status == 200
                    && r.path
                        .starts_with(&format!("/api/v1/deployments/{DEFAULT_ID}/sha256:"))
            }),
            || {
                format!(
                    "the new deployment's YAML was not fetched: {:?}",
                    run.downloads_since(start)
                )
            },
        ),
    );
    // Every manifest so far carried the unknown `_client_cert` member.
    run.fact(
        "unknown-members",
        serves(&gate, "/hello", 200, "Hello, world!"),
    );

    let start = run.mark();
    let literal = ALIASES[0].0;
    run.mock.set_deployments(&[
        (DEFAULT_ID, default_app("Hello")),
        (RECON_ID, recon_app()),
        (
            literal,
            app(
                literal,
                "edge-01/sensors",
                "app-component-1",
                wasmgate_examples::COUNTER,
                "/literal",
                None,
            ),
        ),
    ]);
    let v = run.mock.manifest_version();
    run.wait_state(
        "flex-desired-state-reconciliation",
        RECON_ID,
        "installed",
        v,
    );
    run.wait_state("flex-desired-state-reconciliation", literal, "failed", v);
    run.close("add-second", start);
    let failed = run
        .mock
        .statuses()
        .into_iter()
        .rfind(|s| s["deploymentId"] == literal)
        .unwrap_or_default();
    run.fact(
        "non-uuid-id",
        check(
            failed["status"]["error"]["code"] == "wasmgate.invalid"
                && failed["status"]["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("id")),
            || format!("the non-UUID id is not refused naming `id`: {failed}"),
        ),
    );

    let start = run.mark();
    run.mock
        .set_deployments(&[(DEFAULT_ID, default_app("Hello"))]);
    let v = run.mock.manifest_version();
    run.wait_state("flex-desired-state-reconciliation", RECON_ID, "removed", v);
    gate.wait_for("/counter", 404, "");
    run.close("remove-second", start);
    run.fact(
        "recon-final",
        both(
            serves(&gate, "/hello", 200, "Hello, world!"),
            serves(&gate, "/counter", 404, ""),
        ),
    );

    // flex-desired-state-multi-app: two new deployments (bundle path), then one removed,
    // then back to the default one.
    let start = run.mark();
    run.mock
        .set_deployments(&[(APP_A_ID, app_a()), (APP_B_ID, app_b())]);
    let v = run.mock.manifest_version();
    for id in [APP_A_ID, APP_B_ID] {
        run.wait_state("flex-desired-state-multi-app", id, "installed", v);
    }
    run.wait_state("flex-desired-state-multi-app", DEFAULT_ID, "removed", v);
    run.close("multi-assign", start);
    run.fact(
        "multi-both",
        both(
            serves(&gate, "/app-a", 200, "A, world!"),
            serves(&gate, "/app-b", 200, ""),
        ),
    );
    let bundle = run.mock.bundle_digest().unwrap_or_default();
    run.fact(
        "multi-content",
        check(
            run.downloads_since(start) == [format!("/api/v1/bundles/{bundle}")],
            || {
                format!(
                    "two new deployments: want the bundle alone, got {:?}",
                    run.downloads_since(start)
                )
            },
        ),
    );

    let start = run.mark();
    run.mock.set_deployments(&[(APP_A_ID, app_a())]);
    let v = run.mock.manifest_version();
    run.wait_state("flex-desired-state-multi-app", APP_B_ID, "removed", v);
    gate.wait_for("/app-b", 404, "");
    run.close("multi-remove-b", start);
    run.fact(
        "multi-after-remove",
        serves(&gate, "/app-a", 200, "A, world!"),
    );

    let start = run.mark();
    run.mock
        .set_deployments(&[(DEFAULT_ID, default_app("Restored"))]);
    let v = run.mock.manifest_version();
    run.wait_state("flex-desired-state-multi-app", DEFAULT_ID, "installed", v);
    run.wait_state("flex-desired-state-multi-app", APP_A_ID, "removed", v);
    gate.wait_for("/app-a", 404, "");
    run.close("multi-restore", start);
    run.fact(
        "multi-final",
        serves(&gate, "/hello", 200, "Restored, world!"),
    );

    // device-core-manifest-semantics: zero deployments remove everything.
    let start = run.mark();
    run.mock.set_deployments::<&str, &str>(&[]);
    let v = run.mock.manifest_version();
    run.wait_state("device-core-manifest-semantics", DEFAULT_ID, "removed", v);
    gate.wait_for("/hello", 404, "");
    run.close("zero", start);
    run.fact("zero", serves(&gate, "/hello", 404, ""));

    // The negative fixtures, each against a running state that must keep serving.
    let start = run.mark();
    run.mock
        .set_deployments(&[(DEFAULT_ID, default_app("Stable"))]);
    let stable = run.mock.manifest_version();
    run.wait_state(
        "device-mi010-non-increasing-manifest-version",
        DEFAULT_ID,
        "installed",
        stable,
    );
    gate.wait_for("/hello", 200, "Stable, world!");
    run.close("stable", start);
    run.fact(
        "mi010-accepted",
        status_shows(&gate, "the accepted manifest version", |st| {
            stable > 1 && st["wfm"]["acceptedManifestVersion"] == stable
        })
        .map(drop),
    );
    for (name, fixture, fetches) in [
        ("mi008", Fixture::UnsupportedDigestAlgorithm, false),
        ("mi006", Fixture::BundleDigestMismatch, true),
        ("mi019", Fixture::DeploymentDigestMismatch, true),
        ("mi010", Fixture::NonIncreasingManifestVersion, false),
    ] {
        let start = run.mark();
        run.mock.set_fixture(fixture.clone());
        run.mock.set_deployments(&[
            (DEFAULT_ID, default_app(&format!("Bad-{name}"))),
            (RECON_ID, recon_app()),
        ]);
        run.wait_polls(&format!("{name}: {fixture:?}"), start, 3);
        let mut result = both(
            serves(&gate, "/hello", 200, "Stable, world!"),
            serves(&gate, "/counter", 404, ""),
        );
        let posts = run.posts_since(start);
        result = result.and(check(posts.is_empty(), || {
            format!("reported on a refused manifest: {posts:?}")
        }));
        let downloads = run.downloads_since(start);
        result = result.and(if fetches {
            // Detecting the mismatch takes hashing what the URL serves.
            check(!downloads.is_empty(), || {
                "refused without downloading (cannot have hashed)".into()
            })
        } else {
            check(downloads.is_empty(), || {
                format!("downloaded for a manifest to refuse unseen: {downloads:?}")
            })
        });
        let log = gate.stderr.lock().unwrap().join("\n");
        result = result.and(check(log.contains("desired state rejected"), || {
            "no log line for the refusal".into()
        }));
        run.close(&format!("fx-{name}"), start);
        run.fact(name, result);
        let start = run.mark();
        run.mock
            .set_deployments(&[(DEFAULT_ID, default_app("Stable"))]);
        run.mock.clear_fixture();
        run.wait_304(&format!("{name}: clean manifest accepted"), start);
    }
    // sizeBytes is not an integrity check: every one wrong, digests right: accepted.
    let start = run.mark();
    run.mock.set_fixture(Fixture::WrongSizeBytes);
    run.mock
        .set_deployments(&[(DEFAULT_ID, default_app("Sized")), (RECON_ID, recon_app())]);
    let v = run.mock.manifest_version();
    run.wait_state(
        "device-mi025-026-sizebytes-not-integrity",
        RECON_ID,
        "installed",
        v,
    );
    gate.wait_for("/hello", 200, "Sized, world!");
    run.close("fx-mi025", start);
    run.fact("mi025", serves(&gate, "/counter", 200, ""));
    run.mock.clear_fixture();

    // scenario-miaf-identity-svid-rotation: reports before and after the SVID is renewed.
    let start = run.mark();
    run.mock.set_deployments(&[
        (DEFAULT_ID, default_app("Sized")),
        (RECON_ID, recon_app()),
        (ROTATION_ID, rotation_app("/rotation-1")),
    ]);
    let v = run.mock.manifest_version();
    run.wait_state(
        "scenario-miaf-identity-svid-rotation",
        ROTATION_ID,
        "installed",
        v,
    );
    run.close("rotation-before", start);
    let original = run.mock.requests()[start..]
        .iter()
        .rev()
        .find_map(|r| r.peer_cert_der.clone());
    let renewed = pki
        .renew_client_svid(&sandbox.path().join("pki"))
        .leaf_der()
        .to_vec();
    run.mock.wait_until(
        "scenario-miaf-identity-svid-rotation: a handshake with the renewed SVID",
        WAIT,
        |m| {
            m.handshakes()
                .last()
                .and_then(|h| h.client_cert_der.clone())
                .is_some_and(|d| d == renewed)
        },
    );
    let start = run.mark();
    run.mock.set_deployments(&[
        (DEFAULT_ID, default_app("Sized")),
        (RECON_ID, recon_app()),
        (ROTATION_ID, rotation_app("/rotation-2")),
    ]);
    let v = run.mock.manifest_version();
    run.wait_state(
        "scenario-miaf-identity-svid-rotation",
        ROTATION_ID,
        "installed",
        v,
    );
    run.close("rotation-after", start);
    let after = run.mock.requests()[start..].to_vec();
    let rotated_posts: Vec<&Recorded> = after
        .iter()
        .filter(|r| r.path == format!("/api/v1/deployments/{ROTATION_ID}/status"))
        .collect();
    run.fact(
        "rotation",
        check(original.as_deref() != Some(renewed.as_slice()), || {
            "the SVID did not change".into()
        })
        .and(check(
            !rotated_posts.is_empty()
                && rotated_posts.iter().all(|r| {
                    r.status == 200 && r.peer_cert_der.as_deref() == Some(renewed.as_slice())
                }),
            || {
                format!(
                    "reports after the rotation: {:?}",
                    rotated_posts
                        .iter()
                        .map(|r| (
                            r.status,
                            r.peer_cert_der.as_deref() == Some(renewed.as_slice())
                        ))
                        .collect::<Vec<_>>()
                )
            },
        ))
        .and(check(
            !after
                .iter()
                .any(|r| r.path.starts_with("/api/v1/capabilities/")),
            || "re-registered its capabilities after the rotation".into(),
        )),
    );

    run.restart_and_finish(gate, &sandbox, &config, &pki)
}

/// One wasmgate run through the RFC 9421-era scenarios of `test-scenarios.json`.
fn rc2_session() -> Session {
    let (mut run, pki, sandbox, config) = Run::start(Profile::Rc2);
    // scenario-onboarding step-1.3: a refused certificate. The device keeps running and
    // retries; once the WFM admits it, it onboards.
    run.mock.refuse_onboarding(Some(403));
    let gate = sandbox.up(&config);
    run.mock
        .wait_until("scenario-onboarding: two refused onboardings", WAIT, |m| {
            m.requests()
                .iter()
                .filter(|r| r.path == "/api/v1/onboarding" && r.status == 403)
                .count()
                >= 2
        });
    let log = gate.stderr.lock().unwrap().join("\n");
    run.fact(
        "onboarding-refused",
        status_shows(&gate, "the refused onboarding", |st| {
            st["wfm"]["connected"] == false
                && st["wfm"]["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("403"))
        })
        .map(drop)
        .and(check(log.contains("retrying"), || {
            "no retry log line".into()
        })),
    );
    run.close("refused", 0);
    run.mock.refuse_onboarding(None);
    let start = run.mark();
    run.mock.wait_until(
        "scenario-capabilities: host + 2 partitions reported",
        WAIT,
        |m| m.capabilities().len() == TARGETS.len(),
    );
    run.wait_304("scenario-deployments step-3.2", start);
    run.close("onboarded", start);
    run.fact("caps-accepted", all_accepted(&gate));

    let start = run.mark();
    run.mock
        .set_deployments(&[(DEFAULT_ID, default_app("Signed"))]);
    run.wait_state("scenario-deployments", DEFAULT_ID, "installed", 0);
    gate.wait_for("/hello", 200, "Signed, world!");
    run.close("add-default", start);

    let start = run.mark();
    run.mock
        .set_deployments(&[(APP_A_ID, app_a()), (APP_B_ID, app_b())]);
    for id in [APP_A_ID, APP_B_ID] {
        run.wait_state("scenario-deployments", id, "installed", 0);
    }
    run.wait_state("scenario-deployments", DEFAULT_ID, "removed", 0);
    gate.wait_for("/app-a", 200, "A, world!");
    run.wait_304("scenario-deployments step-3.2", run.mark());
    run.close("multi-assign", start);

    run.restart_and_finish(gate, &sandbox, &config, &pki)
}

#[test]
fn rc3_device_supplier_scenarios() {
    let started = Instant::now();
    let session = rc3_session();
    judge(RC3_FILE, &rc3_mapping(), &session);
    println!("rc3 session: {:?}", started.elapsed());
}

#[test]
fn rc2_rfc9421_scenarios() {
    let started = Instant::now();
    let session = rc2_session();
    judge(RC2_FILE, &rc2_mapping(), &session);
    println!("rc2 session: {:?}", started.elapsed());
}
