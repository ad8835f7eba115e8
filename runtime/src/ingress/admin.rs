//! Admin listener: `/healthz` (200 once every desired deployment reached a final
//! state), `/status` (JSON), `/metrics` (Prometheus text format, or OpenMetrics when
//! asked for; rendered by [`crate::telemetry::Metrics`]).

use super::server::serve_with;
use super::{ConnectionLimits, SharedRoutes, Shutdown};
use crate::deploy::StatusBoard;
use crate::sandbox::Partition;
use crate::telemetry::{Format, Metrics, PartitionSample};
use crate::workload::{error_response, ResponseBody};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::fmt::Write;
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct AdminState {
    pub device_id: String,
    pub status: Arc<StatusBoard>,
    pub partitions: Vec<Arc<Partition>>,
    pub routes: SharedRoutes,
    pub metrics: Arc<Metrics>,
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
            .iter()
            .map(|p| {
                serde_json::json!({
                    "deviceId": p.device_id,
                    "cpu": p.config.cpu,
                    "memory": { "limit": p.memory.limit(), "used": p.memory.used() },
                    "storage": { "quota": p.config.storage.0, "used": p.storage_used() },
                    "activeInstances": p.active_instances(),
                    "throttledSeconds": p.cpu.throttled().as_secs_f64(),
                })
            })
            .collect();
        let body = serde_json::json!({
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
            .iter()
            .map(|p| PartitionSample {
                partition: p.device_id.clone(),
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
