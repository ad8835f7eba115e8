//! Crash safety of the state directory: `wasmgate up` is killed with SIGKILL at random
//! moments while it reconciles a changed deployment (pulling from a real OCI registry,
//! compiling, writing the artifact store, the AOT cache, the applied-deployment records
//! and key-value data), many times over. After every kill the state on disk must be
//! intact, and after every restart the host must serve complete versions only (never a
//! mix of two), end on the latest document, report it installed, and open its
//! key-value store with nothing lost that a client saw committed.
//!
//! `WASMGATE_CRASH_ITERATIONS` (default 50) sets the number of kills,
//! `WASMGATE_CRASH_SEED` the random seed (printed, to replay a failure).

mod common;

use common::registry::{with_custom_section, Registry};
use common::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

const APP_ID: &str = "31313131-3131-4131-8131-313131313131";
const COUNTER_ID: &str = "32323232-3232-4232-8232-323232323232";

const CONFIG: &str = r#"
watch-interval = "50ms"
[device]
id = "edge-01"
[[partition]]
id = "apps"
cpu = 2.0
memory = "512Mi"
storage = "16Mi"
"#;

/// The app under change: two components (`a` at /a, `b` at /b) that must always answer
/// from the same generation: a half-applied deployment would show two.
fn app(registry: &Registry, revision: &str, generation: usize) -> String {
    let repository = registry.oci("examples/hello");
    format!(
        r#"id: {APP_ID}
metadata:
  name: app
  namespace: tests
spec:
  applicationId: app
  deploymentProfile:
    type: custom
    components:
      - name: a
        properties: {{repository: "{repository}", revision: "{revision}"}}
        x-wasmgate-extensions: {{trigger: {{http: {{route: /a}}}}}}
      - name: b
        properties: {{repository: "{repository}", revision: "{revision}"}}
        x-wasmgate-extensions: {{trigger: {{http: {{route: /b}}}}}}
  parameters:
    greeting:
      value: gen-{generation}
      targets:
        - pointer: greeting
          components: [a, b]
"#
    )
}

fn counter(registry: &Registry) -> String {
    format!(
        r#"id: {COUNTER_ID}
metadata:
  name: counter
  namespace: tests
spec:
  applicationId: counter
  deploymentProfile:
    type: custom
    components:
      - name: counter
        properties: {{repository: "{}", revision: "1.0.0"}}
        x-wasmgate-extensions: {{trigger: {{http: {{route: /counter}}}}}}
"#,
        registry.oci("examples/counter")
    )
}

/// xorshift64*: enough randomness for kill times, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn generation(body: &str) -> Option<usize> {
    body.strip_prefix("gen-")?
        .strip_suffix(", world!\n")?
        .parse()
        .ok()
}

fn hits(body: &str) -> Option<u64> {
    body.strip_prefix("hits: ")?.trim().parse().ok()
}

/// What must hold on disk after any kill: every stored blob and compiled entry has the
/// content its name promises, every applied-deployment record reads back intact.
fn check_disk(state: &Path, iteration: usize) {
    let blobs = state.join("artifacts/sha256");
    for entry in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(wasmgate::fsutil::TEMP_PREFIX) {
            continue; // an interrupted download, swept at the next start
        }
        let sum = hex::encode(Sha256::digest(std::fs::read(entry.path()).unwrap()));
        assert_eq!(sum, name, "iteration {iteration}: torn blob {name}");
    }
    for entry in std::fs::read_dir(state.join("aot"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(wasmgate::fsutil::TEMP_PREFIX) {
            continue;
        }
        let sum = hex::encode(Sha256::digest(std::fs::read(entry.path()).unwrap()));
        assert!(
            name.ends_with(&format!("-{sum}.cwasm")),
            "iteration {iteration}: torn AOT entry {name}"
        );
    }
    let records = wasmgate::fsutil::StateDir::open(state.join("deployments")).unwrap();
    for key in records.keys("").unwrap() {
        let record: serde_json::Value = records
            .get_json(&key)
            .unwrap_or_else(|e| panic!("iteration {iteration}: record {key}: {e}"))
            .unwrap();
        assert_eq!(record["id"], key.as_str());
    }
}

#[test]
fn sigkill_during_reconciliation_leaves_a_consistent_state() {
    let iterations: usize = std::env::var("WASMGATE_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("WASMGATE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test: {iterations} iterations, WASMGATE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();

    let registry = Registry::start();
    let hello = std::fs::read(wasmgate_examples::HELLO).unwrap();
    registry.push_component(
        "examples/counter",
        "1.0.0",
        &std::fs::read(wasmgate_examples::COUNTER).unwrap(),
    );
    // A few revisions that stay cached, plus a fresh one now and then (a pull and a
    // compile to interrupt).
    let mut revisions: Vec<String> = Vec::new();
    for r in 0..3 {
        let tag = format!("1.{r}.0");
        registry.push_component(
            "examples/hello",
            &tag,
            &with_custom_section(&hello, "revision", tag.as_bytes()),
        );
        revisions.push(tag);
    }

    let sandbox = Sandbox::new();
    sandbox.put("counter.yaml", &counter(&registry));
    sandbox.put("app.yaml", &app(&registry, &revisions[0], 0));

    // Calibrate the kill window: how long one reconciliation of a changed document takes
    // with a cached revision and with a fresh one.
    let gate = sandbox.up(CONFIG);
    gate.wait_for("/a", 200, "gen-0,");
    let measure = |tag: &str, generation: usize| {
        let t = Instant::now();
        sandbox.put("app.yaml", &app(&registry, tag, generation));
        gate.wait_for("/b", 200, &format!("gen-{generation},"));
        t.elapsed()
    };
    let first = measure(&revisions[1], 1);
    let cached = measure(&revisions[0], 2);
    registry.push_component(
        "examples/hello",
        "2.0.0-calibrate",
        &with_custom_section(&hello, "revision", b"calibrate"),
    );
    let fresh = measure("2.0.0-calibrate", 3).max(first);
    let mut last_hits = hits(&gate.wait_for("/counter", 200, "hits")).unwrap();
    drop(gate);
    eprintln!(
        "reconciliation takes about {cached:?} (cached revision), {fresh:?} (fresh pull + compile)"
    );

    let mut written = 3usize; // the generation the folder holds now
    let mut fresh_kills = 0;
    for i in 0..iterations {
        // Restart on the state the last kill left.
        check_disk(&sandbox.state(), i);
        let round = Instant::now();
        let gate = sandbox.up(CONFIG);
        // From the first answer on: only complete generations that were written, never
        // a mix of two; the end state is the document in the folder.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (ca, a) = gate.get("/a");
            let (cb, b) = gate.get("/b");
            for (code, body) in [(ca, &a), (cb, &b)] {
                if code == 200 {
                    let g = generation(body)
                        .unwrap_or_else(|| panic!("iteration {i}: unexpected answer {body:?}"));
                    assert!(
                        g <= written,
                        "iteration {i}: generation {g} was never written"
                    );
                } else {
                    // Before the first pass: nothing published yet.
                    assert_eq!(
                        code,
                        404,
                        "iteration {i}: {code} {body}{}",
                        gate.diagnostics()
                    );
                }
            }
            if generation(&a) == Some(written) && generation(&b) == Some(written) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "iteration {i}: not serving generation {written}: /a {a:?} /b {b:?}{}",
                gate.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = gate.wait_status("app installed", |s| {
            s["deployments"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["state"] == "installed" && d["error"].is_null())
                && s["deployments"].as_array().unwrap().len() == 2
        });
        let app_status = status["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["deploymentId"] == APP_ID)
            .unwrap();
        assert_eq!(app_status["routes"].as_array().unwrap().len(), 2);
        // The key-value store opens and kept every increment a client saw.
        let now = hits(&gate.wait_for("/counter", 200, "hits")).unwrap();
        assert!(
            now > last_hits,
            "iteration {i}: counter went from {last_hits} to {now}"
        );
        last_hits = now;
        // The record of the applied deployment is the document being served.
        let record: serde_json::Value =
            wasmgate::fsutil::StateDir::open(sandbox.state().join("deployments"))
                .unwrap()
                .get_json(APP_ID)
                .unwrap()
                .expect("record of the applied app");
        assert!(
            record["yaml"]
                .as_str()
                .unwrap()
                .contains(&format!("gen-{written}\n")),
            "iteration {i}: {record:#}"
        );

        let restart = round.elapsed();
        // Change the document, then kill somewhere in the reconciliation it starts.
        written += 1;
        let fresh_revision = i % 5 == 4;
        let (tag, window) = if fresh_revision {
            let tag = format!("3.{i}.0");
            registry.push_component(
                "examples/hello",
                &tag,
                &with_custom_section(&hello, "revision", tag.as_bytes()),
            );
            fresh_kills += 1;
            (tag, fresh)
        } else {
            (
                revisions[rng.below(revisions.len() as u64) as usize].clone(),
                cached,
            )
        };
        if rng.below(4) == 0 {
            // Sometimes a counter increment races the kill too.
            let (code, body) = gate.get("/counter");
            assert_eq!(code, 200, "{body}");
            last_hits = hits(&body).unwrap();
        }
        sandbox.put("app.yaml", &app(&registry, &tag, written));
        let window_ms = (window.as_millis() as u64 * 5 / 4).max(20);
        let delay = rng.below(window_ms);
        std::thread::sleep(Duration::from_millis(delay));
        eprintln!(
            "iteration {i}: restart + checks {restart:?}; revision {tag}, killed {delay} ms after the change"
        );
        // SIGKILL (what dropping the harness does: Child::kill) and reap.
        drop(gate);
    }
    check_disk(&sandbox.state(), iterations);

    // A last start: everything converges and the registry is not needed for what is cached.
    let gate = sandbox.up(CONFIG);
    gate.wait_for("/a", 200, &format!("gen-{written},"));
    gate.wait_for("/b", 200, &format!("gen-{written},"));
    eprintln!(
        "{iterations} kills ({fresh_kills} during fresh pulls) in {:?}",
        started.elapsed()
    );
}
