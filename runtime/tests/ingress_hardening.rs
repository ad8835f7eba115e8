//! The ingress under the attacks of issue 9 (slow and unterminated heads, idle floods
//! past the connection cap and the file-descriptor limit, big half-sent heads, bodies
//! declared over the limit), each against the real binary on loopback with its bound
//! asserted.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn start(http: &str) -> (Sandbox, Wasmgate) {
    let extensions = "{trigger: {http: {route: /hello}}}";
    let started = serve_one(("hello", wasmgate_examples::HELLO, extensions), http);
    started.1.wait_for("/hello", 200, "Hello");
    started
}

/// Reads until the server closes the connection (end of stream or reset); the time
/// from `since` and what was read, or `None` if it is still open after `limit`.
fn closed_after(
    stream: &mut TcpStream,
    since: Instant,
    limit: Duration,
    mut between_reads: impl FnMut(&mut TcpStream) -> bool,
) -> Option<(Duration, Vec<u8>)> {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while since.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some((since.elapsed(), received)),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some((since.elapsed(), received)),
        }
        if !between_reads(stream) {
            return Some((since.elapsed(), received));
        }
    }
    None
}

fn connect(gate: &Wasmgate) -> TcpStream {
    connect_to(gate.addr)
}

fn connect_to(addr: std::net::SocketAddr) -> TcpStream {
    TcpStream::connect(addr).expect("connect to the ingress")
}

fn stderr_lines_with(gate: &Wasmgate, needle: &str) -> usize {
    gate.stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn slow_unterminated_oversized_heads_and_idle_connections_are_closed_on_time() {
    let (_sandbox, gate) = start("header-timeout = \"2s\"\nidle-timeout = \"1s\"");
    let header = Duration::from_secs(2);
    let idle = Duration::from_secs(1);
    let limit = Duration::from_secs(10);
    let early = Duration::from_millis(300);
    let late = Duration::from_millis(1000);
    let addr = gate.addr;
    std::thread::scope(|scope| {
        let unterminated = scope.spawn(move || {
            let mut s = connect_to(addr);
            let since = Instant::now();
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: edge\r\nX-Wait: ")
                .unwrap();
            closed_after(&mut s, since, limit, |_| true)
        });
        let slowloris = scope.spawn(move || {
            let mut s = connect_to(addr);
            let since = Instant::now();
            let head = b"GET /hello HTTP/1.1\r\nHost: edge\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut next = 0;
            // A byte every 100 ms: never idle, never done.
            closed_after(&mut s, since, limit, move |s| {
                let byte = &head[next % head.len()..next % head.len() + 1];
                next += 1;
                s.write_all(byte).is_ok()
            })
        });
        let idle_fresh = scope.spawn(move || {
            let mut s = connect_to(addr);
            closed_after(&mut s, Instant::now(), limit, |_| true)
        });
        let idle_keep_alive = scope.spawn(move || {
            let mut s = connect_to(addr);
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: edge\r\n\r\n")
                .unwrap();
            // The answer is small: one read brings it all, then the idle clock runs.
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            closed_after(&mut s, Instant::now(), limit, |_| true)
        });
        let oversized = scope.spawn(move || {
            let mut s = connect_to(addr);
            let since = Instant::now();
            let mut head = b"GET /hello HTTP/1.1\r\nHost: edge\r\nX-Big: ".to_vec();
            head.resize(head.len() + (40 << 10), b'a');
            // The server may answer and close before the whole head is written.
            let _ = s.write_all(&head);
            closed_after(&mut s, since, limit, |_| true)
        });

        let expect_close = |case: &str, joined: Option<(Duration, Vec<u8>)>, at: Duration| {
            let (took, _) = joined.unwrap_or_else(|| panic!("{case}: still open"));
            println!("{case}: closed after {took:?}");
            assert!(took >= at - early && took <= at + late, "{case}: {took:?}");
        };
        expect_close("unterminated head", unterminated.join().unwrap(), header);
        expect_close("slowloris", slowloris.join().unwrap(), header);
        expect_close("idle new connection", idle_fresh.join().unwrap(), idle);
        expect_close("idle keep-alive", idle_keep_alive.join().unwrap(), idle);
        let (took, answer) = oversized
            .join()
            .unwrap()
            .expect("oversized head stays open");
        let answer = String::from_utf8_lossy(&answer);
        println!("40 KiB head: {:?} after {took:?}", answer.lines().next());
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        assert!(took < late, "{took:?}");
    });
    // Still serving.
    assert_eq!(gate.get("/hello").0, 200);
}

#[test]
fn idle_flood_past_the_cap_leaves_admin_answering_and_ingress_recovers() {
    let (_sandbox, gate) =
        start("max-connections = 20\nheader-timeout = \"3s\"\nidle-timeout = \"2s\"");
    let flood: Vec<TcpStream> = (0..80).map(|_| connect(&gate)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let asked = Instant::now();
        let (code, body) = gate.admin_get("/healthz");
        assert_eq!(code, 200, "{body}");
        slowest = slowest.max(asked.elapsed());
    }
    println!("admin /healthz during the flood: slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");

    // Still held: the idle timeout frees 20 slots every 2 s, so a request queued behind
    // the 60 waiting connections is served after about four rounds.
    let asked = Instant::now();
    let (code, body) = gate.get("/hello");
    let queued = asked.elapsed();
    println!("/hello behind a held flood of 80: {code} after {queued:?}");
    assert_eq!(code, 200, "{body}");
    assert!(queued < Duration::from_secs(12), "{queued:?}");

    // Released by the client: served at once.
    drop(flood);
    let flood: Vec<TcpStream> = (0..80).map(|_| connect(&gate)).collect();
    std::thread::sleep(Duration::from_millis(200));
    drop(flood);
    let asked = Instant::now();
    let (code, body) = gate.get("/hello");
    let released = asked.elapsed();
    println!("/hello after the flood was released: {code} after {released:?}");
    assert_eq!(code, 200, "{body}");
    assert!(released < Duration::from_secs(2), "{released:?}");
    let warnings = stderr_lines_with(&gate, "connection cap reached");
    println!("cap warnings: {warnings}");
    assert!((1..=2).contains(&warnings), "{}", gate.diagnostics());
}

#[test]
fn memory_returns_near_baseline_after_a_thousand_big_half_sent_heads() {
    // This process holds the client ends.
    wasmgate::ingress::raise_fd_limit();
    let (_sandbox, gate) = start(
        "max-connections = 1500\nheader-timeout = \"60s\"\nidle-timeout = \"60s\"\nmax-header-size = \"32Ki\"",
    );
    for _ in 0..20 {
        assert_eq!(gate.get("/hello").0, 200);
    }
    let pid = gate.pid();
    let baseline = rss_kib(pid);
    let mut peaks = Vec::new();
    let mut afters = Vec::new();
    for _round in 0..2 {
        let conns = half_sent_heads(gate.addr, 1200, 30 << 10);
        std::thread::sleep(Duration::from_secs(1));
        peaks.push(rss_kib(pid));
        drop(conns);
        std::thread::sleep(Duration::from_secs(2));
        afters.push(rss_kib(pid));
    }
    println!("RSS KiB: baseline {baseline}, with 1200 half-sent 30 KiB heads {peaks:?}, after they left {afters:?}");
    // 1200 heads of 30 KiB are 35 MiB of input; buffers are bounded by max-header-size.
    for peak in &peaks {
        assert!(
            peak.saturating_sub(baseline) < 96 << 10,
            "peak {peak} KiB over baseline {baseline} KiB"
        );
    }
    for after in &afters {
        assert!(
            after.saturating_sub(baseline) < 16 << 10,
            "{after} KiB stays after the connections left (baseline {baseline} KiB)"
        );
    }
    assert_eq!(gate.get("/hello").0, 200);
}

#[test]
fn accept_errors_from_exhausted_descriptors_back_off_quietly_and_recover() {
    let (_sandbox, gate) =
        start("max-connections = 1000\nheader-timeout = \"60s\"\nidle-timeout = \"60s\"");
    let pid = gate.pid();
    // Leave the running process a few dozen free descriptors: a flood of idle
    // connections then makes accept fail with EMFILE.
    let lowered = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=96:96"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(lowered.success());
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(open < 90, "{open} descriptors already open");
    let flood: Vec<TcpStream> = (0..200).map(|_| connect(&gate)).collect();
    let cpu_before = cpu_seconds(pid);
    let watched = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let cpu = cpu_seconds(pid) - cpu_before;
    let wall = watched.elapsed().as_secs_f64();
    let warnings = stderr_lines_with(&gate, "accept failed");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    println!(
        "EMFILE for {wall:.1}s: {warnings} warning(s), {cpu:.2}s CPU, {open} descriptors open"
    );
    assert!((1..=2).contains(&warnings), "{}", gate.diagnostics());
    assert!(
        cpu < 0.2 * wall,
        "accept loop spins: {cpu:.2}s CPU in {wall:.1}s"
    );

    drop(flood);
    let asked = Instant::now();
    let (code, body) = gate.get("/hello");
    let recovered = asked.elapsed();
    println!("/hello after the flood left: {code} after {recovered:?}");
    assert_eq!(code, 200, "{body}");
    assert!(recovered < Duration::from_secs(3), "{recovered:?}");
}

#[test]
fn bodies_declared_over_the_limit_get_413_every_time() {
    let (_sandbox, gate) = start("max-request-body = \"16Mi\"");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let body = vec![b'x'; (16 << 20) + 1];
    let url = gate.url("/hello");
    let outcomes: Vec<String> = (0..20)
        .map(|_| match agent.post(&url).send(&body[..]) {
            Ok(response) => response.status().as_u16().to_string(),
            Err(err) => format!("no answer: {err}"),
        })
        .collect();
    let answered = outcomes.iter().filter(|o| *o == "413").count();
    println!("16 MiB + 1 declared: {answered}/20 answered 413");
    assert_eq!(answered, 20, "{outcomes:?}");
    // At the limit the request reaches the guest.
    let at_limit = agent.post(&url).send(&body[..16 << 20]).unwrap();
    assert_eq!(at_limit.status().as_u16(), 200);
}
