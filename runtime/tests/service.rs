//! Running as a service: the systemd unit in `packaging/` verifies, and the binary,
//! started with the packaged configuration, tells the service manager when it is ready
//! (after the desired state on disk serves) and when it starts draining.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

const UNIT: &str = include_str!("../../packaging/systemd/wasmgate.service");
const PACKAGED_CONFIG: &str = include_str!("../../packaging/wasmgate.toml");

#[test]
fn the_unit_file_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("wasmgate.service");
    // `verify` checks that ExecStart's binary exists: point it at the one under test.
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/wasmgate", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", unit.to_str().unwrap()])
        .output()
        .expect("systemd-analyze (Debian package systemd) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys or bad values are only warnings, on stderr, naming the file.
    assert!(
        !stderr.contains("wasmgate.service"),
        "systemd-analyze complains about the unit:\n{stderr}"
    );
    for key in [
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "StateDirectory=wasmgate",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(UNIT.contains(key), "the unit lost {key:?}");
    }
    assert!(
        !UNIT.contains("\nMemoryDenyWriteExecute"),
        "compiled components need executable mappings"
    );
}

/// Reads notifications until one contains `needle`, or fails after `limit`.
fn wait_notification(socket: &UnixDatagram, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.lines().any(|l| l == needle) {
                return message;
            }
            seen.push(message);
        }
    }
    panic!("no {needle} within {limit:?}; received {seen:?}");
}

#[test]
fn readiness_and_stopping_reach_the_service_manager() {
    let sandbox = Sandbox::new();
    sandbox.put(
        "hello.yaml",
        &deployment(
            "71717171-7171-4171-8171-717171717171",
            "hello",
            None,
            &[(
                "hello",
                wasmgate_examples::HELLO,
                "{trigger: {http: {route: /hello}}}",
            )],
            &[],
        ),
    );
    let socket_path = sandbox.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut command = Command::new(BIN);
    command.env("NOTIFY_SOCKET", &socket_path);
    // The packaged configuration as shipped; the harness overrides only the state
    // folder and the listen addresses.
    let mut gate = sandbox.up_with(command, PACKAGED_CONFIG);

    let ready = wait_notification(&socket, "READY=1", Duration::from_secs(60));
    assert!(ready.contains("STATUS=serving on http://"), "{ready:?}");
    // Ready means the desired state on disk already serves.
    assert_eq!(gate.get("/hello"), (200, "Hello, world!\n".to_string()));

    // `systemctl reload` (ExecReload sends SIGHUP): reloading, then ready again.
    gate.signal("HUP");
    let reloading = wait_notification(&socket, "RELOADING=1", Duration::from_secs(10));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let reloaded = wait_notification(&socket, "READY=1", Duration::from_secs(10));
    assert!(
        reloaded.contains("STATUS=configuration reloaded (no partition or listener changed)"),
        "{reloaded:?}"
    );
    assert_eq!(gate.get("/hello").0, 200);

    gate.signal("TERM");
    let stopping = wait_notification(&socket, "STOPPING=1", Duration::from_secs(10));
    assert!(stopping.contains("STATUS=draining"), "{stopping:?}");
    let status = gate
        .wait_exit(Duration::from_secs(40))
        .expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    // No other readiness message: later reconciles do not repeat it.
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        assert!(
            !String::from_utf8_lossy(&buf[..n]).contains("READY=1"),
            "READY=1 sent twice"
        );
    }
}
