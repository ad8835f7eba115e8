//! Admin listener: `/healthz` (200 once every desired deployment reached a final
//! state), `/status` (JSON), `/metrics` (Prometheus text format).

use super::{serve_with, SharedRoutes};
use crate::deploy::StatusBoard;
use crate::sandbox::Partition;
use crate::workload::{error_response, ResponseBody};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;

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
        let mut out = String::new();
        out.push_str("# TYPE wasmgate_invocations_total counter\n# TYPE wasmgate_invocation_failures_total counter\n");
        for route in self.routes.load().routes() {
            let spec = &route.workload.spec;
            let labels = format!(
                "deployment=\"{}\",component=\"{}\",partition=\"{}\"",
                spec.deployment_name, spec.component, spec.partition.device_id
            );
            let stats = &route.workload.stats;
            let _ = writeln!(
                out,
                "wasmgate_invocations_total{{{labels}}} {}",
                stats.invocations.load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "wasmgate_invocation_failures_total{{{labels}}} {}",
                stats.failures.load(Ordering::Relaxed)
            );
        }
        out.push_str("# TYPE wasmgate_partition_memory_bytes gauge\n# TYPE wasmgate_partition_cpu_throttled_seconds_total counter\n# TYPE wasmgate_partition_active_instances gauge\n");
        for p in &self.partitions {
            let l = format!("partition=\"{}\"", p.device_id);
            let _ = writeln!(
                out,
                "wasmgate_partition_memory_bytes{{{l}}} {}",
                p.memory.used()
            );
            let _ = writeln!(
                out,
                "wasmgate_partition_cpu_throttled_seconds_total{{{l}}} {}",
                p.cpu.throttled().as_secs_f64()
            );
            let _ = writeln!(
                out,
                "wasmgate_partition_active_instances{{{l}}} {}",
                p.active_instances()
            );
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

pub async fn serve_admin(listener: TcpListener, state: AdminState) {
    let state = Arc::new(state);
    serve_with(
        listener,
        move |req: hyper::Request<hyper::body::Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(state.handle(req.uri().path())) }
        },
    )
    .await
}
