//! The component `outbound` allow-list, end to end: the `misbehave` guest's `fetch`
//! behaviour makes an outgoing `wasi:http` request to a tiny upstream on loopback, and the
//! upstream counts the connections it accepts. A denied request must fail in the guest
//! with `HTTP-request-denied` and never reach the upstream; an allowed one must.
//!
//! Every test has an allowed and a denied probe between them (or a denial with no rules),
//! so each fails if the host's check were removed (allow all) or inverted.

mod common;

use common::*;
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the guest answers when the host refused the destination (`{ErrorCode:?}`).
const DENIED: &str = "HttpRequestDenied";

/// An HTTP/1.1 server on an ephemeral loopback port, on its own thread, answering every
/// request with `upstream saw PATH`. `accepted` counts TCP connections, whatever they send.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Upstream {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|req: hyper::Request<_>| {
                            let body = format!("upstream saw {}", req.uri().path());
                            async move {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    bytes::Bytes::from(body),
                                )))
                            }
                        });
                        let connection = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                        let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
                    });
                }
            });
        });
        Self { addr, accepted }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// `wasmgate up` with one `misbehave` component on `/misbehave` whose `outbound` list is
/// `rules`, waiting (bounded) until it serves.
fn serve(rules: &[String]) -> (Sandbox, Wasmgate) {
    let outbound = if rules.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = rules.iter().map(|r| format!("{r:?}")).collect();
        format!(", outbound: [{}]", quoted.join(", "))
    };
    let extensions = format!("{{trigger: {{http: {{route: /misbehave}}}}{outbound}}}");
    let (sandbox, gate) = serve_one(("misbehave", wasmgate_examples::MISBEHAVE, &extensions), "");
    gate.wait_for("/misbehave/ok", 200, "ok");
    (sandbox, gate)
}

/// The guest's answer to `fetch?url=URL` (each request bounded by the client's 60 s).
fn fetch(gate: &Wasmgate, url: &str) -> (u16, String) {
    gate.get(&format!("/misbehave/fetch?url={url}"))
}

fn assert_denied(gate: &Wasmgate, url: &str) {
    let (code, body) = fetch(gate, url);
    assert!(
        code == 502 && body.contains(DENIED),
        "{url}: wanted 502 with {DENIED}, got {code} {body:?}{}",
        gate.diagnostics()
    );
}

fn assert_reaches(gate: &Wasmgate, url: &str, path: &str) {
    let (code, body) = fetch(gate, url);
    assert_eq!(
        (code, body.as_str()),
        (200, format!("upstream 200\nupstream saw {path}").as_str()),
        "{url}{}",
        gate.diagnostics()
    );
}

/// The host logs each refusal with the destination only; waits up to 10 s for
/// `at_least` lines naming `host` and `port`. A line that shows `secret` (from a path or
/// query) fails the test: guests put tokens there.
fn denial_logged(gate: &Wasmgate, host: &str, port: u16, secret: &str, at_least: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (host, port) = (format!("host={host}"), format!("port={port}"));
    loop {
        let lines = gate.stderr.lock().unwrap().clone();
        assert!(
            !lines.iter().any(|l| l.contains(secret)),
            "the host logged a guest's query string{}",
            gate.diagnostics()
        );
        let found = lines
            .iter()
            .filter(|l| {
                l.contains("outbound request denied") && l.contains(&host) && l.contains(&port)
            })
            .count();
        if found >= at_least {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn without_rules_every_request_is_denied() {
    let upstream = Upstream::start();
    let (_sandbox, gate) = serve(&[]);
    let url = format!("http://127.0.0.1:{}/x?token=s3cret", upstream.port());
    assert_denied(&gate, &url);
    assert_denied(&gate, &format!("http://localhost:{}/y", upstream.port()));
    assert_eq!(
        upstream.accepted(),
        0,
        "a denied request reached the upstream"
    );
    assert!(
        denial_logged(&gate, "127.0.0.1", upstream.port(), "s3cret", 1),
        "no denial logged{}",
        gate.diagnostics()
    );
}

#[test]
fn a_host_port_rule_allows_that_host_and_port_only() {
    let upstream = Upstream::start();
    let port = upstream.port();
    let (_sandbox, gate) = serve(&[format!("127.0.0.1:{port}")]);
    assert_reaches(
        &gate,
        &format!("http://127.0.0.1:{port}/hello/there"),
        "/hello/there",
    );
    assert_eq!(upstream.accepted(), 1);
    // Matching is by name: `localhost` is the same socket, but not the allowed host.
    assert_denied(&gate, &format!("http://localhost:{port}/x"));
    assert_eq!(
        upstream.accepted(),
        1,
        "a denied request reached the upstream"
    );
}

#[test]
fn a_rule_for_another_port_does_not_allow_this_one() {
    let upstream = Upstream::start();
    let other = Upstream::start();
    let (_sandbox, gate) = serve(&[format!("127.0.0.1:{}", other.port())]);
    assert_denied(&gate, &format!("http://127.0.0.1:{}/x", upstream.port()));
    assert_eq!(
        upstream.accepted(),
        0,
        "a denied request reached the upstream"
    );
    // The rule itself works: its own port is reached.
    assert_reaches(&gate, &format!("http://127.0.0.1:{}/y", other.port()), "/y");
    assert_eq!((upstream.accepted(), other.accepted()), (0, 1));
}

#[test]
fn a_bare_host_rule_allows_any_port_and_ignores_case() {
    let first = Upstream::start();
    let second = Upstream::start();
    let (_sandbox, gate) = serve(&["LocalHost".to_string()]);
    assert_reaches(&gate, &format!("http://LOCALHOST:{}/a", first.port()), "/a");
    assert_reaches(
        &gate,
        &format!("http://localhost:{}/b", second.port()),
        "/b",
    );
    assert_eq!((first.accepted(), second.accepted()), (1, 1));
    // Another name for the same address is not on the list.
    assert_denied(&gate, &format!("http://127.0.0.1:{}/c", first.port()));
    assert_eq!(first.accepted(), 1, "a denied request reached the upstream");
}
