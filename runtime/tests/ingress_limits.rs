//! The ingress under hostile clients: unterminated headers are cut at the header
//! deadline, a connection flood beyond the cap leaves the admin listener answering and
//! the ingress serving again once the flood ends, and an oversize declared body always
//! gets its 413.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[device]
id = "edge-01"
[http]
header-timeout = "1s"
max-connections = 8
max-request-body = "1Ki"
[[partition]]
id = "apps"
cpu = 1.0
memory = "128Mi"
storage = "16Mi"
"#;

fn start() -> (Sandbox, Wasmgate) {
    let sandbox = Sandbox::new();
    sandbox.put(
        "hello.yaml",
        &deployment(
            "aaaaaaaa-0000-4000-8000-0000000000a1",
            "hello",
            Some("edge-01/apps"),
            &[(
                "hello",
                &format!("file://{}", wasmgate_examples::HELLO),
                "{trigger: {http: {route: /hello}}}",
            )],
            &[],
        ),
    );
    let gate = sandbox.up(CONFIG);
    gate.wait_for("/hello", 200, "Hello");
    (sandbox, gate)
}

/// Reads until the peer closes (or `limit` passes); returns what arrived and when.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration, bool) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return (got, started.elapsed(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (got, started.elapsed(), true),
        }
    }
    (got, started.elapsed(), false)
}

#[test]
fn unterminated_headers_are_cut_at_the_header_deadline() {
    let (_sandbox, gate) = start();
    let mut slow = TcpStream::connect(gate.addr).unwrap();
    slow.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    // Slowloris: a byte every 300 ms never completes the head.
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(300));
        if slow.write_all(b"a").is_err() {
            closed = true;
            break;
        }
        let (_, _, eof) = read_until_closed(&mut slow, Duration::from_millis(10));
        if eof {
            closed = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "a trickled header was never cut off");
    assert!(
        took < Duration::from_secs(3),
        "cut after {took:?}, deadline 1s"
    );
    // An idle keep-alive connection is ended by the same deadline.
    let mut idle = TcpStream::connect(gate.addr).unwrap();
    idle.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (reply, took, eof) = read_until_closed(&mut idle, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 200"));
    assert!(
        eof && took < Duration::from_secs(3),
        "idle connection open for {took:?}"
    );
}

#[test]
fn a_connection_flood_leaves_the_admin_listener_answering() {
    let (_sandbox, gate) = start();
    // Fill the ingress' 8 slots (and some of the accept queue) with idle connections.
    let flood: Vec<TcpStream> = (0..24)
        .map(|_| TcpStream::connect(gate.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(gate.admin_get("/healthz").0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "admin answered after {:?}",
        started.elapsed()
    );
    // Once the flood's connections time out (1 s header deadline, 8 at a time) the
    // ingress serves again, without a restart.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, _) = gate.get("/hello");
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "ingress never recovered");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(flood);
}

#[test]
fn an_oversize_declared_body_always_gets_413() {
    let (_sandbox, gate) = start();
    // Far more than the socket buffers hold, sent while the answer is read: closing
    // with unread bytes would reset the connection and lose the 413.
    let body = std::sync::Arc::new(vec![b'x'; 4 << 20]);
    for i in 0..20 {
        let mut s = TcpStream::connect(gate.addr).unwrap();
        let head = format!(
            "POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut writer = s.try_clone().unwrap();
        let body = body.clone();
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(&body);
        });
        let (reply, _, _) = read_until_closed(&mut s, Duration::from_secs(5));
        let _ = sender.join();
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "attempt {i}: got {:?}",
            text.lines().next()
        );
    }
    // A body far beyond anything worth draining is refused at once.
    let mut s = TcpStream::connect(gate.addr).unwrap();
    s.write_all(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let (reply, took, _) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 413"));
    assert!(took < Duration::from_secs(1));
}
