//! The OTLP pipeline against a real receiver on loopback: a hyper server that decodes
//! `/v1/traces`, `/v1/metrics` and `/v1/logs` with the official protobuf definitions
//! (`opentelemetry-proto`). And with the collector away: requests are not slowed and
//! the drop counter on /metrics rises.

mod common;

use common::*;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{metric, Metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Received {
    resources: Vec<Resource>,
    spans: Vec<Span>,
    logs: Vec<LogRecord>,
    metrics: Vec<Metric>,
    /// Requests that did not decode or went to an unknown path.
    bad: Vec<String>,
}

/// An OTLP/HTTP receiver on an ephemeral loopback port, on its own thread.
fn receiver() -> (SocketAddr, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let store = received.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let store = store.clone();
                        async move { accept(req, &store).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    (addr, received)
}

async fn accept(
    req: hyper::Request<hyper::body::Incoming>,
    store: &Mutex<Received>,
) -> Result<hyper::Response<Full<bytes::Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // Bounded: a test receiver, but a stray huge body must not eat the machine.
    let body = match http_body_util::Limited::new(req.into_body(), 16 << 20)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => bytes::Bytes::new(),
    };
    let mut r = store.lock().unwrap();
    if content_type != "application/x-protobuf" {
        r.bad.push(format!("{path}: content-type {content_type:?}"));
    }
    let decoded = match path.as_str() {
        "/v1/traces" => ExportTraceServiceRequest::decode(body).map(|m| {
            for rs in m.resource_spans {
                r.resources.extend(rs.resource);
                r.spans
                    .extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
            }
        }),
        "/v1/logs" => ExportLogsServiceRequest::decode(body).map(|m| {
            for rl in m.resource_logs {
                r.resources.extend(rl.resource);
                r.logs
                    .extend(rl.scope_logs.into_iter().flat_map(|s| s.log_records));
            }
        }),
        "/v1/metrics" => ExportMetricsServiceRequest::decode(body).map(|m| {
            for rm in m.resource_metrics {
                r.resources.extend(rm.resource);
                r.metrics
                    .extend(rm.scope_metrics.into_iter().flat_map(|s| s.metrics));
            }
        }),
        other => {
            r.bad.push(format!("unknown path {other}"));
            Ok(())
        }
    };
    if let Err(err) = decoded {
        r.bad.push(format!("{path}: {err}"));
    }
    Ok(hyper::Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap())
}

fn text(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(text)
}

/// Waits up to 20 s for `check` to find something in what was received.
fn wait_for<T>(
    received: &Mutex<Received>,
    what: &str,
    check: impl Fn(&Received) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = check(&received.lock().unwrap()) {
            return found;
        }
        if Instant::now() > deadline {
            let r = received.lock().unwrap();
            let names: Vec<&str> = r.spans.iter().map(|s| s.name.as_str()).collect();
            let metrics: Vec<&str> = r.metrics.iter().map(|m| m.name.as_str()).collect();
            panic!(
                "{what}: not received in 20s; spans {names:?}, {} logs, metrics {metrics:?}, bad {:?}",
                r.logs.len(),
                r.bad
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The binary without any OTEL_* variable of the test's environment.
fn command() -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command
}

const MISBEHAVE_ID: &str = "11111111-1111-4111-8111-111111111111";

fn serve_misbehave(telemetry: &str) -> (Sandbox, Wasmgate) {
    let sandbox = Sandbox::new();
    sandbox.put(
        "misbehave.yaml",
        &deployment(
            MISBEHAVE_ID,
            "misbehave",
            None,
            &[(
                "misbehave",
                wasmgate_examples::MISBEHAVE,
                "{trigger: {http: {route: /misbehave}}}",
            )],
            &[],
        ),
    );
    let gate = sandbox.up_with(
        command(),
        &format!(
            "[device]\nid = \"edge-01\"\n[telemetry]\n{telemetry}\n[[partition]]\nid = \"apps\"\ncpu = 1.0\nmemory = \"256Mi\"\nstorage = \"16Mi\"\n"
        ),
    );
    gate.wait_for("/misbehave/ok", 200, "ok");
    (sandbox, gate)
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn spans_logs_and_metrics_reach_a_real_receiver() {
    let (addr, received) = receiver();
    let (_sandbox, gate) = serve_misbehave(&format!(
        "otlp-endpoint = \"http://{addr}\"\nexport-interval = \"200ms\""
    ));
    assert_eq!(gate.get("/misbehave/ok").0, 200);
    assert_eq!(gate.get("/misbehave/panic?msg=boiler-7").0, 500);

    // The request span, with its attributes.
    let request = wait_for(&received, "the span of GET /misbehave/ok", |r| {
        r.spans
            .iter()
            .find(|s| {
                s.name == "http.request"
                    && attr(&s.attributes, "url.path").as_deref() == Some("/misbehave/ok")
                    // Not a 404 of the wait for the deployment.
                    && attr(&s.attributes, "wasmgate.deployment").is_some()
            })
            .cloned()
    });
    let a = &request.attributes;
    assert_eq!(attr(a, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(a, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr(a, "wasmgate.deployment").as_deref(), Some("misbehave"));
    assert_eq!(attr(a, "wasmgate.component").as_deref(), Some("misbehave"));
    assert_eq!(
        attr(a, "wasmgate.partition").as_deref(),
        Some("edge-01/apps")
    );
    let instantiate: u64 = attr(a, "wasmgate.instantiate_us")
        .expect("instantiate time on the request span")
        .parse()
        .unwrap();
    assert!(instantiate < 5_000_000, "instantiate took {instantiate} us");
    // Server kind (2) and a root span: the ingress starts the trace.
    assert_eq!(request.kind, 2);
    assert!(request.parent_span_id.is_empty());

    // Its child: the guest's handler.
    let guest = wait_for(&received, "the guest span under the request", |r| {
        r.spans
            .iter()
            .find(|s| s.name == "wasmgate.guest" && s.parent_span_id == request.span_id)
            .cloned()
    });
    assert_eq!(guest.trace_id, request.trace_id);
    assert!(guest.start_time_unix_nano >= request.start_time_unix_nano);
    assert!(guest.end_time_unix_nano <= request.end_time_unix_nano);

    // The panicking request failed with 500 and its span says so.
    let panicked = wait_for(&received, "the span of the panicking request", |r| {
        r.spans
            .iter()
            .find(|s| {
                s.name == "http.request"
                    && attr(&s.attributes, "url.path").as_deref() == Some("/misbehave/panic")
            })
            .cloned()
    });
    assert_eq!(
        attr(&panicked.attributes, "http.response.status_code").as_deref(),
        Some("500")
    );
    assert_eq!(
        panicked.status.as_ref().map(|s| s.code),
        Some(2),
        "status ERROR"
    );

    // Its stdout line and its panic message arrive as log records of that trace.
    let log_of = |needle: &'static str| {
        wait_for(&received, needle, move |r| {
            r.logs
                .iter()
                .find(|l| {
                    l.body
                        .as_ref()
                        .and_then(text)
                        .is_some_and(|b| b.contains(needle))
                })
                .cloned()
        })
    };
    for (needle, severity) in [
        ("about to panic: boiler-7", 9),
        ("guest panic: boiler-7", 13),
    ] {
        let log = log_of(needle);
        assert_eq!(
            hex(&log.trace_id),
            hex(&panicked.trace_id),
            "{needle}: the request's trace id"
        );
        assert!(!log.span_id.is_empty());
        assert_eq!(
            log.severity_number, severity,
            "{needle}: INFO (9) / WARN (13)"
        );
        assert_eq!(
            attr(&log.attributes, "deployment").as_deref(),
            Some("misbehave")
        );
        assert_eq!(
            attr(&log.attributes, "partition").as_deref(),
            Some("edge-01/apps")
        );
    }
    // Host events are records too, inside a request with its trace id.
    let host = log_of("invocation failed");
    assert_eq!(hex(&host.trace_id), hex(&panicked.trace_id));

    // A reconcile pass has its span.
    wait_for(&received, "a reconcile span", |r| {
        r.spans
            .iter()
            .find(|s| s.name == "wasmgate.reconcile")
            .cloned()
    });

    // Request counts and durations per deployment, pushed periodically.
    let count = wait_for(&received, "wasmgate.invocations with 2 requests", |r| {
        r.metrics
            .iter()
            .rev()
            .filter(|m| m.name == "wasmgate.invocations")
            .find_map(|m| match &m.data {
                Some(metric::Data::Sum(sum)) => {
                    let total: u64 = sum
                        .data_points
                        .iter()
                        .filter(|p| {
                            attr(&p.attributes, "wasmgate.deployment").as_deref() == Some("misbehave")
                        })
                        .map(|p| match p.value {
                            Some(
                                opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(
                                    i,
                                ),
                            ) => i as u64,
                            _ => 0,
                        })
                        .sum();
                    (total >= 3).then_some(sum.clone())
                }
                _ => None,
            })
    });
    assert!(count.is_monotonic);
    assert!(count
        .data_points
        .iter()
        .any(|p| attr(&p.attributes, "wasmgate.outcome").as_deref() == Some("trap")));
    // The newest export that has seen all three requests: an earlier one
    // may predate the last of them (the exporter pushes every 200 ms).
    let durations = wait_for(
        &received,
        "wasmgate.invocation.duration of 3 requests",
        |r| {
            r.metrics.iter().rev().find_map(|m| match &m.data {
                Some(metric::Data::Histogram(h)) if m.name == "wasmgate.invocation.duration" => {
                    let seen: u64 = h
                        .data_points
                        .iter()
                        .filter(|p| {
                            attr(&p.attributes, "wasmgate.deployment").as_deref()
                                == Some("misbehave")
                        })
                        .map(|p| p.count)
                        .sum();
                    (seen >= 3).then(|| (m.unit.clone(), h.clone()))
                }
                _ => None,
            })
        },
    );
    assert_eq!(durations.0, "s");

    // Every export carries the host's resource.
    let r = received.lock().unwrap();
    assert!(r.bad.is_empty(), "{:?}", r.bad);
    assert!(!r.resources.is_empty());
    for resource in &r.resources {
        let a = &resource.attributes;
        assert_eq!(attr(a, "service.name").as_deref(), Some("wasmgate"));
        assert_eq!(attr(a, "margo.device.id").as_deref(), Some("edge-01"));
        assert!(attr(a, "service.version").is_some() && attr(a, "host.name").is_some());
    }
}

/// Requests in a row against `gate`: sorted latencies.
fn latencies(gate: &Wasmgate, n: usize) -> Vec<Duration> {
    let agent = agent(Duration::from_secs(10));
    let url = gate.url("/misbehave/ok");
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            let response = agent.get(&url).call().expect("request");
            assert_eq!(response.status(), 200);
            started.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn dropped(gate: &Wasmgate, signal: &str) -> f64 {
    let (_, body) = gate.admin_get("/metrics");
    let prefix = format!("wasmgate_telemetry_dropped_total{{signal=\"{signal}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn with_the_collector_away_requests_are_not_slowed_and_drops_are_counted() {
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (_off_box, off) = serve_misbehave("enabled = false");
    let (_down_box, down) = serve_misbehave(&format!(
        "otlp-endpoint = \"http://{closed}\"\nexport-interval = \"100ms\""
    ));
    assert_eq!(dropped(&off, "traces"), 0.0);
    // Warm both, then alternate rounds so both see the same machine load.
    latencies(&off, 20);
    latencies(&down, 20);
    let (mut off_times, mut down_times) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        off_times.extend(latencies(&off, 50));
        down_times.extend(latencies(&down, 50));
    }
    off_times.sort();
    down_times.sort();
    let (off_p50, down_p50) = (
        off_times[off_times.len() / 2],
        down_times[down_times.len() / 2],
    );
    let (off_p99, down_p99) = (p99(&off_times), p99(&down_times));
    eprintln!(
        "telemetry off: p50 {off_p50:?} p99 {off_p99:?}; collector away: p50 {down_p50:?} p99 {down_p99:?}"
    );
    // Spans are still made and queued, so a little more work per request; never a
    // wait for the collector (a connect attempt alone would show as milliseconds).
    assert!(
        down_p50 <= off_p50 * 2 + Duration::from_micros(500),
        "p50 {down_p50:?} against {off_p50:?} without telemetry"
    );
    assert!(
        down_p99 <= off_p99 * 3 + Duration::from_millis(10),
        "p99 {down_p99:?} against {off_p99:?} without telemetry"
    );
    // What could not be sent is counted.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (traces, logs) = (dropped(&down, "traces"), dropped(&down, "logs"));
        if traces >= 200.0 && logs > 0.0 && dropped(&down, "metrics") > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drop counters did not rise: traces {traces}, logs {logs}{}",
            down.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(dropped(&off, "traces"), 0.0);
}

#[test]
fn sigterm_flushes_what_is_queued_within_a_bound() {
    let (addr, received) = receiver();
    // An interval longer than the test: only the shutdown flush can deliver.
    let (_sandbox, mut gate) = serve_misbehave(&format!(
        "otlp-endpoint = \"http://{addr}\"\nexport-interval = \"10m\""
    ));
    assert_eq!(gate.get("/misbehave/ok").0, 200);
    let stopped = Instant::now();
    gate.signal("TERM");
    let status = gate.wait_exit(Duration::from_secs(15)).expect("exited");
    assert!(status.success(), "{status:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(12),
        "{:?}",
        stopped.elapsed()
    );
    let r = received.lock().unwrap();
    assert!(
        r.spans.iter().any(|s| s.name == "http.request"),
        "the request span was not flushed at exit"
    );
}
