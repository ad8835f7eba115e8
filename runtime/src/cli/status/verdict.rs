//! The verdict: what counts as a problem, and the exit status it makes.

use super::StatusReport;

/// Everything is well: no deployment failed, and with a WFM, it is reachable and
/// accepted every capabilities report.
pub const EXIT_OK: u8 = 0;
/// Something failed: a deployment or component is `failed`, a capabilities report
/// was refused, or the last exchange with the WFM failed.
pub const EXIT_FAILED: u8 = 1;
/// No status could be read: nothing listens, no answer in time, not a status document,
/// or the configuration names no admin listener. (clap's usage errors are also 2.)
pub const EXIT_UNREACHABLE: u8 = 2;

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
}
