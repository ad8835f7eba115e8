//! Soak (issue 9, item 8): the real binary serves four deployments in two partitions to
//! 64 keep-alive clients for `SOAK_SECONDS` (default 60, the CI run; the documented long
//! run is `SOAK_SECONDS=600`), while the `hello` deployment is updated every
//! [`UPDATE_EVERY`] and, half way, a burst of half-sent big request heads hits the
//! ingress. Partition `sensors` is deliberately overloaded, so it sheds with 503.
//!
//! RSS and open descriptors are sampled once a second into
//! `target/soak/soak-<unix time>.csv`. Asserted: only the statuses each kind of request
//! may get, `/hello` p99 under load within [`HELLO_P99`], RSS at the end and
//! [`RECOVERY`] after the burst within [`rss_margin`] of RSS after warm-up, descriptors
//! at the end within [`FD_SLACK`] of the start, `/healthz` 200, and the counter equal to
//! the increments acknowledged.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CONFIG: &str = r#"
watch-interval = "200ms"
[device]
id = "edge-01"
[http]
max-connections = 1024
max-header-size = "256Ki"
[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
concurrency = 64
queue-timeout = "10s"
[[partition]]
id = "sensors"
cpu = 0.5
memory = "128Mi"
storage = "16Mi"
concurrency = 4
queue-timeout = "100ms"
"#;

/// Per-request info lines of 64 busy clients would pile up in this process's log copy.
const LOG: &str = "warn,cranelift=warn,wasmtime=warn";

const HELLO_ID: &str = "91919191-9191-4191-8191-919191919191";

/// How often the `hello` deployment gets a new greeting.
const UPDATE_EVERY: Duration = Duration::from_secs(10);
/// The longest an update may take to serve; the watcher polls every 200 ms.
const UPDATE_SWITCH: Duration = Duration::from_secs(30);
/// The hostile burst: connections, each holding a head cut off after this many bytes
/// of one header (under `max-header-size`, so the server has to buffer it all).
const BURST_CONNECTIONS: usize = 500;
const BURST_HEAD: usize = 200 << 10;
const BURST_HOLD: Duration = Duration::from_secs(2);
/// RSS must be back within the margin this long after the burst left.
const RECOVERY: Duration = Duration::from_secs(10);
/// `/hello` p99 under load, measured after warm-up over the whole run (updates and the
/// burst included). 64 closed-loop clients and the server share 2 cores: measured
/// 204-290 ms (p50 47-65 ms) with a debug binary and other builds running (load average
/// 5 to 9), so the bound leaves 2.5x for a busier machine.
const HELLO_P99: Duration = Duration::from_millis(750);
/// Descriptors the host may have open at the end beyond those at the start.
const FD_SLACK: usize = 4;
/// Each client stops after this many requests, whatever the run time.
const MAX_REQUESTS_PER_SECOND_PER_CLIENT: u64 = 5_000;

/// RSS may exceed the warm-up figure by a quarter or by 32 MiB, whichever is larger:
/// allocator arenas and caches settle over the first minutes, a leak does not.
fn rss_margin(baseline_kib: u64) -> u64 {
    (baseline_kib / 4).max(32 << 10)
}

/// What a load client asks for, and the statuses it may get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Hello,
    Counter,
    Sensor,
    MisbehaveOk,
    /// 20 ms of work per request: more than `sensors` can take, so it sheds.
    Busy,
    /// Spins until its 1 s deadline.
    Spin,
    /// Recurses until the stack traps.
    Trap,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Hello => "/hello",
            Kind::Counter => "/counter",
            Kind::Sensor => "/sensor",
            Kind::MisbehaveOk => "/bad/ok",
            Kind::Busy => "/bad/busy?ms=20",
            Kind::Spin => "/bad/spin",
            Kind::Trap => "/bad/stack",
        }
    }

    /// `apps` is never over its concurrency: its routes answer 200 only. `sensors`
    /// sheds any of its requests with 503.
    fn allowed(self) -> &'static [u16] {
        match self {
            Kind::Hello | Kind::Counter => &[200],
            Kind::Sensor | Kind::MisbehaveOk | Kind::Busy => &[200, 503],
            Kind::Spin => &[504, 503],
            Kind::Trap => &[500, 503],
        }
    }

    /// Pause between requests: the failing kinds log a warning each.
    fn pause(self) -> Duration {
        match self {
            Kind::Trap => Duration::from_millis(20),
            _ => Duration::ZERO,
        }
    }
}

/// 64 clients: `(kind, clients)`.
const MIX: [(Kind, usize); 7] = [
    (Kind::Hello, 28),
    (Kind::Counter, 12),
    (Kind::Sensor, 4),
    (Kind::MisbehaveOk, 6),
    (Kind::Busy, 10),
    (Kind::Spin, 2),
    (Kind::Trap, 2),
];

const PHASES: [&str; 6] = [
    "warm-up",
    "load",
    "burst",
    "recovery",
    "load-after",
    "drain",
];
const WARM_UP: usize = 0;
const LOAD: usize = 1;
const BURST: usize = 2;
const RECOVERING: usize = 3;
const LOAD_AFTER: usize = 4;
const DRAIN: usize = 5;

/// What the load threads and the sampler share.
struct Run {
    started: Instant,
    stop: AtomicBool,
    /// Latencies are kept from the end of warm-up on.
    measuring: AtomicBool,
    phase: AtomicUsize,
    requests: AtomicU64,
    shed: AtomicU64,
}

impl Run {
    fn at(&self, offset: Duration) {
        let wake = self.started + offset;
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }

    fn enter(&self, phase: usize) {
        self.phase.store(phase, Ordering::Relaxed);
    }
}

/// One client's account of the run.
#[derive(Default)]
struct Tally {
    by_status: BTreeMap<(Kind, u16), u64>,
    /// The first few answers outside [`Kind::allowed`] or out of version order.
    wrong: Vec<String>,
    hello_micros: Vec<u32>,
}

impl Tally {
    fn wrong(&mut self, what: String) {
        if self.wrong.len() < 10 {
            self.wrong.push(what);
        }
    }

    fn merge(&mut self, other: Tally) {
        for (key, n) in other.by_status {
            *self.by_status.entry(key).or_default() += n;
        }
        for what in other.wrong {
            self.wrong(what);
        }
        self.hello_micros.extend(other.hello_micros);
    }
}

/// The greeting version in a `/hello` answer (`v7, world!`).
fn hello_version(body: &str) -> Option<u32> {
    body.strip_suffix(", world!\n")?
        .strip_prefix('v')?
        .parse()
        .ok()
}

fn hello_yaml(version: u32) -> String {
    deployment(
        HELLO_ID,
        "hello",
        Some("edge-01/apps"),
        &[(
            "hello",
            wasmgate_examples::HELLO,
            "{trigger: {http: {route: /hello}}, limits: {memory: 16Mi}}",
        )],
        &[("greeting", &format!("v{version}"), "greeting", "hello")],
    )
}

fn call(agent: &ureq::Agent, url: &str) -> (u16, String) {
    match agent.get(url).call() {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(err) => (0, format!("request failed: {err}")),
    }
}

/// `base` is `http://ADDR` of the ingress (a [`Wasmgate`] is not shared with threads).
fn client(base: &str, kind: Kind, run: &Run, max_requests: u64) -> Tally {
    let agent = agent(Duration::from_secs(30));
    let url = format!("{base}{}", kind.path());
    let mut tally = Tally::default();
    let mut version = 0;
    for _ in 0..max_requests {
        if run.stop.load(Ordering::Relaxed) {
            break;
        }
        let asked = Instant::now();
        let (code, body) = call(&agent, &url);
        let took = asked.elapsed();
        run.requests.fetch_add(1, Ordering::Relaxed);
        if code == 503 {
            run.shed.fetch_add(1, Ordering::Relaxed);
        }
        *tally.by_status.entry((kind, code)).or_default() += 1;
        let at = run.started.elapsed();
        if !kind.allowed().contains(&code) {
            tally.wrong(format!("{kind:?} at {at:.1?}: {code} {body:?}"));
        }
        if kind == Kind::Hello && code == 200 {
            match hello_version(&body) {
                Some(v) if v >= version => version = v,
                _ => tally.wrong(format!("hello at {at:.1?}: {body:?} after v{version}")),
            }
            if run.measuring.load(Ordering::Relaxed) {
                tally
                    .hello_micros
                    .push(took.as_micros().try_into().unwrap_or(u32::MAX));
            }
        }
        std::thread::sleep(kind.pause());
    }
    tally
}

/// Rewrites `hello.yaml` every [`UPDATE_EVERY`] until `until`, each time waiting for the
/// new greeting to serve; how long each switch took, or what went wrong.
fn updater(sandbox: &Sandbox, base: &str, run: &Run, until: Duration) -> Vec<String> {
    let agent = agent(Duration::from_secs(30));
    let url = format!("{base}/hello");
    let mut report = Vec::new();
    let mut version = 0;
    loop {
        let next = UPDATE_EVERY * (version + 1);
        if next >= until {
            return report;
        }
        run.at(next);
        version += 1;
        sandbox.put("hello.yaml", &hello_yaml(version));
        let written = Instant::now();
        let outcome = loop {
            let (code, body) = call(&agent, &url);
            if code != 200 {
                break format!("v{version}: {code} {body:?} while switching");
            }
            if hello_version(&body) == Some(version) {
                break format!("v{version} serving after {:.2?}", written.elapsed());
            }
            if written.elapsed() > UPDATE_SWITCH {
                break format!("v{version}: still {body:?} after {UPDATE_SWITCH:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        report.push(outcome);
    }
}

/// One line of the curve.
struct Sample {
    at: Duration,
    phase: usize,
    rss_kib: u64,
    fds: usize,
}

/// Samples the host once a second until `done`, writing each row to `csv` as it goes
/// (so a failed long run still leaves its curve).
fn sampler(pid: u32, run: &Run, done: &AtomicBool, csv: &Mutex<std::fs::File>) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut next = Duration::ZERO;
    while !done.load(Ordering::Relaxed) {
        run.at(next);
        next += Duration::from_secs(1);
        let sample = Sample {
            at: run.started.elapsed(),
            phase: run.phase.load(Ordering::Relaxed),
            rss_kib: rss_kib(pid),
            fds: open_fds(pid),
        };
        let mut file = csv.lock().unwrap();
        writeln!(
            file,
            "{:.1},{},{},{},{},{}",
            sample.at.as_secs_f64(),
            PHASES[sample.phase],
            sample.rss_kib,
            sample.fds,
            run.requests.load(Ordering::Relaxed),
            run.shed.load(Ordering::Relaxed)
        )
        .unwrap();
        samples.push(sample);
    }
    samples
}

fn csv_path() -> PathBuf {
    // The binary is target/<profile>/wasmgate: the curve goes next to the profiles.
    let target = std::path::Path::new(BIN)
        .parent()
        .and_then(|p| p.parent())
        .expect("binary under target/<profile>/")
        .join("soak");
    std::fs::create_dir_all(&target).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    target.join(format!("soak-{}.csv", now.as_secs()))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn phase_summary(samples: &[Sample]) -> String {
    let mut lines = Vec::new();
    for (index, name) in PHASES.iter().enumerate() {
        let mut rss: Vec<u64> = samples
            .iter()
            .filter(|s| s.phase == index)
            .map(|s| s.rss_kib)
            .collect();
        if rss.is_empty() {
            continue;
        }
        rss.sort_unstable();
        lines.push(format!(
            "  {name:<10} RSS MiB min {:.1} / median {:.1} / max {:.1} ({} samples)",
            mib(rss[0]),
            mib(rss[rss.len() / 2]),
            mib(rss[rss.len() - 1]),
            rss.len()
        ));
    }
    lines.join("\n")
}

fn soak_seconds() -> u64 {
    let seconds = std::env::var("SOAK_SECONDS")
        .ok()
        .map(|s| s.parse().expect("SOAK_SECONDS: whole seconds"))
        .unwrap_or(60);
    assert!(
        seconds >= 30,
        "SOAK_SECONDS: at least 30 for the phases to fit"
    );
    seconds
}

fn start() -> (Sandbox, Wasmgate) {
    let sandbox = Sandbox::new();
    sandbox.put("hello.yaml", &hello_yaml(0));
    let in_partition =
        |file: &str, id: &str, name: &str, partition: &str, wasm: &str, ext: &str| {
            let device = format!("edge-01/{partition}");
            sandbox.put(
                file,
                &deployment(id, name, Some(&device), &[(name, wasm, ext)], &[]),
            );
        };
    in_partition(
        "counter.yaml",
        "92929292-9292-4292-8292-929292929292",
        "counter",
        "apps",
        wasmgate_examples::COUNTER,
        "{trigger: {http: {route: /counter}}, limits: {memory: 16Mi}}",
    );
    in_partition(
        "misbehave.yaml",
        "93939393-9393-4393-8393-939393939393",
        "misbehave",
        "sensors",
        wasmgate_examples::MISBEHAVE,
        "{trigger: {http: {route: /bad}}, limits: {memory: 16Mi, timeout: 1s}}",
    );
    in_partition(
        "sensor-filter.yaml",
        "94949494-9494-4494-8494-949494949494",
        "sensor-filter",
        "sensors",
        wasmgate_examples::SENSOR_FILTER,
        "{trigger: {http: {route: /sensor}, timer: {every: 500ms}}, limits: {memory: 16Mi, timeout: 2s}}",
    );
    let gate = sandbox.up_logging(CONFIG, LOG);
    gate.wait_status("four installed", |s| {
        let d = s["deployments"].as_array().unwrap();
        d.len() == 4 && d.iter().all(|d| d["state"] == "installed")
    });
    gate.wait_for("/hello", 200, "v0, world!");
    gate.wait_for("/sensor", 200, "average");
    assert_eq!(gate.get("/bad/ok"), (200, "ok\n".to_string()));
    (sandbox, gate)
}

fn counter_value(gate: &Wasmgate) -> u64 {
    let (code, body) = gate.get("/counter/peek");
    assert_eq!(code, 200, "{body}");
    body.trim()
        .strip_prefix("hits: ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected counter body {body:?}"))
}

/// Polls until `check` holds or `limit` passes; how long it took, if it held.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let since = Instant::now();
    loop {
        if check() {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn soak_serves_sheds_updates_and_returns_memory() {
    // This process holds the burst's client ends.
    wasmgate::ingress::raise_fd_limit();
    let seconds = soak_seconds();
    let length = Duration::from_secs(seconds);
    // RSS climbs for the first 20 to 60 s under load (arenas, caches, pool slots):
    // measured 117 to 124 MiB at 10 s, 131 to 136 MiB from 60 s on.
    let warm_up = Duration::from_secs((seconds / 4).clamp(5, 30));
    let burst_at = length / 2;
    let (sandbox, gate) = start();
    let pid = gate.pid();
    let counter_before = counter_value(&gate);
    let fds_start = open_fds(pid);
    let (base, ingress) = (gate.url(""), gate.addr);
    let path = csv_path();
    let csv = Mutex::new(std::fs::File::create(&path).unwrap());
    writeln!(
        csv.lock().unwrap(),
        "elapsed_s,phase,rss_kib,fds,requests,shed_503"
    )
    .unwrap();

    let run = Run {
        started: Instant::now(),
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        phase: AtomicUsize::new(WARM_UP),
        requests: AtomicU64::new(0),
        shed: AtomicU64::new(0),
    };
    let sampling_done = AtomicBool::new(false);
    let max_requests = MAX_REQUESTS_PER_SECOND_PER_CLIENT * seconds;

    let mut tally = Tally::default();
    let mut baseline = 0;
    let mut burst_peak = 0;
    let mut recovered = None;
    let mut rss_end = 0;
    let mut fds_loaded = 0;
    let (samples, updates) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| sampler(pid, &run, &sampling_done, &csv));
        let clients: Vec<_> = MIX
            .iter()
            .flat_map(|&(kind, n)| std::iter::repeat_n(kind, n))
            .map(|kind| {
                let (base, run) = (&base, &run);
                scope.spawn(move || client(base, kind, run, max_requests))
            })
            .collect();
        let updater = scope.spawn(|| updater(&sandbox, &base, &run, length));

        run.at(warm_up);
        baseline = rss_kib(pid);
        fds_loaded = open_fds(pid);
        run.measuring.store(true, Ordering::Relaxed);
        run.enter(LOAD);

        run.at(burst_at);
        run.enter(BURST);
        let heads = half_sent_heads(ingress, BURST_CONNECTIONS, BURST_HEAD);
        std::thread::sleep(BURST_HOLD);
        burst_peak = rss_kib(pid);
        drop(heads);
        run.enter(RECOVERING);
        let bound = baseline + rss_margin(baseline);
        recovered = within(RECOVERY, || rss_kib(pid) <= bound);
        run.enter(LOAD_AFTER);

        run.at(length);
        rss_end = rss_kib(pid);
        run.enter(DRAIN);
        run.stop.store(true, Ordering::Relaxed);
        for c in clients {
            tally.merge(c.join().unwrap());
        }
        let updates = updater.join().unwrap();
        // A closed client connection leaves the host's table when it reads the FIN.
        within(Duration::from_secs(5), || {
            open_fds(pid) <= fds_start + FD_SLACK
        });
        sampling_done.store(true, Ordering::Relaxed);
        (sampler.join().unwrap(), updates)
    });
    let fds_end = open_fds(pid);
    let (health, health_body) = gate.admin_get("/healthz");
    let counter_after = counter_value(&gate);
    let acknowledged = tally
        .by_status
        .get(&(Kind::Counter, 200))
        .copied()
        .unwrap_or(0);

    let mut hello = std::mem::take(&mut tally.hello_micros);
    hello.sort_unstable();
    let hello_p99 = Duration::from_micros(p99(&hello).into());
    let margin = rss_margin(baseline);
    let total: u64 = tally.by_status.values().sum();
    println!(
        "soak: {seconds} s, {total} requests, curve in {}",
        path.display()
    );
    println!("{}", phase_summary(&samples));
    println!(
        "  RSS MiB: after warm-up {:.1}, bound {:.1} (+{:.1}), burst peak {:.1}, back within bound after {recovered:.2?}, end of load {:.1}",
        mib(baseline),
        mib(baseline + margin),
        mib(margin),
        mib(burst_peak),
        mib(rss_end)
    );
    println!("  fds: start {fds_start} (idle), under load {fds_loaded}, end {fds_end} (idle)");
    println!(
        "  /hello after warm-up: {} requests, p50 {:.2?}, p99 {hello_p99:.2?}, max {:.2?}",
        hello.len(),
        Duration::from_micros(hello[hello.len() / 2].into()),
        Duration::from_micros(hello[hello.len() - 1].into())
    );
    for ((kind, code), n) in &tally.by_status {
        println!("  {kind:?} {code}: {n}");
    }
    for update in &updates {
        println!("  update: {update}");
    }
    println!("  counter: {acknowledged} increments acknowledged, value {counter_after} (was {counter_before})");

    assert!(
        tally.wrong.is_empty(),
        "unexpected answers: {:#?}{}",
        tally.wrong,
        gate.diagnostics()
    );
    assert!(
        updates.len() as u64 >= seconds / UPDATE_EVERY.as_secs() - 1
            && updates.iter().all(|u| u.contains("serving after")),
        "updates: {updates:#?}"
    );
    let shed: u64 = tally
        .by_status
        .iter()
        .filter(|((_, code), _)| *code == 503)
        .map(|(_, n)| n)
        .sum();
    assert!(shed > 0, "the overload share never shed: no 503 at all");
    assert!(
        hello.len() >= 1000,
        "only {} /hello requests measured",
        hello.len()
    );
    assert!(
        hello_p99 <= HELLO_P99,
        "/hello p99 {hello_p99:?} over {HELLO_P99:?}"
    );
    assert!(
        recovered.is_some(),
        "RSS not back within {:.1} MiB of {:.1} MiB {RECOVERY:?} after the burst",
        mib(margin),
        mib(baseline)
    );
    assert!(
        rss_end <= baseline + margin,
        "RSS {:.1} MiB at the end, {:.1} MiB after warm-up",
        mib(rss_end),
        mib(baseline)
    );
    assert!(
        fds_end <= fds_start + FD_SLACK,
        "{fds_end} descriptors open at the end, {fds_start} at the start"
    );
    assert_eq!(health, 200, "{health_body}");
    assert!(acknowledged > 0, "no increment acknowledged");
    assert_eq!(
        counter_after,
        counter_before + acknowledged,
        "acknowledged increments are missing"
    );
}
