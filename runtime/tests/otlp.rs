//! The OTLP pipeline against a real receiver on loopback: a hyper server that decodes
//! `/v1/traces`, `/v1/metrics` and `/v1/logs` with the official protobuf definitions
//! (`opentelemetry-proto`), in local mode and against the strict mock WFM. And with the
//! collector away: requests are not slowed and the drop counter on /metrics rises.

mod common;

use common::pki::Pki;
use common::wfm::{DownMode, MockWfm, Profile};
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
const HELLO_ID: &str = "aaaaaaaa-0000-4000-8000-000000000001";

/// The `[telemetry]` lines that send to `addr`, with an interval short enough that a
/// test sees its records within a second.
fn exporting_to(addr: SocketAddr) -> String {
    format!("otlp-endpoint = \"http://{addr}\"\nexport-interval = \"200ms\"")
}

/// `wasmgate up` in local mode with `yaml` as its one deployment, on device `edge-01`
/// with partition `apps`.
fn serve_local(telemetry: &str, yaml: &str) -> (Sandbox, Wasmgate) {
    let sandbox = Sandbox::new();
    sandbox.put("deployment.yaml", yaml);
    let gate = sandbox.up_with(
        command(),
        &format!(
            "[device]\nid = \"edge-01\"\n[telemetry]\n{telemetry}\n[[partition]]\nid = \"apps\"\ncpu = 1.0\nmemory = \"256Mi\"\nstorage = \"16Mi\"\n"
        ),
    );
    (sandbox, gate)
}

fn serve_misbehave(telemetry: &str) -> (Sandbox, Wasmgate) {
    let (sandbox, gate) = serve_local(
        telemetry,
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
    gate.wait_for("/misbehave/ok", 200, "ok");
    (sandbox, gate)
}

/// `hello` greeting `name`: its handler logs `greeting NAME` through `wasi:logging`.
fn hello_yaml(device: Option<&str>, name: &str) -> String {
    deployment(
        HELLO_ID,
        "hello",
        device,
        &[(
            "hello",
            &format!("file://{}", wasmgate_examples::HELLO),
            "{trigger: {http: {route: /hello}}}",
        )],
        &[("name", name, "name", "hello")],
    )
}

/// The first log record whose body contains `needle`.
fn log_containing(received: &Mutex<Received>, needle: &str) -> LogRecord {
    wait_for(received, needle, |r| {
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
}

/// The attributes every guest record carries, whatever its source.
fn assert_guest_record(log: &LogRecord, deployment: &str, component: &str, context: &str) {
    let a = &log.attributes;
    let body = log.body.as_ref().and_then(text);
    assert_eq!(
        attr(a, "deployment").as_deref(),
        Some(deployment),
        "{body:?}"
    );
    assert_eq!(attr(a, "component").as_deref(), Some(component), "{body:?}");
    assert_eq!(
        attr(a, "partition").as_deref(),
        Some("edge-01/apps"),
        "{body:?}"
    );
    assert_eq!(attr(a, "context").as_deref(), Some(context), "{body:?}");
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn spans_logs_and_metrics_reach_a_real_receiver() {
    let (addr, received) = receiver();
    let (_sandbox, gate) = serve_misbehave(&exporting_to(addr));
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
    for (needle, severity, stream) in [
        ("about to panic: boiler-7", 9, "stdout"),
        ("guest panic: boiler-7", 13, "stderr"),
    ] {
        let log = log_containing(&received, needle);
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
        assert_guest_record(&log, "misbehave", "misbehave", stream);
    }
    // Host events are records too, inside a request with its trace id.
    let host = log_containing(&received, "invocation failed");
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

#[test]
fn guest_wasi_logging_records_are_log_records_of_their_request() {
    let (addr, received) = receiver();
    let (_sandbox, gate) = serve_local(&exporting_to(addr), &hello_yaml(None, "otlp-7"));
    gate.wait_for("/hello", 200, "Hello, otlp-7!");

    let log = log_containing(&received, "greeting otlp-7");
    assert_eq!(
        log.body.as_ref().and_then(text).as_deref(),
        Some("greeting otlp-7"),
        "the guest's message, nothing added"
    );
    // The guest logs at `info`.
    assert_eq!(log.severity_number, 9);
    assert_eq!(log.severity_text, "INFO");
    // `context` is the guest's own argument here, not a stream name.
    assert_guest_record(&log, "hello", "hello", "hello");

    // Emitted inside the handler: the trace of a /hello request, on one of its spans.
    assert!(!log.trace_id.is_empty(), "no trace id on the record");
    let request = wait_for(&received, "the request span of the record's trace", |r| {
        r.spans
            .iter()
            .find(|s| s.trace_id == log.trace_id && s.name == "http.request")
            .cloned()
    });
    assert_eq!(
        attr(&request.attributes, "url.path").as_deref(),
        Some("/hello")
    );
    assert_eq!(
        attr(&request.attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    let emitter = wait_for(&received, "the span the record was emitted in", |r| {
        r.spans.iter().find(|s| s.span_id == log.span_id).cloned()
    });
    assert_eq!(hex(&emitter.trace_id), hex(&log.trace_id));
    assert_eq!(emitter.name, "wasmgate.guest");
    assert_eq!(emitter.parent_span_id, request.span_id);
}

fn spans_named(r: &Received, name: &str) -> Vec<Span> {
    r.spans.iter().filter(|s| s.name == name).cloned().collect()
}

/// `(wasmgate.wfm.kind, wasmgate.wfm.outcome)` of a request span.
fn wfm_call(span: &Span) -> (String, String) {
    let a = &span.attributes;
    (
        attr(a, "wasmgate.wfm.kind").unwrap_or_default(),
        attr(a, "wasmgate.wfm.outcome").unwrap_or_default(),
    )
}

#[test]
fn wfm_sync_rounds_and_their_requests_are_spans() {
    let (addr, received) = receiver();
    let sandbox = Sandbox::new();
    let pki = Pki::new("example.org", "wfm-1", "edge-01");
    let files = pki.write_client_files(&sandbox.path().join("pki"));
    let mock = MockWfm::start(Profile::Rc3, &pki);
    // Desired from the first round on, so its document and status requests are made.
    mock.set_deployments(&[(HELLO_ID, hello_yaml(Some("edge-01/apps"), "wfm"))]);
    let config = format!(
        r#"
[device]
id = "edge-01"
mode = "see-thru"

[telemetry]
{}

[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"

[wfm]
url = "{}"
poll-interval = "300ms"
{}
"#,
        exporting_to(addr),
        mock.base_url(),
        files.rc3_credentials()
    );
    let _gate = sandbox.up_with(command(), &config);
    mock.wait_until("hello reported installed", Duration::from_secs(60), |m| {
        m.statuses()
            .iter()
            .any(|s| s["deploymentId"] == HELLO_ID && s["status"]["state"] == "installed")
    });

    // What a correct client's run against the strict mock is made of: the first
    // round fetches, the later ones find the state unchanged.
    let expected = [
        ("capabilities", "ok"),
        ("state", "ok"),
        ("deployment", "ok"),
        ("status", "ok"),
        ("state", "not-modified"),
    ];
    wait_for(&received, "request spans of every kind", |r| {
        let seen: Vec<(String, String)> = spans_named(r, "wasmgate.wfm.request")
            .iter()
            .map(wfm_call)
            .collect();
        expected
            .iter()
            .all(|(k, o)| seen.iter().any(|(sk, so)| sk == k && so == o))
            .then_some(())
    });
    // A round's span ends after its requests' and may be in a later export: wait for
    // a moment when none is half received.
    let (syncs, requests) = wait_for(
        &received,
        "every request span's sync span in the same trace",
        |r| {
            let syncs = spans_named(r, "wasmgate.wfm.sync");
            let requests = spans_named(r, "wasmgate.wfm.request");
            requests
                .iter()
                .all(|q| {
                    syncs
                        .iter()
                        .any(|s| s.span_id == q.parent_span_id && s.trace_id == q.trace_id)
                })
                .then_some((syncs, requests))
        },
    );
    for sync in &syncs {
        // Internal (1), and a root: a round is not part of anything else.
        assert_eq!(sync.kind, 1, "{sync:?}");
        assert!(sync.parent_span_id.is_empty(), "{sync:?}");
    }
    for request in &requests {
        let (kind, outcome) = wfm_call(request);
        let method = match kind.as_str() {
            "capabilities" => "PUT",
            "state" | "deployment" => "GET",
            "status" => "POST",
            other => panic!("unexpected request kind {other:?} ({outcome})"),
        };
        assert_eq!(
            attr(&request.attributes, "http.request.method").as_deref(),
            Some(method),
            "{kind}"
        );
        // Client (3).
        assert_eq!(request.kind, 3, "{kind}");
        let round = syncs
            .iter()
            .find(|s| s.span_id == request.parent_span_id)
            .unwrap();
        assert!(
            round.start_time_unix_nano <= request.start_time_unix_nano
                && request.end_time_unix_nano <= round.end_time_unix_nano,
            "{kind} request outside its round"
        );
    }

    // The round that fetched the state did it all: reported, fetched the document and
    // applied it, one trace.
    let fetched = requests
        .iter()
        .find(|q| wfm_call(q) == ("state".into(), "ok".into()))
        .unwrap();
    let round = syncs
        .iter()
        .find(|s| s.span_id == fetched.parent_span_id)
        .unwrap();
    assert_ne!(
        round.status.as_ref().map(|s| s.code),
        Some(2),
        "a successful round is not ERROR"
    );
    let kinds: Vec<String> = requests
        .iter()
        .filter(|q| q.parent_span_id == round.span_id)
        .map(|q| wfm_call(q).0)
        .collect();
    for kind in ["capabilities", "state", "deployment"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} not in {kinds:?}");
    }
    let reconcile = wait_for(&received, "the reconcile pass of that round", |r| {
        r.spans
            .iter()
            .find(|s| s.name == "wasmgate.reconcile" && s.parent_span_id == round.span_id)
            .cloned()
    });
    assert_eq!(
        attr(&reconcile.attributes, "wasmgate.deployments").as_deref(),
        Some("1")
    );

    // A round the WFM fails is ERROR, and so is the outcome of the request it failed on.
    mock.set_down(DownMode::ServiceUnavailable {
        retry_after_secs: 1,
    });
    let failed = wait_for(&received, "an ERROR sync span", |r| {
        r.spans
            .iter()
            .find(|s| s.name == "wasmgate.wfm.sync" && s.status.as_ref().map(|s| s.code) == Some(2))
            .cloned()
    });
    let failure = wait_for(&received, "the failed request of the ERROR round", |r| {
        r.spans
            .iter()
            .find(|q| q.name == "wasmgate.wfm.request" && q.parent_span_id == failed.span_id)
            .cloned()
    });
    assert_eq!(wfm_call(&failure).1, "error", "a 503 is an error");

    // Every export carries the device id.
    let r = received.lock().unwrap();
    assert!(r.bad.is_empty(), "{:?}", r.bad);
    assert!(!r.resources.is_empty());
    for resource in &r.resources {
        assert_eq!(
            attr(&resource.attributes, "margo.device.id").as_deref(),
            Some("edge-01")
        );
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
