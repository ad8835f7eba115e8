//! The admin listener is unauthenticated, so it answers only requests addressed to it
//! by an IP literal, `localhost` or a name the operator listed in `[http] admin-hosts`:
//! a DNS-rebinding page (its own name in `Host`) is refused.

mod common;

use common::*;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends one raw request (`target`, `host`) to `addr`; the status code and body.
fn raw_get(addr: SocketAddr, target: &str, host: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    tcp.take(1 << 20).read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn admin_answers_only_ip_literals_localhost_and_listed_names() {
    let (_sandbox, gate) = serve_one(
        (
            "hello",
            wasmgate_examples::HELLO,
            "{trigger: {http: {route: /hello}}}",
        ),
        "admin-hosts = [\"gw-01.site.example\"]",
    );
    gate.wait_for("/hello", 200, "Hello");
    let admin = gate.admin.unwrap();
    let port = admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("gw-01.site.example:{port}"),
    ] {
        for path in ["/status", "/healthz", "/metrics"] {
            let (code, body) = raw_get(admin, path, &host);
            assert_eq!(code, 200, "Host {host} {path}: {body}");
        }
    }
    for (target, host) in [
        ("/status", format!("evil.example:{port}")),
        ("/status", "evil.example".to_owned()),
        ("/metrics", format!("localhost.evil.example:{port}")),
        ("/healthz", "gw-01.site.example.evil".to_owned()),
        // An absolute-form target names the authority too.
        ("http://evil.example/status", format!("127.0.0.1:{port}")),
    ] {
        let (code, body) = raw_get(admin, target, &host);
        assert_eq!(code, 421, "Host {host} {target}: {body}");
        assert!(
            body.contains("admin-hosts") && !body.contains("deviceId"),
            "{host}: {body}"
        );
    }
    // The ingress is not the admin listener: guests see every Host.
    let (code, body) = raw_get(gate.addr, "/hello", "evil.example");
    assert_eq!(code, 200, "{body}");
}
