//! Hostile TLS peers in the WFM's place (rc.3 profile): a wrong SPIFFE ID, an expired or
//! not-yet-valid certificate, one whose (extended) key usage does not allow TLS server
//! authentication, a chain from a foreign CA, and a WFM that accepts the connection but
//! never finishes answering. Each is refused (no request ever reaches it, none of its
//! desired state is applied), named in `/status` within a stated bound, the deployments
//! already running keep answering, and memory stays bounded.
//!
//! The host talks to a loopback relay whose target the test switches, so one running
//! host meets every peer at the same URL, exactly as a network attacker would present
//! them.

mod common;

use common::pki::{Identity, LeafShape, Pki};
use common::wfm::{MockOptions, MockWfm, Profile};
use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const HELLO_ID: &str = "bbbbbbbb-0000-4000-8000-000000000001";
/// A refused peer shows in `/status` within this bound of the switch (poll 300 ms,
/// back-off 600 ms and 1.2 s after the first failures).
const REPORTED_WITHIN: Duration = Duration::from_secs(10);
/// The documented bound of one WFM exchange (`margo::http::REQUEST_TIMEOUT`, 30 s), plus
/// a poll and scheduling slack on a loaded 2-core machine.
const TIMEOUT_BOUND: Duration = Duration::from_secs(40);
/// How much RSS may grow while hostile peers are met.
const RSS_GROWTH_LIMIT_KIB: u64 = 32 << 10;

/// A TCP relay on loopback: every new connection goes to the current target.
struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    _runtime: tokio::runtime::Runtime,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let current = target.clone();
        runtime.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *current.lock().unwrap();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay {
            addr,
            target,
            _runtime: runtime,
        }
    }

    fn point_at(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }
}

/// How a [`StallingWfm`] misbehaves once a client connected.
#[derive(Clone, Copy)]
enum Stall {
    /// TCP accepted, then silence: not even a TLS ServerHello.
    Silent,
    /// A valid TLS handshake with the right WFM identity, the request read, a `200` head,
    /// then a chunked body of one byte every 200 ms that never ends.
    DripBody,
}

/// A WFM that never completes an exchange. Counts the connections it got.
struct StallingWfm {
    addr: SocketAddr,
    connections: Arc<Mutex<u32>>,
    _runtime: tokio::runtime::Runtime,
}

impl StallingWfm {
    fn start(stall: Stall, identity: &Identity) -> StallingWfm {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.rustls_chain(), identity.rustls_key())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let connections = Arc::new(Mutex::new(0));
        let counter = connections.clone();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                *counter.lock().unwrap() += 1;
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match stall {
                        Stall::Silent => {
                            // Hold the socket open and say nothing, for longer than any test.
                            let _held = tcp;
                            tokio::time::sleep(Duration::from_secs(600)).await;
                        }
                        Stall::DripBody => {
                            let Ok(mut tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let mut head = Vec::new();
                            let mut buf = [0u8; 4096];
                            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                                match tls.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => head.extend_from_slice(&buf[..n]),
                                }
                                if head.len() > 64 << 10 {
                                    return;
                                }
                            }
                            let response = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                            if tls.write_all(response).await.is_err() {
                                return;
                            }
                            // Bounded by the test's life; the client must give up first.
                            for _ in 0..3000 {
                                if tls.write_all(b"1\r\n \r\n").await.is_err()
                                    || tls.flush().await.is_err()
                                {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                });
            }
        });
        StallingWfm {
            addr,
            connections,
            _runtime: runtime,
        }
    }

    fn connections(&self) -> u32 {
        *self.connections.lock().unwrap()
    }
}

fn hello_yaml(greeting: &str) -> String {
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
    )
}

struct Setup {
    _sandbox: Sandbox,
    pki: Pki,
    genuine: MockWfm,
    relay: Relay,
    gate: Wasmgate,
    baseline_rss_kib: u64,
}

/// A host talking rc.3 to the genuine mock WFM through the relay, serving `/hello`
/// with the greeting `Genuine`.
fn setup() -> Setup {
    let sandbox = Sandbox::new();
    let pki = Pki::new("example.org", "wfm-1", "edge-01");
    let files = pki.write_client_files(&sandbox.path().join("pki"));
    let genuine = MockWfm::start(Profile::Rc3, &pki);
    genuine.set_deployments(&[(HELLO_ID, hello_yaml("Genuine"))]);
    let relay = Relay::start(genuine.addr());
    let config = format!(
        r#"
[device]
id = "edge-01"
mode = "see-thru"
vendor = "Acme"
model = "EG-1"
serial = "SN-1"
otel-collector = true
labels = {{ site = "north" }}

[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
labels = {{ tier = "apps" }}

[wfm]
url = "https://{}/v1alpha2/margo"
poll-interval = "300ms"
{}
"#,
        relay.addr,
        files.rc3_credentials()
    );
    let gate = sandbox.up(&config);
    gate.wait_for("/hello", 200, "Genuine");
    wait_last_error(&gate, "a clean sync", REPORTED_WITHIN, |e| e.is_none());
    let baseline_rss_kib = rss_kib(gate.pid());
    Setup {
        _sandbox: sandbox,
        pki,
        genuine,
        relay,
        gate,
        baseline_rss_kib,
    }
}

/// Waits (at most `bound`) until `/status`'s `wfm.lastError` satisfies `check`; returns
/// the error and how long it took.
fn wait_last_error(
    gate: &Wasmgate,
    what: &str,
    bound: Duration,
    check: impl Fn(Option<&str>) -> bool,
) -> (Option<String>, Duration) {
    let start = Instant::now();
    loop {
        let status = gate.status();
        let error = status["wfm"]["lastError"].as_str().map(str::to_owned);
        if check(error.as_deref()) {
            return (error, start.elapsed());
        }
        assert!(
            start.elapsed() < bound,
            "{what}: not within {bound:?}; wfm: {:#}{}",
            status["wfm"],
            gate.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_still_serving(s: &Setup, what: &str) {
    let (code, body) = s.gate.get("/hello");
    assert_eq!(code, 200, "{what}: /hello stopped answering: {body}");
    assert!(
        body.contains("Genuine") && !body.contains("Impostor"),
        "{what}: /hello answers {body:?}"
    );
    let now = rss_kib(s.gate.pid());
    eprintln!("{what}: RSS {} KiB -> {now} KiB", s.baseline_rss_kib);
    assert!(
        now.saturating_sub(s.baseline_rss_kib) < RSS_GROWTH_LIMIT_KIB,
        "{what}: RSS grew from {} KiB to {now} KiB",
        s.baseline_rss_kib
    );
}

#[test]
fn hostile_wfm_certificates_are_refused_and_the_previous_state_serves() {
    let s = setup();
    let cases: Vec<(&str, Identity, &[&str])> = vec![
        (
            "wrong SPIFFE ID",
            s.pki
                .wfm_svid_with_id("spiffe://example.org/margo/wfm/other-wfm"),
            &["other-wfm", "expected exactly"],
        ),
        (
            "expired certificate",
            s.pki.wfm_svid_shaped(LeafShape::Expired),
            &["CertExpired"],
        ),
        (
            "not-yet-valid certificate",
            s.pki.wfm_svid_shaped(LeafShape::NotYetValid),
            &["CertNotValidYet"],
        ),
        (
            "extended key usage clientAuth only",
            s.pki.wfm_svid_shaped(LeafShape::ClientAuthOnly),
            &["RequiredEkuNotFound"],
        ),
        (
            "key usage without digitalSignature",
            s.pki.wfm_svid_shaped(LeafShape::NoDigitalSignature),
            &["digitalSignature"],
        ),
        (
            "chain from a foreign CA",
            s.pki.foreign_ca_wfm(),
            &["does not chain to the trust bundle"],
        ),
    ];
    for (what, identity, reasons) in cases {
        let hostile = MockWfm::start_with(
            Profile::Rc3,
            &s.pki,
            MockOptions {
                server_identity: Some(identity),
                ..Default::default()
            },
        );
        hostile.set_deployments(&[(HELLO_ID, hello_yaml("Impostor"))]);
        s.relay.point_at(hostile.addr());
        let (error, took) = wait_last_error(&s.gate, what, REPORTED_WITHIN, |e| {
            e.is_some_and(|e| e.contains("TLS handshake") && reasons.iter().all(|r| e.contains(r)))
        });
        eprintln!("{what}: refused in {took:?}: {}", error.unwrap());
        assert!(
            !hostile.tls_failures().is_empty(),
            "{what}: the host never reached the hostile peer"
        );
        assert!(
            hostile.requests().is_empty() && hostile.handshakes().is_empty(),
            "{what}: a request reached the hostile peer: {:?}",
            hostile
                .requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
        );
        assert_still_serving(&s, what);
        // Back to the genuine WFM: the next cycle completes again.
        s.relay.point_at(s.genuine.addr());
        wait_last_error(
            &s.gate,
            &format!("recovery after {what}"),
            REPORTED_WITHIN,
            |e| e.is_none(),
        );
    }
    // The genuine WFM's changes still apply after all that.
    s.genuine
        .set_deployments(&[(HELLO_ID, hello_yaml("Genuine again"))]);
    s.gate.wait_for("/hello", 200, "Genuine again");
    // Nothing of our private key reaches the log or `/status`.
    let key_pem = s.pki.client_svid().key_pem;
    let key_line = key_pem.lines().nth(1).unwrap();
    let (_, status) = s.gate.admin_get("/status");
    assert!(
        !s.gate.diagnostics().contains(key_line) && !status.contains(key_line),
        "the SVID key leaked into the log or /status"
    );
    // The relay's address is the authority the host sends; anything else is a defect.
    let violations: Vec<String> = s
        .genuine
        .violations()
        .into_iter()
        .filter(|v| !v.contains("unexpected Host header"))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
}

/// One stalled WFM: the exchange is given up within the documented bound, the reason is
/// in `/status`, `/hello` answers meanwhile, and the next cycle with a genuine WFM applies
/// new desired state.
fn stalled_wfm_times_out_and_the_cycle_goes_on(stall: Stall, what: &str) {
    let s = setup();
    let stalling = StallingWfm::start(stall, &s.pki.wfm_server());
    s.relay.point_at(stalling.addr);
    let switched = Instant::now();
    // Serving goes on while the exchange hangs.
    std::thread::sleep(Duration::from_secs(5));
    assert!(stalling.connections() >= 1, "{what}: never connected");
    assert_still_serving(&s, &format!("{what}, while stalled"));
    let (error, _) = wait_last_error(&s.gate, what, TIMEOUT_BOUND, |e| {
        e.is_some_and(|e| e.contains("timed out"))
    });
    let took = switched.elapsed();
    eprintln!("{what}: given up after {took:?}: {}", error.unwrap());
    assert!(
        took >= Duration::from_secs(20),
        "{what}: gave up after {took:?}, before the 30 s bound: not a timeout"
    );
    assert_still_serving(&s, what);
    s.relay.point_at(s.genuine.addr());
    s.genuine
        .set_deployments(&[(HELLO_ID, hello_yaml("Genuine again"))]);
    let start = Instant::now();
    s.gate.wait_for("/hello", 200, "Genuine again");
    assert!(
        start.elapsed() < TIMEOUT_BOUND,
        "{what}: the next cycle took {:?}",
        start.elapsed()
    );
}

#[test]
fn wfm_that_drips_its_body_forever_times_out() {
    stalled_wfm_times_out_and_the_cycle_goes_on(Stall::DripBody, "body dripping forever");
}

#[test]
fn wfm_that_never_answers_times_out() {
    stalled_wfm_times_out_and_the_cycle_goes_on(Stall::Silent, "silent after accept");
}

/// `wasmgate up` with `config`, expected to refuse to start: its exit status (within
/// 30 s) and its stderr.
fn up_refused(sandbox: &Sandbox, config: &str) -> (std::process::ExitStatus, String) {
    let config = sandbox.config(config);
    let mut child = std::process::Command::new(BIN)
        .args(["up", "--config"])
        .arg(&config)
        .arg("--deployments")
        .arg(sandbox.deployments())
        .arg("--state-dir")
        .arg(sandbox.state())
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wasmgate up kept running with an unsafe key file");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

fn wfm_config(wfm_url: &str, transport: &str) -> String {
    format!(
        "[device]\nid = \"edge-01\"\nmode = \"see-thru\"\notel-collector = true\nlabels = {{ site = \"north\" }}\n\
         [[partition]]\nid = \"apps\"\ncpu = 1.0\nmemory = \"256Mi\"\nstorage = \"16Mi\"\nlabels = {{ tier = \"apps\" }}\n\
         [wfm]\nurl = \"{wfm_url}\"\npoll-interval = \"300ms\"\n{transport}\n"
    )
}

#[test]
fn private_keys_open_to_others_or_not_regular_files_refuse_the_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let sandbox = Sandbox::new();
    let pki = Pki::new("example.org", "wfm-1", "edge-01");
    let files = pki.write_client_files(&sandbox.path().join("pki"));
    // Nothing listens here: the refusal comes before any connection.
    let url = "https://127.0.0.1:9/v1alpha2/margo";
    let rc3 = wfm_config(url, &files.rc3_credentials());
    for mode in [0o644, 0o640, 0o660, 0o604] {
        std::fs::set_permissions(&files.svid_key, std::fs::Permissions::from_mode(mode)).unwrap();
        let (status, stderr) = up_refused(&sandbox, &rc3);
        let key = files.svid_key.display().to_string();
        assert!(!status.success(), "mode {mode:o}: started");
        for needle in [
            key.clone(),
            format!("mode {mode:04o}"),
            format!("chmod 600 {key}"),
        ] {
            assert!(
                stderr.contains(&needle),
                "mode {mode:o}: {needle:?} not in:\n{stderr}"
            );
        }
    }

    // rc.2: a FIFO in place of the device key is refused without blocking on it.
    std::fs::remove_file(&files.rc2_client_key).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&files.rc2_client_key)
        .status()
        .unwrap();
    assert!(made.success());
    let rc2 = wfm_config(
        url,
        &format!(
            "profile = \"rc2\"\nclient-cert = {:?}\nclient-key = {:?}\nroot-ca = {:?}",
            files.rc2_client_cert, files.rc2_client_key, files.root_ca_pem
        ),
    );
    let start = Instant::now();
    let (status, stderr) = up_refused(&sandbox, &rc2);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "client key {} is not a regular file",
            files.rc2_client_key.display()
        )),
        "{stderr}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn rc2_client_id_is_stored_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let sandbox = Sandbox::new();
    let pki = Pki::new("example.org", "wfm-1", "edge-01");
    let files = pki.write_client_files(&sandbox.path().join("pki"));
    let mock = MockWfm::start_with(
        Profile::Rc2,
        &pki,
        MockOptions {
            rc2_allow_custom: true,
            ..Default::default()
        },
    );
    let config = wfm_config(
        &mock.base_url(),
        &format!(
            "profile = \"rc2\"\nclient-cert = {:?}\nclient-key = {:?}\nroot-ca = {:?}",
            files.rc2_client_cert, files.rc2_client_key, files.root_ca_pem
        ),
    );
    let gate = sandbox.up(&config);
    let id_file = sandbox.state().join("wfm/client-id");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !id_file.exists() {
        assert!(
            Instant::now() < deadline,
            "no client-id after onboarding{}",
            gate.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mode = std::fs::metadata(&id_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "client-id is {mode:o}");
}
