//! Graceful shutdown of the real binary: SIGTERM stops accepting and lets a slow
//! streaming response finish, then exits 0; a second SIGTERM, or the shutdown bound,
//! ends the process at once with a status that says which.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::ExitStatus;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn start(http: &str) -> (Sandbox, Wasmgate) {
    let extensions = "{trigger: {http: {route: /bad}}, limits: {timeout: 25s}}";
    let started = serve_one(
        ("misbehave", wasmgate_examples::MISBEHAVE, extensions),
        http,
    );
    started.1.wait_for("/bad/ok", 200, "ok");
    started
}

/// The exit status within `limit` (panics if the process still runs) and how long it took.
fn exited_within(gate: &mut Wasmgate, limit: Duration, what: &str) -> (ExitStatus, Duration) {
    let since = Instant::now();
    let status = gate
        .wait_exit(limit)
        .unwrap_or_else(|| panic!("still running {what}{}", gate.diagnostics()));
    (status, since.elapsed())
}

struct Streamed {
    raw: String,
    /// When the last chunk (the chunked terminator) arrived.
    body_done: Option<Instant>,
    /// When the server closed the connection.
    closed: Option<Instant>,
}

/// Sends `GET path` and returns once the response head arrived; the thread reads the
/// rest until the server closes the connection (at most 40 s).
fn start_stream(gate: &Wasmgate, path: &str) -> JoinHandle<Streamed> {
    let mut s = TcpStream::connect(gate.addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("response head");
        assert!(n > 0, "closed before the head");
        raw.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut body_done = None;
        let mut closed = None;
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = Some(Instant::now());
                    break;
                }
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if body_done.is_none() && raw.ends_with(b"\r\n0\r\n\r\n") {
                        body_done = Some(Instant::now());
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    closed = Some(Instant::now());
                    break;
                }
            }
        }
        Streamed {
            raw: String::from_utf8_lossy(&raw).into_owned(),
            body_done,
            closed,
        }
    })
}

fn refused_within(gate: &Wasmgate, limit: Duration) -> Option<Duration> {
    let since = Instant::now();
    while since.elapsed() < limit {
        if TcpStream::connect_timeout(&gate.addr, Duration::from_millis(100)).is_err() {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn sigterm_lets_a_slow_streaming_response_finish_then_exits_zero() {
    let (_sandbox, mut gate) = start("idle-timeout = \"30s\"\nheader-timeout = \"60s\"");
    // An idle keep-alive connection must not hold the shutdown up for its idle timeout.
    let mut idle = TcpStream::connect(gate.addr).unwrap();
    idle.write_all(b"GET /bad/ok HTTP/1.1\r\nHost: edge\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(idle.read(&mut buf).unwrap() > 0);
    let idle_reader = std::thread::spawn(move || {
        idle.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let _ = idle.read(&mut buf);
        Instant::now()
    });

    let stream = start_stream(&gate, "/bad/drip?chunks=6&ms=500");
    let signalled = Instant::now();
    gate.signal("TERM");
    let refused = refused_within(&gate, Duration::from_secs(2));
    println!("new connections refused {refused:?} after SIGTERM");
    assert!(refused.is_some(), "still accepting after SIGTERM");

    let idle_closed = idle_reader.join().unwrap() - signalled;
    println!("idle keep-alive connection closed {idle_closed:?} after SIGTERM");
    assert!(idle_closed < Duration::from_secs(1), "{idle_closed:?}");

    let streamed = stream.join().unwrap();
    let status = gate.wait_exit(Duration::from_secs(15));
    let exited = Instant::now();
    let status = status.unwrap_or_else(|| panic!("still running{}", gate.diagnostics()));
    let body_done = streamed
        .body_done
        .unwrap_or_else(|| panic!("stream cut: {:?}{}", streamed.raw, gate.diagnostics()));
    for i in 0..6 {
        assert!(
            streamed.raw.contains(&format!("chunk {i}\n")),
            "chunk {i} missing: {:?}",
            streamed.raw
        );
    }
    println!(
        "stream finished {:?} after SIGTERM, connection closed {:?} after, process exited {:?} after ({status})",
        body_done - signalled,
        streamed.closed.map(|c| c - signalled),
        exited - signalled
    );
    assert!(status.success(), "{status}{}", gate.diagnostics());
    // The body really went on after the signal, and the process waited for it.
    assert!(body_done - signalled >= Duration::from_millis(2000));
    assert!(exited >= body_done);
    assert!(exited - body_done < Duration::from_secs(2), "slow to exit");
    let stdout = gate.stdout.lock().unwrap().join("\n");
    assert!(stdout.contains("SIGTERM received; draining"), "{stdout}");
    assert!(stdout.contains("wasmgate: stopped"), "{stdout}");
}

#[test]
fn a_second_sigterm_ends_the_drain_at_once() {
    let (_sandbox, mut gate) = start("");
    let stream = start_stream(&gate, "/bad/drip?chunks=40&ms=500");
    gate.signal("TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        gate.wait_exit(Duration::ZERO).is_none(),
        "exited without draining{}",
        gate.diagnostics()
    );
    gate.signal("TERM");
    let (status, took) = exited_within(&mut gate, Duration::from_secs(5), "after a second SIGTERM");
    println!("second SIGTERM: exited after {took:?} with {status}");
    assert_eq!(status.code(), Some(128 + 15), "{}", gate.diagnostics());
    assert!(took < Duration::from_secs(1), "{took:?}");
    let streamed = stream.join().unwrap();
    assert!(streamed.body_done.is_none(), "the stream was not cut");
    assert!(stderr_contains(&gate, "second signal (SIGTERM)"));
}

#[test]
fn a_drain_past_the_shutdown_bound_ends_with_status_124() {
    let (_sandbox, mut gate) = start("shutdown-timeout = \"2s\"");
    let stream = start_stream(&gate, "/bad/drip?chunks=40&ms=500");
    gate.signal("TERM");
    let (status, took) = exited_within(&mut gate, Duration::from_secs(10), "past the bound");
    println!("bound of 2s: exited after {took:?} with {status}");
    assert_eq!(status.code(), Some(124), "{}", gate.diagnostics());
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(stream.join().unwrap().body_done.is_none());
    assert!(stderr_contains(&gate, "did not finish within 2s"));
}

fn stderr_contains(gate: &Wasmgate, needle: &str) -> bool {
    gate.stderr
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains(needle))
}
