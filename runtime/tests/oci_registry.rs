//! Components from a real OCI registry (Debian's `docker-registry`, started by each
//! test on loopback): digest-verified pulls into the content-addressed store, no second
//! download, clear failures naming the reference, corrupt cache entries re-fetched and
//! recompiled (never executed), garbage collection of what nothing references.

mod common;

use common::registry::{digest, with_custom_section, Options, Registry};
use common::*;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

const HELLO_ID: &str = "11111111-1111-4111-8111-111111111111";
const COUNTER_ID: &str = "22222222-2222-4222-8222-222222222222";

const CONFIG: &str = r#"
[device]
id = "edge-01"
[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
"#;

/// A deployment whose components are `(name, repository, revision, extensions)`.
pub fn oci_deployment(
    id: &str,
    name: &str,
    components: &[(&str, &str, &str, &str)],
    params: &[(&str, &str, &str, &str)],
) -> String {
    let mut yaml = format!(
        "id: {id}\nmetadata:\n  name: {name}\n  namespace: tests\nspec:\n  applicationId: {name}\n  deploymentProfile:\n    type: custom\n    components:\n"
    );
    for (component, repository, revision, extensions) in components {
        yaml.push_str(&format!(
            "      - name: {component}\n        properties:\n          repository: {repository}\n          revision: \"{revision}\"\n        x-wasmgate-extensions: {extensions}\n"
        ));
    }
    if !params.is_empty() {
        yaml.push_str("  parameters:\n");
        for (param, value, pointer, component) in params {
            yaml.push_str(&format!(
                "    {param}:\n      value: {value}\n      targets:\n        - pointer: {pointer}\n          components: [{component}]\n"
            ));
        }
    }
    yaml
}

fn http(route: &str) -> String {
    format!("{{trigger: {{http: {{route: {route}}}}}}}")
}

fn state_of<'a>(status: &'a serde_json::Value, file: &str) -> Option<&'a serde_json::Value> {
    status["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"].as_str().unwrap().ends_with(file))
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Files of the artifact store, as `hex -> sha256 of the content`.
fn stored_blobs(sandbox: &Sandbox) -> Vec<(String, String)> {
    let dir = sandbox.state().join("artifacts/sha256");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let content = std::fs::read(e.path()).unwrap();
                    (name, hex::encode(Sha256::digest(content)))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// AOT cache files.
fn aot_entries(sandbox: &Sandbox) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(sandbox.state().join("aot"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn deploys_from_a_registry_verifies_and_pulls_once() {
    let registry = Registry::start();
    let hello = read(wasmgate_examples::HELLO);
    // Margo revision with build metadata: `_` stands for SemVer `+`, the tag is as written.
    let (manifest, layer) = registry.push_component("examples/hello", "1.0.0_build.1", &hello);
    assert_eq!(layer, digest(&hello));
    // The generic OCI 1.1 artifact form: empty config, artifactType, one application/wasm layer.
    let counter = read(wasmgate_examples::COUNTER);
    registry.push(
        "examples/counter",
        "0.2.0",
        ("application/vnd.oci.empty.v1+json", b"{}".to_vec()),
        &[("application/wasm", counter.clone())],
        Some("application/wasm"),
    );

    let sandbox = Sandbox::new();
    sandbox.put(
        "hello.yaml",
        &oci_deployment(
            HELLO_ID,
            "hello",
            &[(
                "hello",
                &registry.oci("examples/hello"),
                "1.0.0_build.1",
                &http("/hello"),
            )],
            &[("greeting", "Hi", "greeting", "hello")],
        ),
    );
    sandbox.put(
        "counter.yaml",
        &oci_deployment(
            COUNTER_ID,
            "counter",
            &[(
                "counter",
                &registry.oci("examples/counter"),
                "0.2.0",
                &http("/counter"),
            )],
            &[],
        ),
    );
    let gate = sandbox.up(CONFIG);
    gate.wait_for("/hello", 200, "Hi, world!");
    gate.wait_for("/counter", 200, "hits: 1");
    let status = gate.wait_status("both installed", |s| {
        ["hello.yaml", "counter.yaml"]
            .iter()
            .all(|f| state_of(s, f).is_some_and(|d| d["state"] == "installed"))
    });
    assert!(state_of(&status, "hello.yaml").unwrap()["error"].is_null());

    // One manifest and one layer request each; the blob is stored under its digest.
    let hello_hex = layer.strip_prefix("sha256:").unwrap().to_owned();
    assert_eq!(
        registry.wasmgate_requests(&format!("/blobs/{layer}")),
        1,
        "{}",
        registry.log()
    );
    assert_eq!(
        registry.wasmgate_requests("GET /v2/examples/hello/manifests/1.0.0_build.1"),
        1
    );
    let blobs = stored_blobs(&sandbox);
    assert!(
        blobs.contains(&(hello_hex.clone(), hello_hex.clone())),
        "{blobs:?}"
    );
    let counter_hex = hex::encode(Sha256::digest(&counter));
    assert!(blobs.contains(&(counter_hex.clone(), counter_hex)));
    // The applied deployment is recorded with what its tag resolved to.
    let record =
        std::fs::read_to_string(sandbox.state().join("deployments").join(HELLO_ID)).unwrap();
    assert!(record.contains(&manifest), "{record}");
    assert!(record.contains(&layer), "{record}");
    // /metrics counts the layer bytes received and times each request by kind.
    let (code, metrics) = gate.admin_get("/metrics");
    assert_eq!(code, 200, "{metrics}");
    let series = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    assert_eq!(
        series("wasmgate_oci_pull_bytes_total"),
        (hello.len() + counter.len()) as f64
    );
    assert_eq!(
        series("wasmgate_oci_pull_duration_seconds_count{kind=\"layer\",outcome=\"ok\"}"),
        2.0
    );
    assert!(
        series("wasmgate_oci_pull_duration_seconds_count{kind=\"manifest\",outcome=\"ok\"}") >= 2.0
    );
    gate.stop();

    // A second start asks the registry nothing: same documents, pinned digests, verified
    // blobs from the store, compiled code from the AOT cache.
    let before = registry.wasmgate_request_lines();
    let gate = sandbox.up(CONFIG);
    gate.wait_for("/hello", 200, "Hi, world!");
    gate.wait_for("/counter", 200, "hits: 2");
    gate.wait_status("installed after restart", |s| {
        state_of(s, "hello.yaml").is_some_and(|d| d["state"] == "installed")
    });
    let after = registry.wasmgate_request_lines();
    assert_eq!(
        before,
        after,
        "the second start talked to the registry{}",
        gate.diagnostics()
    );

    // Another tag of the same bytes: its manifest is fetched, the layer is not.
    registry.push_component("examples/hello", "again", &hello);
    sandbox.put(
        "again.yaml",
        &oci_deployment(
            "33333333-3333-4333-8333-333333333333",
            "again",
            &[(
                "hello",
                &registry.oci("examples/hello"),
                "again",
                &http("/again"),
            )],
            &[],
        ),
    );
    gate.wait_for("/again", 200, "Hello, world!");
    assert_eq!(registry.wasmgate_requests("/manifests/again"), 1);
    assert_eq!(registry.wasmgate_requests(&format!("/blobs/{layer}")), 1);
}

#[test]
fn registry_failures_are_reported_and_the_rest_keeps_serving() {
    let registry = Registry::start();
    let hello = read(wasmgate_examples::HELLO);
    registry.push_component("examples/hello", "1.0.0", &hello);
    // Wrong digest: the registry's stored bytes no longer match their digest.
    let tampered = with_custom_section(&hello, "tampered", b"x");
    let (_, tampered_layer) = registry.push_component("examples/tampered", "1.0.0", &tampered);
    let data = registry.blob_data(&tampered_layer);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    // A container image, not a component.
    registry.push(
        "examples/image",
        "1.0.0",
        ("application/vnd.oci.image.config.v1+json", b"{}".to_vec()),
        &[(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            vec![0x1f, 0x8b, 0, 0],
        )],
        None,
    );
    // A core module in an application/wasm layer.
    registry.push_component("examples/core", "1.0.0", b"\0asm\x01\0\0\0");
    // Larger than max-component-size (200Ki below).
    let big = with_custom_section(&hello, "padding", &vec![7u8; 300 << 10]);
    let (_, big_layer) = registry.push_component("examples/big", "1.0.0", &big);

    // An HTTPS registry with a private CA and basic auth.
    let private = Registry::start_with(Options {
        tls: true,
        user: Some(("edge".into(), "s3cret".into())),
    });
    private.push_component("examples/private", "1.0.0", &hello);
    let port = private.addr.port();
    let sandbox = Sandbox::new();
    let ca = private.ca_pem.clone().unwrap();
    std::fs::write(sandbox.path().join("password"), "s3cret\n").unwrap();
    // A docker-style auth file with a wrong password for the other name of the registry.
    std::fs::write(
        sandbox.path().join("auth.json"),
        format!(r#"{{"auths": {{"localhost:{port}": {{"auth": "ZWRnZTp3cm9uZw=="}}}}}}"#),
    )
    .unwrap();
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        r#"{CONFIG}
[artifacts]
max-component-size = "200Ki"
registry-auth-file = "{auth}"
pull-timeout = "20s"
[registries."127.0.0.1:{port}"]
username = "edge"
password-file = "{password}"
ca-file = "{ca}"
protocol = "https"
[registries."localhost:{port}"]
ca-file = "{ca}"
protocol = "https"
"#,
        auth = sandbox.path().join("auth.json").display(),
        password = sandbox.path().join("password").display(),
        ca = ca.display(),
    );

    let cases: Vec<(&str, String, &str, &str, &str)> = vec![
        // (file, repository, revision, expected code, expected message part)
        (
            "b-wrong-digest.yaml",
            registry.oci("examples/tampered"),
            "1.0.0",
            "wasmgate.oci.digest",
            "sha256",
        ),
        (
            "c-missing-tag.yaml",
            registry.oci("examples/hello"),
            "9.9.9",
            "wasmgate.oci.not-found",
            "manifest",
        ),
        (
            "d-unauthorized.yaml",
            format!("oci://localhost:{port}/examples/private"),
            "1.0.0",
            "wasmgate.oci.unauthorized",
            "credentials",
        ),
        (
            "e-registry-down.yaml",
            format!("oci://{down}/examples/hello"),
            "1.0.0",
            "wasmgate.oci.unreachable",
            "registry",
        ),
        (
            "f-not-wasm.yaml",
            registry.oci("examples/image"),
            "1.0.0",
            "wasmgate.oci.media-type",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            "g-core-module.yaml",
            registry.oci("examples/core"),
            "1.0.0",
            "wasmgate.oci.media-type",
            "core module",
        ),
        (
            "h-oversized.yaml",
            registry.oci("examples/big"),
            "1.0.0",
            "wasmgate.oci.too-large",
            "max-component-size",
        ),
    ];
    sandbox.put(
        "a-good.yaml",
        &oci_deployment(
            HELLO_ID,
            "good",
            &[(
                "hello",
                &registry.oci("examples/hello"),
                "1.0.0",
                &http("/hello"),
            )],
            &[],
        ),
    );
    sandbox.put(
        "i-private.yaml",
        &oci_deployment(
            "99999999-9999-4999-8999-999999999999",
            "private",
            &[(
                "hello",
                &format!("oci://127.0.0.1:{port}/examples/private"),
                "1.0.0",
                &http("/private"),
            )],
            &[("greeting", "Psst", "greeting", "hello")],
        ),
    );
    for (i, (file, repository, revision, _, _)) in cases.iter().enumerate() {
        sandbox.put(
            file,
            &oci_deployment(
                &format!(
                    "{0}{0}{0}{0}{0}{0}{0}{0}-0000-4000-8000-00000000000{0}",
                    i + 2
                ),
                &format!("case-{}", i + 2),
                &[("hello", repository, revision, &http(&format!("/case{i}")))],
                &[],
            ),
        );
    }
    let started = Instant::now();
    let gate = sandbox.up(&config);
    let status = gate.wait_status("every deployment processed", |s| {
        s["deployments"].as_array().unwrap().len() == cases.len() + 2
    });
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "failures took {:?}",
        started.elapsed()
    );
    assert_eq!(gate.get("/hello"), (200, "Hello, world!\n".to_string()));
    assert_eq!(gate.get("/private"), (200, "Psst, world!\n".to_string()));
    for (file, repository, revision, code, needle) in &cases {
        let entry =
            state_of(&status, file).unwrap_or_else(|| panic!("{file} missing from {status:#}"));
        assert_eq!(entry["state"], "failed", "{file}: {entry:#}");
        assert_eq!(entry["error"]["code"], *code, "{file}: {entry:#}");
        let message = entry["error"]["message"].as_str().unwrap();
        eprintln!("{file}: [{code}] {message}");
        let reference = format!("{repository}:{revision}");
        assert!(
            message.contains(&reference),
            "{file}: {message:?} should name {reference}"
        );
        assert!(
            message.contains(needle),
            "{file}: {message:?} should mention {needle:?}"
        );
        let component = &entry["components"][0];
        assert_eq!(component["error"]["code"], *code, "{file}: {entry:#}");
    }
    // Oversized layers are refused before a byte is downloaded; nothing bad was stored.
    assert_eq!(
        registry.wasmgate_requests(&format!("/blobs/{big_layer}")),
        0
    );
    assert!(!sandbox
        .state()
        .join("artifacts/sha256")
        .join(tampered_layer.strip_prefix("sha256:").unwrap())
        .exists());
    for (name, sum) in stored_blobs(&sandbox) {
        assert_eq!(name, sum, "a stored blob does not match its name");
    }
    assert!(!sandbox
        .state()
        .join("artifacts/sha256")
        .read_dir()
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with('.')));

    // A registry that comes back is retried without any change of the documents.
    let mut registry = registry;
    registry.stop();
    let revived = Registry::start();
    revived.push_component("examples/late", "1.0.0", &hello);
    sandbox.put(
        "j-late.yaml",
        &oci_deployment(
            "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
            "late",
            &[(
                "hello",
                &revived.oci("examples/late"),
                "2.0.0",
                &http("/late"),
            )],
            &[],
        ),
    );
    gate.wait_status("late tag missing", |s| {
        state_of(s, "j-late.yaml").is_some_and(|d| d["error"]["code"] == "wasmgate.oci.not-found")
    });
    revived.push_component("examples/late", "2.0.0", &hello);
    gate.wait_for("/late", 200, "Hello, world!");
    // Everything else still serves; the registry being gone changes nothing for them.
    assert_eq!(gate.get("/hello"), (200, "Hello, world!\n".to_string()));
}

#[test]
fn corrupt_cache_entries_are_refetched_and_recompiled_never_executed() {
    let registry = Registry::start();
    let hello = read(wasmgate_examples::HELLO);
    let (_, layer) = registry.push_component("examples/hello", "1.0.0", &hello);
    let sandbox = Sandbox::new();
    sandbox.put(
        "hello.yaml",
        &oci_deployment(
            HELLO_ID,
            "hello",
            &[(
                "hello",
                &registry.oci("examples/hello"),
                "1.0.0",
                &http("/hello"),
            )],
            &[],
        ),
    );
    let gate = sandbox.up(CONFIG);
    gate.wait_for("/hello", 200, "Hello, world!");
    gate.stop();
    let hex = layer.strip_prefix("sha256:").unwrap().to_owned();
    let blob = sandbox.state().join("artifacts/sha256").join(&hex);
    let aot = aot_entries(&sandbox);
    assert_eq!(aot.len(), 1, "{aot:?}");

    // Damage both: one byte of the component, one byte of the compiled code. Also
    // leave the kind of partial download a crash leaves.
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    let mut code = std::fs::read(&aot[0]).unwrap();
    let mid = code.len() / 2;
    code[mid] ^= 0x01;
    std::fs::write(&aot[0], &code).unwrap();
    std::fs::write(
        sandbox.state().join("artifacts/sha256/.tmp-1-1-partial"),
        b"half",
    )
    .unwrap();

    let gate = sandbox.up(CONFIG);
    gate.wait_for("/hello", 200, "Hello, world!");
    let stderr = gate.stderr.lock().unwrap().join("\n");
    assert!(
        stderr.contains("discarding corrupt artifact"),
        "{}",
        gate.diagnostics()
    );
    assert!(
        stderr.contains("discarding corrupt AOT cache entry"),
        "{}",
        gate.diagnostics()
    );
    // The blob was fetched again (exactly once more) and is intact; the partial file is gone.
    assert_eq!(registry.wasmgate_requests(&format!("/blobs/{layer}")), 2);
    assert_eq!(stored_blobs(&sandbox), vec![(hex.clone(), hex)]);
    // The compiled code was rebuilt; its name carries its checksum again.
    let aot = aot_entries(&sandbox);
    assert_eq!(aot.len(), 1, "{aot:?}");
    let name = aot[0].file_name().unwrap().to_string_lossy().into_owned();
    let sum = hex::encode(Sha256::digest(std::fs::read(&aot[0]).unwrap()));
    assert!(name.ends_with(&format!("-{sum}.cwasm")), "{name}");
}

#[test]
fn unreferenced_artifacts_are_collected_after_the_grace_period() {
    let registry = Registry::start();
    let hello = read(wasmgate_examples::HELLO);
    let v2 = with_custom_section(&hello, "revision", b"2");
    let (_, one) = registry.push_component("examples/hello", "1.0.0", &hello);
    let (_, two) = registry.push_component("examples/hello", "2.0.0", &v2);
    let sandbox = Sandbox::new();
    let yaml = |revision: &str| {
        oci_deployment(
            HELLO_ID,
            "hello",
            &[(
                "hello",
                &registry.oci("examples/hello"),
                revision,
                &http("/hello"),
            )],
            &[("greeting", &format!("v{revision}"), "greeting", "hello")],
        )
    };
    sandbox.put("hello.yaml", &yaml("1.0.0"));
    let config = format!("{CONFIG}\n[artifacts]\ngc-grace = \"1s\"\n");
    let gate = sandbox.up(&config);
    gate.wait_for("/hello", 200, "v1.0.0, world!");
    let hex = |d: &str| d.strip_prefix("sha256:").unwrap().to_owned();
    assert!(stored_blobs(&sandbox).iter().any(|(n, _)| *n == hex(&one)));
    sandbox.put("hello.yaml", &yaml("2.0.0"));
    gate.wait_for("/hello", 200, "v2.0.0, world!");
    // Within a few passes after the grace period, only revision 2 is left: blob and code.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let blobs = stored_blobs(&sandbox);
        let aot = aot_entries(&sandbox);
        let names: Vec<String> = aot
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        if blobs.len() == 1 && aot.len() == 1 {
            assert_eq!(blobs[0].0, hex(&two));
            assert!(names[0].starts_with(&hex(&two)), "{names:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {blobs:?} {names:?}{}",
            gate.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(gate.get("/hello").1, "v2.0.0, world!\n");
}
