//! `wasmgate status`: reads the running host's `/status` document from its admin
//! listener and shows it as short tables, or passes it through for scripts (`--json`).
//!
//! The exit status is the verdict, so a health check or a script needs no JSON parsing:
//! [`EXIT_OK`], [`EXIT_FAILED`], [`EXIT_UNREACHABLE`].

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Everything is well: no deployment failed, and with a WFM, it is reachable and
/// accepted every capabilities report.
pub const EXIT_OK: u8 = 0;
/// Something failed: a deployment or component is `failed`, a capabilities report
/// was refused, or the last exchange with the WFM failed.
pub const EXIT_FAILED: u8 = 1;
/// No status could be read: nothing listens, no answer in time, not a status document,
/// or the configuration names no admin listener. (clap's usage errors are also 2.)
pub const EXIT_UNREACHABLE: u8 = 2;

/// Where `wasmgate status` looks without `--admin` or `--config`: the admin address of
/// the bundled example configuration (the host has no admin listener by default).
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);

/// A status document is a few KiB per deployment; this bounds what a wrong peer can
/// make the command hold.
const MAX_DOCUMENT: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusCmdError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{path} has no [http] admin address, so that host runs no admin listener; set one there (and restart the host) or pass --admin")]
    NoAdmin { path: PathBuf },
    #[error("cannot reach the admin listener at {addr}: {source} (is `wasmgate up` running with this [http] admin address?)")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin listener at {addr} did not answer within {}s", timeout.as_secs_f64())]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP exchange with the admin listener at {addr} failed: {source}")]
    Exchange {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the admin listener at {addr} answered /status with HTTP {status}: {body}")]
    Http {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    #[error("{addr}/status is not a wasmgate status document: {source}")]
    Document {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
}

/// `--admin`, else the config file's `[http] admin`, else [`DEFAULT_ADMIN`].
pub fn admin_address(
    flag: Option<SocketAddr>,
    config: Option<&Path>,
) -> Result<SocketAddr, StatusCmdError> {
    if let Some(addr) = flag {
        return Ok(addr);
    }
    match config {
        Some(path) => crate::config::Config::load(path)?
            .http
            .admin
            .ok_or_else(|| StatusCmdError::NoAdmin {
                path: path.to_owned(),
            }),
        None => Ok(DEFAULT_ADMIN),
    }
}

/// A listener bound to the unspecified address is reached on loopback.
fn dial_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// `GET /status` over one HTTP/1.1 connection: the raw document and its parsed view.
pub async fn fetch(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Bytes, StatusReport), StatusCmdError> {
    let addr = dial_address(addr);
    let body = tokio::time::timeout(timeout, get_status(addr))
        .await
        .map_err(|_| StatusCmdError::Timeout { addr, timeout })??;
    let report = serde_json::from_slice(&body)
        .map_err(|source| StatusCmdError::Document { addr, source })?;
    Ok((body, report))
}

async fn get_status(addr: SocketAddr) -> Result<Bytes, StatusCmdError> {
    let exchange = |source: Box<dyn std::error::Error + Send + Sync>| StatusCmdError::Exchange {
        addr,
        source,
    };
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| StatusCmdError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| exchange(e.into()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    // The admin listener answers only IP literals (and listed names) in `Host`.
    let request = http::Request::get("/status")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| exchange(e.into()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| exchange(e.into()))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map_err(exchange)?
        .to_bytes();
    driver.abort();
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
        return Err(StatusCmdError::Http {
            addr,
            status,
            body: clean(text.trim()),
        });
    }
    Ok(body)
}

/// The parts of the `/status` document the command reads. Every field has a default,
/// so a host of another version still shows what it has.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StatusReport {
    pub version: Option<String>,
    pub device_id: String,
    pub reconciled: bool,
    pub generation: u64,
    pub deployments: Vec<DeploymentView>,
    pub partitions: Vec<PartitionView>,
    pub wfm: Option<WfmView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DeploymentView {
    pub deployment_id: Option<String>,
    pub name: Option<String>,
    pub source: String,
    pub state: String,
    pub device_id: Option<String>,
    pub error: Option<ErrorView>,
    pub components: Vec<ComponentView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ComponentView {
    pub name: String,
    pub state: String,
    pub error: Option<ErrorView>,
    pub revision: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PartitionView {
    pub device_id: String,
    pub cpu: f64,
    pub memory: MemoryView,
    pub storage: StorageView,
    pub concurrency: ConcurrencyView,
    pub throttled_seconds: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MemoryView {
    pub limit: u64,
    pub used: u64,
    pub instance_limit: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StorageView {
    pub quota: u64,
    pub used: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConcurrencyView {
    pub limit: u32,
    pub in_use: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WfmView {
    pub profile: String,
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_sync: Option<u64>,
    pub accepted_manifest_version: u64,
    pub outbox_depth: usize,
    pub targets: Vec<TargetView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TargetView {
    pub device_id: String,
    pub state: String,
    pub status: Option<u16>,
    pub problem_type: Option<String>,
    pub detail: Option<String>,
    pub failures: u32,
    pub retry_in_seconds: Option<u64>,
}

impl DeploymentView {
    fn label(&self) -> &str {
        self.name
            .as_deref()
            .or(self.deployment_id.as_deref())
            .unwrap_or(&self.source)
    }
}

impl StatusReport {
    /// Everything that makes the exit status [`EXIT_FAILED`], one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for d in &self.deployments {
            let where_ = if d.source.is_empty() || d.label() == d.source {
                String::new()
            } else {
                format!(" ({})", d.source)
            };
            if d.state == "failed" {
                let why = d
                    .error
                    .as_ref()
                    .map(|e| format!(": [{}] {}", e.code, e.message))
                    .unwrap_or_default();
                problems.push(format!("deployment {}{where_} failed{why}", d.label()));
            }
            for c in &d.components {
                // The deployment's error usually repeats the component's; name it once.
                let repeated = d.error.as_ref().is_some_and(|e| {
                    c.error
                        .as_ref()
                        .is_some_and(|c| c.code == e.code && c.message == e.message)
                });
                if let Some(e) = c.error.as_ref().filter(|_| !repeated) {
                    problems.push(format!(
                        "component {} of {}: [{}] {}",
                        c.name,
                        d.label(),
                        e.code,
                        e.message
                    ));
                }
            }
        }
        if let Some(wfm) = &self.wfm {
            if let Some(err) = &wfm.last_error {
                problems.push(format!("WFM: the last sync round failed: {err}"));
            } else if !wfm.connected {
                problems.push("WFM: not connected".to_owned());
            }
            for t in wfm.targets.iter().filter(|t| t.state == "refused") {
                let status = t.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
                let detail = t
                    .detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                problems.push(format!(
                    "WFM refused the capabilities of {}{status}{detail}",
                    t.device_id
                ));
            }
        }
        problems
    }

    pub fn exit_code(&self) -> u8 {
        if self.problems().is_empty() {
            EXIT_OK
        } else {
            EXIT_FAILED
        }
    }

    /// The human view; `now` dates the last WFM sync.
    pub fn render(&self, now: SystemTime) -> String {
        let mut out = String::new();
        let version = self
            .version
            .as_deref()
            .map(|v| format!("wasmgate {v}"))
            .unwrap_or_else(|| "wasmgate".into());
        let pass = if self.reconciled {
            format!("reconciled (pass {})", self.generation)
        } else {
            "reconciling".to_owned()
        };
        let _ = writeln!(out, "{version} on {}: {pass}", clean(&self.device_id));

        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .partitions
            .iter()
            .map(|p| {
                vec![
                    clean(&p.device_id),
                    format!("{:.2}", p.cpu),
                    format!("{:.2}s", p.throttled_seconds),
                    format!("{} / {}", bytes(p.memory.used), bytes(p.memory.limit)),
                    p.memory
                        .instance_limit
                        .map(bytes)
                        .unwrap_or_else(|| "-".into()),
                    format!("{} / {}", p.concurrency.in_use, p.concurrency.limit),
                    format!("{} / {}", bytes(p.storage.used), bytes(p.storage.quota)),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "PARTITION",
                "CPU",
                "THROTTLED",
                "MEMORY",
                "PER-INSTANCE",
                "INSTANCES",
                "STORAGE",
            ],
            &rows,
        );

        out.push('\n');
        let mut rows = Vec::new();
        for d in &self.deployments {
            let first = vec![
                clean(d.label()),
                d.state.clone(),
                d.device_id
                    .as_deref()
                    .map(clean)
                    .unwrap_or_else(|| "-".into()),
            ];
            if d.components.is_empty() {
                rows.push([first, vec!["-".into(), "-".into(), "-".into()]].concat());
                continue;
            }
            for (i, c) in d.components.iter().enumerate() {
                let lead = if i == 0 {
                    first.clone()
                } else {
                    vec![String::new(); first.len()]
                };
                rows.push(
                    [
                        lead,
                        vec![
                            clean(&c.name),
                            c.revision
                                .as_deref()
                                .map(clean)
                                .unwrap_or_else(|| "-".into()),
                            c.digest
                                .as_deref()
                                .map(short_digest)
                                .unwrap_or_else(|| "-".into()),
                        ],
                    ]
                    .concat(),
                );
            }
        }
        if rows.is_empty() {
            out.push_str("no deployments\n");
        } else {
            table(
                &mut out,
                &[
                    "DEPLOYMENT",
                    "STATE",
                    "TARGET",
                    "COMPONENT",
                    "REVISION",
                    "DIGEST",
                ],
                &rows,
            );
        }

        out.push('\n');
        match &self.wfm {
            None => out.push_str("WFM: none (local mode)\n"),
            Some(wfm) => {
                let sync = match wfm.last_sync {
                    Some(at) => {
                        let now = now
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0);
                        format!("last sync {}s ago", now.saturating_sub(at))
                    }
                    None => "never synced".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "WFM ({}): {}, {sync}, manifest version {}, outbox {}",
                    clean(&wfm.profile),
                    if wfm.connected {
                        "connected"
                    } else {
                        "not connected"
                    },
                    wfm.accepted_manifest_version,
                    wfm.outbox_depth
                );
                if let Some(err) = &wfm.last_error {
                    let _ = writeln!(out, "  last error: {}", clean(err));
                }
                let rows: Vec<Vec<String>> = wfm
                    .targets
                    .iter()
                    .map(|t| {
                        vec![
                            clean(&t.device_id),
                            clean(&t.state),
                            t.status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "-".into()),
                            t.problem_type
                                .as_deref()
                                .map(clean)
                                .unwrap_or_else(|| "-".into()),
                            t.retry_in_seconds
                                .map(|s| format!("in {s}s ({} failures)", t.failures))
                                .unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                if !rows.is_empty() {
                    out.push('\n');
                    table(
                        &mut out,
                        &["TARGET", "CAPABILITIES", "HTTP", "PROBLEM", "RETRY"],
                        &rows,
                    );
                }
            }
        }

        out.push('\n');
        let problems = self.problems();
        if problems.is_empty() {
            out.push_str("all well\n");
        } else {
            out.push_str("PROBLEMS\n");
            for p in problems {
                let _ = writeln!(out, "  {}", clean(&p));
            }
        }
        out
    }
}

/// Error messages and names come from deployment files and the WFM: no control
/// characters reach the terminal (an escape sequence could rewrite the screen).
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// `sha256:` and the first 12 hex digits: enough to tell revisions apart at a glance.
fn short_digest(digest: &str) -> String {
    let digest = clean(digest);
    match digest.split_once(':') {
        Some((algorithm, hex)) if hex.len() > 12 => {
            format!("{algorithm}:{}", hex.chars().take(12).collect::<String>())
        }
        _ => digest,
    }
}

fn bytes(n: u64) -> String {
    crate::units::ByteSize(n).approximate()
}

/// Left-aligned columns two spaces apart, no trailing blanks.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// Runs the command: prints the document (or the tables) on stdout, a reason on stderr
/// when none could be read, and returns the exit status.
pub async fn run(
    admin: Option<SocketAddr>,
    config: Option<&Path>,
    json: bool,
    timeout: Duration,
) -> u8 {
    let fetched = match admin_address(admin, config) {
        Ok(addr) => fetch(addr, timeout).await,
        Err(err) => Err(err),
    };
    match fetched {
        Ok((body, report)) => {
            if json {
                let text = String::from_utf8_lossy(&body);
                println!("{}", text.trim_end());
            } else {
                print!("{}", report.render(SystemTime::now()));
            }
            report.exit_code()
        }
        Err(err) => {
            eprintln!("wasmgate status: {err}");
            EXIT_UNREACHABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(json: serde_json::Value) -> StatusReport {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn verdicts() {
        let healthy = report(serde_json::json!({
            "deviceId": "edge-01", "reconciled": true,
            "deployments": [{"name": "hello", "source": "hello.yaml", "state": "installed",
                "components": [{"name": "hello", "state": "installed", "revision": "0.1.0",
                    "digest": "sha256:0123456789abcdef0123"}]}],
            "wfm": {"profile": "rc3", "connected": true, "targets": [{"deviceId": "edge-01", "state": "accepted"}]},
        }));
        assert_eq!(healthy.problems(), Vec::<String>::new());
        assert_eq!(healthy.exit_code(), EXIT_OK);

        let failed = report(serde_json::json!({
            "deployments": [{"source": "broken.yaml", "state": "failed",
                "error": {"code": "wasmgate.invalid", "message": "missing id"}}],
        }));
        assert_eq!(
            failed.problems(),
            ["deployment broken.yaml failed: [wasmgate.invalid] missing id"]
        );
        assert_eq!(failed.exit_code(), EXIT_FAILED);

        let refused = report(serde_json::json!({
            "wfm": {"profile": "rc3", "connected": true, "targets": [
                {"deviceId": "edge-01/p1", "state": "refused", "status": 422, "detail": "otelCollector"},
                {"deviceId": "edge-01", "state": "pending"}]},
        }));
        assert_eq!(
            refused.problems(),
            ["WFM refused the capabilities of edge-01/p1 (HTTP 422): otelCollector"]
        );
        let away = report(serde_json::json!({
            "wfm": {"profile": "rc2", "connected": false, "lastError": "cannot connect"},
        }));
        assert_eq!(away.exit_code(), EXIT_FAILED);
        assert_eq!(
            report(serde_json::json!({"wfm": {"connected": false}})).exit_code(),
            EXIT_FAILED
        );
    }

    #[test]
    fn human_output_is_aligned_and_clean() {
        let r = report(serde_json::json!({
            "version": "0.1.0", "deviceId": "edge-01", "reconciled": true, "generation": 2,
            "partitions": [{"deviceId": "edge-01/apps", "cpu": 1.0,
                "memory": {"limit": 268435456u64, "used": 1572864, "instanceLimit": 33554432},
                "storage": {"quota": 67108864, "used": 0},
                "concurrency": {"limit": 32, "inUse": 1}, "throttledSeconds": 0.25}],
            "deployments": [
                {"name": "hello", "source": "hello.yaml", "state": "installed", "deviceId": "edge-01/apps",
                 "components": [{"name": "hello", "state": "installed", "revision": "0.1.0",
                    "digest": "sha256:0123456789abcdef0123"}]},
                {"source": "bad.yaml", "state": "failed",
                 "error": {"code": "wasmgate.invalid", "message": "bad\u{1b}[2Jname"}}],
            "wfm": {"profile": "rc3", "connected": true, "lastSync": 1000, "targets": [
                {"deviceId": "edge-01/apps", "state": "refused", "status": 422, "failures": 2, "retryInSeconds": 30}]},
        }));
        let text = r.render(SystemTime::UNIX_EPOCH + Duration::from_secs(1012));
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("bad\u{fffd}[2Jname"), "{text}");
        assert!(
            text.contains("wasmgate 0.1.0 on edge-01: reconciled (pass 2)"),
            "{text}"
        );
        assert!(text.contains("1.5Mi / 256Mi"), "{text}");
        assert!(text.contains("sha256:0123456789ab\n"), "{text}");
        assert!(!text.contains("0123456789abc"), "{text}");
        assert!(text.contains("last sync 12s ago"), "{text}");
        assert!(text.contains("in 30s (2 failures)"), "{text}");
        // Columns line up: every cell of a column starts where its header does.
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("DEPLOYMENT"))
            .unwrap();
        let column = lines[header].find("TARGET").unwrap();
        assert_eq!(
            lines[header + 1].find("edge-01/apps"),
            Some(column),
            "{text}"
        );
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");
        assert!(text.contains("PROBLEMS"), "{text}");
    }

    #[test]
    fn admin_address_order() {
        let flag: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(admin_address(Some(flag), None).unwrap(), flag);
        assert_eq!(admin_address(None, None).unwrap(), DEFAULT_ADMIN);
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("with.toml");
        std::fs::write(&with, "[http]\nadmin = \"127.0.0.1:9009\"\n").unwrap();
        assert_eq!(admin_address(None, Some(&with)).unwrap().port(), 9009);
        assert_eq!(admin_address(Some(flag), Some(&with)).unwrap(), flag);
        let without = dir.path().join("without.toml");
        std::fs::write(&without, "[device]\nid = \"edge-01\"\n").unwrap();
        assert!(matches!(
            admin_address(None, Some(&without)),
            Err(StatusCmdError::NoAdmin { .. })
        ));
        assert_eq!(
            dial_address("0.0.0.0:8081".parse().unwrap()),
            "127.0.0.1:8081".parse().unwrap()
        );
        assert_eq!(
            dial_address("[::]:8081".parse().unwrap()),
            "[::1]:8081".parse().unwrap()
        );
    }
}
