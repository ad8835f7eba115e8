//! One deployment whose OCI registry accepts the connection and never answers must not
//! delay another deployment's install: in local mode the other one serves, in WFM mode
//! its `installed` status reaches the WFM, while the stalled one is still pending.

mod common;

use common::pki::Pki;
use common::wfm::{MockOptions, MockWfm, Profile};
use common::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The ids sort so that the stalled deployment comes first: a sequential reconciler
/// would be stuck on it before it ever reached the other one.
const STALLED_ID: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const HELLO_ID: &str = "aaaaaaaa-0000-4000-8000-000000000002";

/// How soon the healthy deployment must serve (or be reported installed). The stalled
/// pull would hold it for the whole pull timeout (5 minutes by default) if installs ran
/// one after another; the bound leaves room for a debug build compiling `hello`
/// (about 6 s on an idle 2-core machine) while other jobs share the cores.
const BOUND: Duration = Duration::from_secs(30);

/// A "registry" that accepts connections and never sends a byte.
struct StalledRegistry {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StalledRegistry {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                // Bounded: at most 64 held connections, and it ends with the test.
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let mut held = accepted.lock().unwrap();
                            if held.len() < 64 {
                                held.push(stream);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Self {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn connections(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    fn reference(&self) -> String {
        format!("oci://{}/tests/stalled", self.addr)
    }
}

impl Drop for StalledRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn stalled_yaml(registry: &StalledRegistry) -> String {
    deployment(
        STALLED_ID,
        "stalled",
        Some("edge-01/apps"),
        &[(
            "stalled",
            &registry.reference(),
            "{trigger: {http: {route: /stalled}}}",
        )],
        &[],
    )
}

fn hello_yaml() -> String {
    deployment(
        HELLO_ID,
        "hello",
        Some("edge-01/apps"),
        &[(
            "hello",
            &format!("file://{}", wasmgate_examples::HELLO),
            "{trigger: {http: {route: /hello}}}",
        )],
        &[],
    )
}

const CONFIG: &str = r#"
[device]
id = "edge-01"
[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
"#;

fn entry<'a>(status: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    status["deployments"]
        .as_array()?
        .iter()
        .find(|d| d["deploymentId"] == id)
}

#[test]
fn a_stalled_pull_does_not_hold_a_local_deployment() {
    let registry = StalledRegistry::start();
    let sandbox = Sandbox::new();
    sandbox.put("a-stalled.yaml", &stalled_yaml(&registry));
    sandbox.put("b-hello.yaml", &hello_yaml());
    let started = Instant::now();
    let gate = sandbox.up(CONFIG);
    loop {
        let (code, body) = gate.get("/hello");
        if code == 200 {
            assert_eq!(body, "Hello, world!\n");
            break;
        }
        assert!(
            started.elapsed() < BOUND,
            "/hello not served within {BOUND:?} (last {code} {body:?}); status {:#}{}",
            gate.status(),
            gate.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    // The registry was really asked, and the stalled deployment is still waiting.
    assert!(
        registry.connections() >= 1,
        "the registry was never contacted"
    );
    let status = gate.status();
    let stalled = entry(&status, STALLED_ID).unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!(stalled["state"], "pending", "{stalled:#}");
    assert_eq!(entry(&status, HELLO_ID).unwrap()["state"], "installed");
    // Not every install has finished: the pass is not reconciled yet.
    assert_eq!(status["reconciled"], false, "{status:#}");
    assert_eq!(gate.get("/stalled").0, 404);
    eprintln!("hello served {took:?} after start while the pull stalls");

    // Deleting the stalled document abandons its install; the pass completes.
    sandbox.delete("a-stalled.yaml");
    let status = gate.wait_status("stalled deployment gone", |s| {
        entry(s, STALLED_ID).is_none()
    });
    assert_eq!(entry(&status, HELLO_ID).unwrap()["state"], "installed");
    assert_eq!(gate.get("/hello").0, 200);
}

#[test]
fn a_stalled_pull_does_not_hold_a_wfm_deployment_or_its_status() {
    let registry = StalledRegistry::start();
    let sandbox = Sandbox::new();
    let pki = Pki::new("example.org", "wfm-1", "edge-01");
    let files = pki.write_client_files(&sandbox.path().join("pki"));
    let mock = MockWfm::start_with(Profile::Rc3, &pki, MockOptions::default());
    let config = format!(
        "{}\n[wfm]\nurl = \"{}\"\npoll-interval = \"300ms\"\n{}\n",
        CONFIG.replace(
            "id = \"edge-01\"\n",
            "id = \"edge-01\"\notel-collector = true\n"
        ),
        mock.base_url(),
        files.rc3_credentials()
    );
    let gate = sandbox.up(&config);
    mock.wait_until("capabilities", Duration::from_secs(60), |m| {
        m.capabilities().len() == 2
    });
    let started = Instant::now();
    mock.set_deployments(&[
        (STALLED_ID, stalled_yaml(&registry)),
        (HELLO_ID, hello_yaml()),
    ]);
    let states = |m: &MockWfm, id: &str| -> Vec<String> {
        m.statuses()
            .iter()
            .filter(|s| s["deploymentId"] == id)
            .map(|s| s["status"]["state"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    mock.wait_until("hello installed at the WFM", BOUND, |m| {
        states(m, HELLO_ID).iter().any(|s| s == "installed")
    });
    let took = started.elapsed();
    assert_eq!(gate.get("/hello"), (200, "Hello, world!\n".to_string()));
    assert!(
        registry.connections() >= 1,
        "the registry was never contacted"
    );
    // The stalled one was announced as pending and has gone no further.
    assert_eq!(
        states(&mock, STALLED_ID),
        ["pending"],
        "{:#?}",
        mock.statuses()
    );
    assert_eq!(
        states(&mock, HELLO_ID),
        ["pending", "installing", "installed"]
    );
    eprintln!("hello reported installed {took:?} after the manifest while the pull stalls");
    mock.assert_no_violations();
}
