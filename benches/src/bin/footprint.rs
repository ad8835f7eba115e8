//! Footprint and deploy latency of the real `wasmgate` binary, measured from outside:
//!
//! - binary size, as built and stripped;
//! - idle RSS and reserved virtual address space of `wasmgate up` (from `/proc/PID/status`)
//!   with 0, 10 and 100 deployments of `plain-hello`, before any traffic and after one
//!   request to each of the 10;
//! - deploy-to-first-response: process start of `wasmgate run COMPONENT` to the first `200`,
//!   with a cold AOT cache (fresh state directory) and after a restart (warm cache); and a
//!   new deployment dropped into the folder of a running `wasmgate up`.
//!
//! `cargo run --release -p wasmgate-benches --bin footprint -- [--wasmgate PATH] [--runs N]`
//! (Linux only: reads `/proc`). Prints Markdown tables: median and min..max over the runs.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};
use wasmgate_benches::{deployment_yaml, pool_sizing};

/// A small board: two partitions, 384 MiB of instance memory in all.
const BOARD_CONFIG: &str = r#"
watch-interval = "50ms"
[device]
id = "bench"
[[partition]]
id = "p0"
cpu = 1.0
memory = "256Mi"
storage = "64Mi"
[[partition]]
id = "p1"
cpu = 0.5
memory = "128Mi"
storage = "32Mi"
"#;
const PARTITIONS: usize = 2;
/// Time for the process to settle before reading its memory.
const SETTLE: Duration = Duration::from_millis(1500);

struct Args {
    wasmgate: PathBuf,
    runs: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ is in the workspace")
        .to_owned();
    let mut args = Args {
        wasmgate: workspace.join("target/release/wasmgate"),
        runs: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--wasmgate" => args.wasmgate = it.next().context("--wasmgate PATH")?.into(),
            "--runs" => args.runs = it.next().context("--runs N")?.parse()?,
            other => {
                bail!("unknown argument {other:?}; usage: footprint [--wasmgate PATH] [--runs N]")
            }
        }
    }
    if !args.wasmgate.is_file() {
        bail!(
            "{} does not exist; build it with `cargo build --release -p wasmgate`",
            args.wasmgate.display()
        );
    }
    Ok(args)
}

/// A running `wasmgate` whose stdout lines arrive on a channel.
struct Process {
    child: Child,
    lines: Receiver<String>,
    addr: SocketAddr,
}

impl Process {
    fn start(bin: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(args)
            .env("WASMGATE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = Self {
            child,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = process.wait_line(|l| l.starts_with("wasmgate: listening on http://"))?;
        process.addr = line["wasmgate: listening on http://".len()..].parse()?;
        Ok(process)
    }

    fn wait_line(&mut self, want: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("wasmgate did not print the expected line in time"),
            }
        }
    }

    /// Waits until `wasmgate` announces that it serves every route in `routes`.
    fn wait_serving(&mut self, routes: &[String]) -> anyhow::Result<()> {
        let mut missing: std::collections::BTreeSet<String> = routes
            .iter()
            .map(|r| format!("wasmgate: serving http://{}{r} ", self.addr))
            .collect();
        while !missing.is_empty() {
            let line =
                self.wait_line(|l| l.starts_with("wasmgate: serving") || l.contains("FAILED"))?;
            if line.contains("FAILED") {
                bail!("{line}");
            }
            missing.retain(|m| !line.starts_with(m.as_str()));
        }
        Ok(())
    }

    fn status(&self) -> anyhow::Result<ProcStatus> {
        ProcStatus::read(self.child.id())
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `/proc/PID/status` fields of interest, in KiB.
#[derive(Debug, Clone, Copy)]
struct ProcStatus {
    rss: u64,
    hwm: u64,
    vm_size: u64,
}

impl ProcStatus {
    fn read(pid: u32) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Self {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
            vm_size: field("VmSize:")?,
        })
    }
}

/// `GET path` on a fresh connection; the status code, or `None` if nothing answered.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_nodelay(true).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let head = std::str::from_utf8(response.get(..12)?).ok()?;
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Polls `path` every 0.2 ms until it answers `200`; the time since `since`.
fn first_ok(addr: SocketAddr, path: &str, since: Instant) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(60);
    loop {
        if http_status(addr, path) == Some(200) {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("no 200 from {addr}{path} within 60 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Median and range of `values`.
fn summary(values: &mut [f64], unit: &str, precision: usize) -> String {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    format!(
        "{median:.precision$} {unit} ({:.precision$}..{:.precision$}, n={n})",
        values[0],
        values[n - 1]
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn binary_size(bin: &Path) -> anyhow::Result<()> {
    let size = std::fs::metadata(bin)?.len();
    println!("## Binary\n");
    println!("| what | bytes | MiB |\n| --- | ---: | ---: |");
    println!(
        "| `{}` as built | {size} | {:.2} |",
        bin.display(),
        size as f64 / 1048576.0
    );
    let stripped = std::env::temp_dir().join(format!("wasmgate-stripped-{}", std::process::id()));
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(bin)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let size = std::fs::metadata(&stripped)?.len();
        println!(
            "| stripped (`strip`) | {size} | {:.2} |",
            size as f64 / 1048576.0
        );
        let _ = std::fs::remove_file(&stripped);
    } else {
        println!("| stripped | (no `strip` on PATH) | |");
    }
    println!();
    Ok(())
}

#[derive(Default)]
struct Idle {
    rss0: Vec<f64>,
    vm0: Vec<f64>,
    rss10_compiled: Vec<f64>,
    rss10: Vec<f64>,
    rss10_used: Vec<f64>,
    rss100: Vec<f64>,
    vm100: Vec<f64>,
    per_deployment: Vec<f64>,
    hwm: Vec<f64>,
}

fn start_up(bin: &Path, dir: &Path) -> anyhow::Result<Process> {
    let config = dir.join("wasmgate.toml");
    std::fs::write(&config, BOARD_CONFIG)?;
    let deployments = dir.join("deployments");
    std::fs::create_dir_all(&deployments)?;
    Process::start(
        bin,
        &[
            "up",
            "--config",
            config.to_str().unwrap(),
            "--deployments",
            deployments.to_str().unwrap(),
            "--state-dir",
            dir.join("state").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    )
}

/// Writes deployments `range` atomically and waits until `0..range.end` are all served.
fn deploy(
    process: &mut Process,
    dir: &Path,
    component: &Path,
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let deployments = dir.join("deployments");
    for i in range.clone() {
        let tmp = deployments.join(format!(".d{i:04}.tmp"));
        std::fs::write(&tmp, deployment_yaml(i, PARTITIONS, component, "Hello"))?;
        std::fs::rename(&tmp, deployments.join(format!("d{i:04}.yaml")))?;
    }
    serving(process, range.end)
}

fn serving(process: &mut Process, count: usize) -> anyhow::Result<()> {
    let routes: Vec<String> = (0..count).map(|i| format!("/d{i}")).collect();
    process.wait_serving(&routes)
}

/// One process lifetime that compiles (fresh state), then one that restarts on the same
/// state directory with the AOT cache warm, as a device does after a reboot.
fn idle_run(bin: &Path, component: &Path, idle: &mut Idle) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut process = start_up(bin, dir.path())?;
    std::thread::sleep(SETTLE);
    let empty = process.status()?;
    idle.rss0.push(mib(empty.rss));
    idle.vm0.push(mib(empty.vm_size) / 1024.0);
    deploy(&mut process, dir.path(), component, 0..10)?;
    std::thread::sleep(SETTLE);
    idle.rss10_compiled.push(mib(process.status()?.rss));
    process.stop();

    let mut process = start_up(bin, dir.path())?;
    serving(&mut process, 10)?;
    std::thread::sleep(SETTLE);
    let ten = process.status()?;
    idle.rss10.push(mib(ten.rss));
    for i in 0..10 {
        let status = http_status(process.addr, &format!("/d{i}"));
        if status != Some(200) {
            bail!("/d{i} answered {status:?}");
        }
    }
    std::thread::sleep(SETTLE);
    idle.rss10_used.push(mib(process.status()?.rss));
    deploy(&mut process, dir.path(), component, 10..100)?;
    std::thread::sleep(SETTLE);
    let hundred = process.status()?;
    idle.rss100.push(mib(hundred.rss));
    idle.vm100.push(mib(hundred.vm_size) / 1024.0);
    idle.per_deployment
        .push((hundred.rss as f64 - ten.rss as f64) / 90.0);
    idle.hwm.push(mib(hundred.hwm));
    process.stop();
    Ok(())
}

fn deploy_latency(
    bin: &Path,
    component: &str,
    path: &str,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        for times in [&mut cold, &mut warm] {
            let addr = free_port()?;
            let start = Instant::now();
            let mut child = Command::new(bin)
                .args([
                    "run",
                    component,
                    "--listen",
                    &addr.to_string(),
                    "--state-dir",
                ])
                .arg(&state)
                .env("WASMGATE_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let elapsed = first_ok(addr, path, start);
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
            times.push(elapsed?.as_secs_f64() * 1000.0);
        }
    }
    Ok((cold, warm))
}

/// A new deployment written into the folder of a running `wasmgate up` (watch interval
/// 50 ms), until its route answers; fresh state directory, so the AOT cache is cold.
fn folder_deploy(
    bin: &Path,
    component: &Path,
    path_suffix: &str,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        let process = start_up(bin, dir.path())?;
        std::thread::sleep(Duration::from_millis(300));
        let deployments = dir.path().join("deployments");
        let tmp = deployments.join(".new.tmp");
        std::fs::write(&tmp, deployment_yaml(0, PARTITIONS, component, "Hello"))?;
        let start = Instant::now();
        std::fs::rename(&tmp, deployments.join("new.yaml"))?;
        let elapsed = first_ok(process.addr, &format!("/d0{path_suffix}"), start);
        process.stop();
        times.push(elapsed?.as_secs_f64() * 1000.0);
    }
    Ok(times)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let bin = &args.wasmgate;
    binary_size(bin)?;

    let config = wasmgate::config::Config::parse(BOARD_CONFIG)?;
    let sizing = pool_sizing(&config.partitions);
    let plain = Path::new(wasmgate_benches::PLAIN_HELLO);
    let misbehave = Path::new(wasmgate_examples::MISBEHAVE);

    let mut idle = Idle::default();
    for _ in 0..args.runs {
        idle_run(bin, plain, &mut idle)?;
    }
    println!("## Idle `wasmgate up` (two partitions, 256 + 128 MiB; plain-hello deployments)\n");
    println!(
        "Instance pool from the partition budgets: {} slots x 4 memories x {} MiB = {:.1} GiB of address space.\n",
        sizing.instances,
        sizing.max_instance_memory >> 20,
        sizing.reserved_bytes() as f64 / (1u64 << 30) as f64
    );
    println!("| what | median (min..max, runs) |\n| --- | --- |");
    println!(
        "| RSS, 0 deployments | {} |",
        summary(&mut idle.rss0, "MiB", 1)
    );
    println!(
        "| RSS, 10 deployments just compiled in this process (cold AOT cache) | {} |",
        summary(&mut idle.rss10_compiled, "MiB", 1)
    );
    println!(
        "| RSS, 10 deployments after a restart (warm AOT cache), no traffic yet | {} |",
        summary(&mut idle.rss10, "MiB", 1)
    );
    println!(
        "| RSS, the same after one request to each | {} |",
        summary(&mut idle.rss10_used, "MiB", 1)
    );
    println!(
        "| RSS, 100 deployments (90 more added after the restart) | {} |",
        summary(&mut idle.rss100, "MiB", 1)
    );
    println!(
        "| RSS per additional idle deployment (10 -> 100) | {} |",
        summary(&mut idle.per_deployment, "KiB", 0)
    );
    println!(
        "| peak RSS (VmHWM) of the restarted process | {} |",
        summary(&mut idle.hwm, "MiB", 1)
    );
    println!(
        "| virtual address space (VmSize), 0 deployments | {} |",
        summary(&mut idle.vm0, "GiB", 2)
    );
    println!(
        "| virtual address space (VmSize), 100 deployments | {} |",
        summary(&mut idle.vm100, "GiB", 2)
    );
    println!();

    println!("## Deploy to first response\n");
    println!(
        "| component | size | cold AOT cache | warm cache (restart) |\n| --- | ---: | --- | --- |"
    );
    for (name, path, route) in [("misbehave", misbehave, "/ok"), ("plain-hello", plain, "/")] {
        let size = std::fs::metadata(path)?.len();
        let (mut cold, mut warm) = deploy_latency(bin, path.to_str().unwrap(), route, args.runs)?;
        println!(
            "| `wasmgate run {name}.wasm`, process start to first 200 | {:.1} KB | {} | {} |",
            size as f64 / 1000.0,
            summary(&mut cold, "ms", 1),
            summary(&mut warm, "ms", 1)
        );
    }
    let mut folder = folder_deploy(bin, misbehave, "/ok", args.runs)?;
    println!(
        "| misbehave YAML dropped into a running `wasmgate up` (watch interval 50 ms) | {:.1} KB | {} | |",
        std::fs::metadata(misbehave)?.len() as f64 / 1000.0,
        summary(&mut folder, "ms", 1)
    );
    Ok(())
}
