//! Test harness: runs the real `wasmgate` binary on loopback with a private state
//! directory and talks to it over HTTP.

#![allow(dead_code)]

pub mod pki;
pub mod registry;
pub mod wfm;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_wasmgate");

/// `WASMGATE_LOG` of the binary under test unless a test asks for another filter.
const DEFAULT_LOG: &str = "info,cranelift=warn,wasmtime=warn";

/// A scratch area: config, deployments folder and state directory.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("deployments")).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn deployments(&self) -> PathBuf {
        self.path().join("deployments")
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn config(&self, toml: &str) -> PathBuf {
        let path = self.path().join("wasmgate.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Writes a deployment atomically, so the watcher never sees half a file.
    pub fn put(&self, file: &str, yaml: &str) {
        let tmp = self.deployments().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.deployments().join(file)).unwrap();
    }

    pub fn delete(&self, file: &str) {
        std::fs::remove_file(self.deployments().join(file)).unwrap();
    }

    /// Starts `wasmgate up` on this sandbox with ephemeral ports.
    pub fn up(&self, config_toml: &str) -> Wasmgate {
        self.up_with(Command::new(BIN), config_toml)
    }

    /// [`Sandbox::up`] with a prepared command for the binary (e.g. resource limits).
    pub fn up_with(&self, command: Command, config_toml: &str) -> Wasmgate {
        self.up_spawn(command, config_toml, DEFAULT_LOG)
    }

    /// [`Sandbox::up`] with `filter` as `WASMGATE_LOG` (see [`Wasmgate::spawn_logging`]).
    pub fn up_logging(&self, config_toml: &str, filter: &str) -> Wasmgate {
        self.up_spawn(Command::new(BIN), config_toml, filter)
    }

    fn up_spawn(&self, command: Command, config_toml: &str, filter: &str) -> Wasmgate {
        let config = self.config(config_toml);
        Wasmgate::spawn_logging(
            command,
            &[
                "up",
                "--config",
                config.to_str().unwrap(),
                "--deployments",
                self.deployments().to_str().unwrap(),
                "--state-dir",
                self.state().to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ],
            filter,
        )
    }
}

/// `wasmgate up` with one deployment of one component `(name, wasm, extensions)` in
/// one partition `apps` (device `edge-01`), and `http` as the `[http]` section's lines.
pub fn serve_one(component: (&str, &str, &str), http: &str) -> (Sandbox, Wasmgate) {
    let sandbox = Sandbox::new();
    let (name, wasm, extensions) = component;
    sandbox.put(
        &format!("{name}.yaml"),
        &deployment(
            "11111111-1111-4111-8111-111111111111",
            name,
            None,
            &[(name, wasm, extensions)],
            &[],
        ),
    );
    let gate = sandbox.up(&format!(
        "[device]\nid = \"edge-01\"\n[http]\n{http}\n[[partition]]\nid = \"apps\"\ncpu = 1.0\nmemory = \"256Mi\"\nstorage = \"16Mi\"\n"
    ));
    (sandbox, gate)
}

/// Two partitions: `apps` (1 core) and `sensors` (0.5 core).
pub const TWO_PARTITIONS: &str = r#"
[device]
id = "edge-01"
[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
[[partition]]
id = "sensors"
cpu = 0.5
memory = "128Mi"
storage = "16Mi"
"#;

pub struct Wasmgate {
    child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    lines: Receiver<String>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

fn parse_addr(line: &str, marker: &str) -> Option<SocketAddr> {
    line.strip_prefix(marker)?.trim().parse().ok()
}

impl Wasmgate {
    pub fn start(args: &[&str]) -> Self {
        Self::spawn(Command::new(BIN), args)
    }

    /// Starts `command` (the binary, prepared by the caller) with `args`.
    pub fn spawn(command: Command, args: &[&str]) -> Self {
        Self::spawn_logging(command, args, DEFAULT_LOG)
    }

    /// [`Wasmgate::spawn`] with `filter` as `WASMGATE_LOG`: long runs keep every log line
    /// in this process, so they log less than the per-request `info` lines. An empty
    /// `filter` leaves `WASMGATE_LOG` unset (the configuration's `log-filter` decides).
    pub fn spawn_logging(mut command: Command, args: &[&str], filter: &str) -> Self {
        if filter.is_empty() {
            command.env_remove("WASMGATE_LOG");
        } else {
            command.env("WASMGATE_LOG", filter);
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting wasmgate");
        let (tx, lines) = channel();
        let stdout_log = Arc::new(Mutex::new(Vec::new()));
        let stderr_log = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let log = stdout_log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let err = child.stderr.take().unwrap();
        let log = stderr_log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        let mut gate = Wasmgate {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            lines,
            stdout: stdout_log,
            stderr: stderr_log,
        };
        let has_admin = args.contains(&"--admin");
        let deadline = Instant::now() + Duration::from_secs(60);
        while gate.addr.port() == 0 || (has_admin && gate.admin.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match gate.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = parse_addr(&line, "wasmgate: listening on http://") {
                        gate.addr = addr;
                    }
                    if let Some(addr) = parse_addr(&line, "wasmgate: admin on http://") {
                        gate.admin = Some(addr);
                    }
                }
                Err(_) => panic!("wasmgate did not start: {}", gate.diagnostics()),
            }
        }
        gate
    }

    pub fn diagnostics(&self) -> String {
        format!(
            "\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.url(path))
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(&format!(
            "http://{}{path}",
            self.admin.expect("admin listener")
        ))
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the reconciler finished a pass that satisfies `check`.
    pub fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let status = self.status();
            if status["reconciled"] == true && check(&status) {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last status: {status:#}{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `path` answers `code` with a body containing `needle`.
    pub fn wait_for(&self, path: &str, code: u16, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (got, body) = self.get(path);
            if got == code && body.contains(needle) {
                return body;
            }
            if Instant::now() > deadline {
                panic!(
                    "{path}: still {got} {body:?}, wanted {code} with {needle:?}{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`"TERM"`, `"INT"`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        unsafe_kill(self.child.id(), signal);
    }

    /// Waits up to `timeout` for the process to exit: its status, or `None` if it runs on.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process as an operator would (SIGTERM) and waits for it.
    pub fn stop(mut self) {
        unsafe_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Wasmgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut response) => {
            let code = response.status().as_u16();
            let body = response.body_mut().read_to_string().unwrap_or_default();
            (code, body)
        }
        Err(err) => (0, format!("request failed: {err}")),
    }
}

/// A Margo ApplicationDeployment with one component per `(name, wasm, extensions)`;
/// `params` are `(parameter, value, pointer, component)`.
pub fn deployment(
    id: &str,
    name: &str,
    device_id: Option<&str>,
    components: &[(&str, &str, &str)],
    params: &[(&str, &str, &str, &str)],
) -> String {
    let mut yaml = format!("id: {id}\nmetadata:\n  name: {name}\n  namespace: tests\n");
    if let Some(device) = device_id {
        yaml.push_str(&format!("  deviceId: {device}\n"));
    }
    yaml.push_str(&format!(
        "spec:\n  applicationId: {name}\n  deploymentProfile:\n    type: custom\n    components:\n"
    ));
    for (component, wasm, extensions) in components {
        yaml.push_str(&format!(
            "      - name: {component}\n        properties:\n          repository: {wasm}\n          revision: \"0.1.0\"\n        x-wasmgate-extensions: {extensions}\n"
        ));
    }
    if !params.is_empty() {
        yaml.push_str("  parameters:\n");
        for (param, value, pointer, component) in params {
            yaml.push_str(&format!(
                "    {param}:\n      value: {value}\n      targets:\n        - pointer: {pointer}\n          components: [{component}]\n"
            ));
        }
    }
    yaml
}

/// CPU seconds (user + system) the process has used, from `/proc`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// File descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `count` connections to `addr`, each having sent a request head cut off inside a
/// header value after `pad` bytes of it: the server must buffer what it got and wait.
pub fn half_sent_heads(addr: SocketAddr, count: usize, pad: usize) -> Vec<TcpStream> {
    let pad = vec![b'a'; pad];
    (0..count)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect to the ingress");
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: edge\r\nX-Pad: ")
                .unwrap();
            s.write_all(&pad).unwrap();
            s
        })
        .collect()
}

/// A client that hands every status back instead of failing on 4xx/5xx.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// The 99th percentile of `sorted` (nearest rank).
pub fn p99<T: Copy>(sorted: &[T]) -> T {
    let rank = (sorted.len() * 99).div_ceil(100).max(1);
    sorted[rank - 1]
}
