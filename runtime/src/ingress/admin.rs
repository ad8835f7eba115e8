//! Admin listener: `/healthz` (200 once every desired deployment reached a final
//! state), `/status` (JSON), `/metrics` (Prometheus text format).

use super::server::serve_with;
use super::{ConnectionLimits, SharedRoutes, Shutdown};
use crate::deploy::StatusBoard;
use crate::sandbox::Partition;
use crate::workload::{error_response, ResponseBody, WorkloadStats};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;

/// A metric: name, Prometheus type, and how to read it from a `T`.
type Metric<T, V> = (&'static str, &'static str, fn(&T) -> V);

#[derive(Clone)]
pub struct AdminState {
    pub device_id: String,
    pub status: Arc<StatusBoard>,
    pub partitions: Vec<Arc<Partition>>,
    pub routes: SharedRoutes,
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
        });
        respond(200, "application/json", format!("{body:#}\n"))
    }

    fn metrics(&self) -> hyper::Response<ResponseBody> {
        // The text format wants each metric's samples together, after its TYPE line.
        let table = self.routes.load();
        let mut out = String::new();
        let workload_metrics: [Metric<WorkloadStats, u64>; 2] = [
            ("wasmgate_invocations_total", "counter", |s| {
                s.invocations.load(Ordering::Relaxed)
            }),
            ("wasmgate_invocation_failures_total", "counter", |s| {
                s.failures.load(Ordering::Relaxed)
            }),
        ];
        for (name, kind, read) in workload_metrics {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for workload in table.workloads() {
                let spec = &workload.spec;
                let _ = writeln!(
                    out,
                    "{name}{{deployment=\"{}\",component=\"{}\",partition=\"{}\"}} {}",
                    spec.deployment_name,
                    spec.component,
                    spec.partition.device_id,
                    read(&workload.stats)
                );
            }
        }
        let partition_metrics: [Metric<Partition, f64>; 3] = [
            ("wasmgate_partition_memory_bytes", "gauge", |p| {
                p.memory.used() as f64
            }),
            (
                "wasmgate_partition_cpu_throttled_seconds_total",
                "counter",
                |p| p.cpu.throttled().as_secs_f64(),
            ),
            ("wasmgate_partition_active_instances", "gauge", |p| {
                f64::from(p.active_instances())
            }),
        ];
        for (name, kind, read) in partition_metrics {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for p in &self.partitions {
                let _ = writeln!(out, "{name}{{partition=\"{}\"}} {}", p.device_id, read(p));
            }
        }
        respond(200, "text/plain; version=0.0.4", out)
    }

    fn handle(&self, path: &str) -> hyper::Response<ResponseBody> {
        match path {
            "/healthz" => self.healthz(),
            "/status" => self.status_json(),
            "/metrics" => self.metrics(),
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
            async move { state.handle(req.uri().path()) }
        },
    )
    .await
}
