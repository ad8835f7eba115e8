//! The human view: short aligned tables, with every string from the host made safe for
//! a terminal.

use super::StatusReport;
use std::fmt::Write;
use std::time::SystemTime;

impl StatusReport {
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
pub(super) fn clean(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(json: serde_json::Value) -> StatusReport {
        serde_json::from_value(json).unwrap()
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
}
