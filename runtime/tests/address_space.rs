//! Short address spaces (39-bit ARM kernels, `ulimit -v`): the real binary started under
//! `RLIMIT_AS` probes what it can reserve, shrinks the instance pool to fit, or falls
//! back to on-demand allocation, logs the choice and serves either way.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

/// Two partitions of 64 instances with 16 MiB memories: about 8.4 GiB of pool wanted.
const SMALL_MEMORIES: &str = r#"
[device]
id = "edge-01"
[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
instance-memory = "16Mi"
concurrency = 64
[[partition]]
id = "sensors"
cpu = 0.5
memory = "128Mi"
storage = "16Mi"
instance-memory = "16Mi"
concurrency = 64
"#;

/// `wasmgate` with its address space limited to `bytes`, as `ulimit -v` would.
fn limited(bytes: u64) -> Command {
    let mut command = Command::new(BIN);
    let limit = rustix::process::Rlimit {
        current: Some(bytes),
        maximum: Some(bytes),
    };
    // SAFETY: setrlimit is a plain syscall, safe between fork and exec.
    unsafe {
        command.pre_exec(move || {
            Ok(rustix::process::setrlimit(
                rustix::process::Resource::As,
                limit,
            )?)
        });
    }
    command
}

fn start(command: Command, config: &str) -> (Sandbox, Wasmgate) {
    let sandbox = Sandbox::new();
    sandbox.put(
        "hello.yaml",
        &deployment(
            "11111111-1111-4111-8111-111111111111",
            "hello",
            Some("edge-01/apps"),
            &[(
                "hello",
                wasmgate_examples::HELLO,
                "{trigger: {http: {route: /hello}}}",
            )],
            &[],
        ),
    );
    let gate = sandbox.up_with(command, config);
    gate.wait_for("/hello", 200, "Hello, world!");
    (sandbox, gate)
}

/// The engine's log line about the allocator it chose.
fn allocator_line(gate: &Wasmgate) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = gate.stderr.lock().unwrap().iter().find_map(|line| {
            (line.contains("pooling allocator ready") || line.contains("on-demand allocation"))
                .then(|| line.clone())
        });
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no allocator line logged{}",
            gate.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `name=` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key.as_str()))
        .and_then(|value| value.parse().ok())
}

#[test]
fn without_a_limit_the_pool_holds_every_instance() {
    let (_sandbox, gate) = start(Command::new(BIN), SMALL_MEMORIES);
    let line = allocator_line(&gate);
    eprintln!("chosen: {line}");
    assert!(line.contains("pooling allocator ready"), "{line}");
    assert_eq!(field(&line, "instances"), Some(128), "{line}");
}

#[test]
fn a_4_gib_address_space_gets_a_smaller_pool_that_serves() {
    let (_sandbox, gate) = start(limited(4 * GIB), SMALL_MEMORIES);
    let line = allocator_line(&gate);
    eprintln!("chosen: {line}");
    assert!(line.contains("pooling allocator ready"), "{line}");
    let instances = field(&line, "instances").expect("instances logged");
    let reserved_mib = field(&line, "reserved_mib").expect("reservation logged");
    // Half of what was free: well under the limit, and more than the minimal pool.
    assert!((4..128).contains(&instances), "{line}");
    assert!(reserved_mib <= 2 * 1024, "{line}");
    assert!(reserved_mib >= 1024, "pool needlessly small: {line}");
    assert_eq!(field(&line, "rlimit_as_mib"), Some(4 * 1024), "{line}");
    // Several requests at once within the shrunk pool still answer.
    let url = gate.url("/hello");
    let answers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || http_get(&url))
        })
        .collect();
    for answer in answers {
        assert_eq!(answer.join().unwrap(), (200, "Hello, world!\n".to_string()));
    }
}

#[test]
fn an_address_space_too_short_for_a_pool_falls_back_to_on_demand() {
    // Default 128 MiB memories: the minimal pool of 4 slots needs about 4 GiB free
    // with room to spare, more than a 3 GiB limit leaves.
    let (_sandbox, gate) = start(limited(3 * GIB), TWO_PARTITIONS);
    let line = allocator_line(&gate);
    eprintln!("chosen: {line}");
    assert!(line.contains("using on-demand allocation"), "{line}");
    assert_eq!(field(&line, "rlimit_as_mib"), Some(3 * 1024), "{line}");
    assert_eq!(gate.get("/hello"), (200, "Hello, world!\n".to_string()));
}
