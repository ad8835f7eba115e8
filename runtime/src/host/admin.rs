//! Admin listener: `/healthz` (200 once every desired deployment reached a final
//! state), `/status` (JSON), `/metrics` (Prometheus text format, or OpenMetrics when
//! asked for; rendered by [`crate::telemetry::Metrics`]).

use crate::deploy::StatusBoard;
use crate::ingress::{serve_with, ConnectionLimits, Shutdown};
use crate::sandbox::SharedPartitions;
use crate::telemetry::{Format, Metrics, PartitionSample};
use crate::trigger::{error_response, ResponseBody};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::fmt::Write;
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct AdminState {
    pub device_id: crate::types::DeviceId,
    pub status: Arc<StatusBoard>,
    /// The partitions as they are now (a reloaded configuration swaps them).
    pub partitions: SharedPartitions,
    pub metrics: Arc<Metrics>,
    /// `[http] admin-hosts`: names accepted in `Host` besides IP literals and `localhost`.
    pub allowed_hosts: Vec<String>,
}

/// Whether a request's authority (`Host`, or the authority of an absolute-form target)
/// may reach the admin endpoints. They are unauthenticated, so a web page whose name
/// an attacker re-points at this device (DNS rebinding) must not read them: such a
/// request carries the attacker's name. IP literals and `localhost` cannot be
/// re-pointed by DNS; other names only when the operator listed them. A request
/// without any authority is not from a browser and passes.
fn host_allowed(authority: Option<&str>, allowed: &[String]) -> bool {
    let Some(authority) = authority else {
        return true;
    };
    let host = match authority.parse::<hyper::http::uri::Authority>() {
        Ok(a) => a.host().to_owned(),
        Err(_) => return false,
    };
    if host.starts_with('[') {
        return host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    crate::names::same_host(&host, "localhost")
        || allowed.iter().any(|a| crate::names::same_host(a, &host))
}

fn respond(status: u16, content_type: &str, body: String) -> hyper::Response<ResponseBody> {
    hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts are valid")
}

impl AdminState {
    fn healthz(&self) -> hyper::Response<ResponseBody> {
        let snapshot = self.status.snapshot();
        let failed: Vec<_> = snapshot
            .deployments
            .iter()
            .filter(|d| d.state == crate::deploy::DeploymentState::Failed)
            .map(|d| d.source.clone())
            .collect();
        if snapshot.reconciled {
            let mut body = String::from("ok\n");
            for f in failed {
                let _ = writeln!(body, "failed: {f}");
            }
            respond(200, "text/plain; charset=utf-8", body)
        } else {
            respond(503, "text/plain; charset=utf-8", "reconciling\n".into())
        }
    }

    fn status_json(&self) -> hyper::Response<ResponseBody> {
        let snapshot = self.status.snapshot();
        let partitions: Vec<_> = self
            .partitions
            .load()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id,
                    "deviceId": p.device_id,
                    "cpu": p.config.cpu,
                    "memory": {
                        "limit": p.memory.limit(),
                        "used": p.memory.used(),
                        "instanceLimit": p.config.instance_memory(),
                    },
                    "storage": { "quota": p.config.storage.0, "used": p.storage_used() },
                    "concurrency": { "limit": p.config.concurrency(), "inUse": p.active_instances() },
                    "activeInstances": p.active_instances(),
                    "throttledSeconds": p.cpu.throttled().as_secs_f64(),
                })
            })
            .collect();
        let body = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "deviceId": self.device_id,
            "reconciled": snapshot.reconciled,
            "generation": snapshot.generation,
            "deployments": snapshot.deployments,
            "partitions": partitions,
            "wfm": self.status.wfm(),
        });
        respond(200, "application/json", format!("{body:#}\n"))
    }

    /// Budget use of every partition, as the metrics report it.
    fn partition_samples(&self) -> Vec<PartitionSample> {
        self.partitions
            .load()
            .iter()
            .map(|p| PartitionSample {
                partition: p.device_id.to_string(),
                memory_used: p.memory.used(),
                memory_limit: p.memory.limit(),
                cpu_throttled_seconds: p.cpu.throttled().as_secs_f64(),
                storage_used: p.storage_used(),
                storage_quota: p.config.storage.0,
                active_instances: p.active_instances(),
                concurrency_limit: p.config.concurrency(),
            })
            .collect()
    }

    /// Off the async workers: measuring storage walks the partitions' directories.
    async fn metrics(self: Arc<Self>, accept: Option<String>) -> hyper::Response<ResponseBody> {
        let format = Format::negotiate(accept.as_deref());
        let rendered = tokio::task::spawn_blocking(move || {
            self.metrics.render(self.partition_samples(), format)
        })
        .await;
        match rendered {
            Ok(body) => respond(200, format.content_type(), body),
            Err(err) => error_response(500, &format!("cannot render the metrics: {err}"), false),
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<ResponseBody> {
        let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(hyper::header::HOST)
                .map(|h| h.to_str().unwrap_or("\u{fffd}"))
        });
        if !host_allowed(authority, &self.allowed_hosts) {
            return error_response(
                421,
                "admin listener: the Host of this request is not an IP address, localhost or a name in [http] admin-hosts",
                false,
            );
        }
        match req.uri().path() {
            "/healthz" => self.healthz(),
            "/status" => self.status_json(),
            "/metrics" => {
                let accept = req
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                self.metrics(accept).await
            }
            _ => error_response(404, "admin endpoints: /healthz, /status, /metrics", false),
        }
    }
}

/// Serves the admin endpoints until `shutdown`, with its own connection budget
/// (`limits`), so a flood on the ingress leaves it answering.
pub async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    limits: ConnectionLimits,
    shutdown: Shutdown,
) {
    if let Ok(addr) = listener.local_addr() {
        if reachable_off_host(addr) {
            tracing::warn!(
                %addr,
                "security: the admin listener is unauthenticated and binds a non-loopback address; /status and /metrics are readable by anyone who reaches it (bind 127.0.0.1, or firewall it)"
            );
        }
    }
    let state = Arc::new(state);
    serve_with(
        "admin",
        listener,
        limits,
        shutdown,
        move |req: hyper::Request<hyper::body::Incoming>| {
            let state = state.clone();
            async move { state.handle(req).await }
        },
    )
    .await
}

/// Whether a listener on `addr` can be reached from other hosts: anything but a
/// loopback address, an IPv4 loopback written as IPv6 (`::ffff:127.0.0.1`) included.
fn reachable_off_host(addr: std::net::SocketAddr) -> bool {
    !addr.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::{host_allowed, reachable_off_host};

    #[test]
    fn only_loopback_binds_escape_the_exposure_warning() {
        for local in [
            "127.0.0.1:9001",
            "127.3.2.1:9001",
            "[::1]:9001",
            "[::ffff:127.0.0.1]:9001",
        ] {
            assert!(!reachable_off_host(local.parse().unwrap()), "{local}");
        }
        for exposed in [
            "0.0.0.0:9001",
            "[::]:9001",
            "192.168.1.10:9001",
            "[fe80::1]:9001",
            "[::ffff:10.0.0.1]:9001",
        ] {
            assert!(reachable_off_host(exposed.parse().unwrap()), "{exposed}");
        }
    }

    #[test]
    fn host_header_check() {
        let listed = vec!["gw-01.site.example".to_owned()];
        for ok in [
            None,
            Some("127.0.0.1:9001"),
            Some("127.0.0.1"),
            Some("10.1.2.3:80"),
            Some("[::1]:9001"),
            Some("[fe80::1]"),
            Some("localhost"),
            Some("LocalHost:9001"),
            Some("localhost.:9001"),
            Some("gw-01.site.example:9001"),
            Some("GW-01.site.example."),
        ] {
            assert!(host_allowed(ok, &listed), "{ok:?} refused");
        }
        for bad in [
            Some("evil.example"),
            Some("evil.example:9001"),
            Some("localhost.evil.example"),
            Some("evil.localhost"),
            Some("127.0.0.1.evil.example"),
            Some("gw-01.site.example.evil"),
            Some("[not-an-ip]:80"),
            Some(""),
            Some("a b"),
            Some("\u{fffd}"),
        ] {
            assert!(!host_allowed(bad, &listed), "{bad:?} allowed");
        }
        assert!(!host_allowed(Some("gw-01.site.example"), &[]));
    }
}
