//! HTTP triggers: one request, one fresh instance, one `wasi:http/incoming-handler` call.

use super::{InvocationError, Workload};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::WasiHttpView;

/// The body type every ingress response uses.
pub type ResponseBody = UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// A plain-text error response; `retry` adds `Retry-After` for transient conditions.
pub fn error_response(status: u16, message: &str, retry: bool) -> hyper::Response<ResponseBody> {
    let mut builder = hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if retry {
        builder = builder.header(hyper::header::RETRY_AFTER, "1");
    }
    builder
        .body(
            Full::new(Bytes::from(format!("wasmgate: {message}\n")))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts are valid")
}

fn invocation_response(err: &InvocationError) -> hyper::Response<ResponseBody> {
    error_response(err.status(), &err.to_string(), err.retryable())
}

impl Workload {
    /// Serves `request` in a fresh instance. Never fails: every problem becomes an HTTP
    /// error response naming the deployment and what went wrong.
    ///
    /// The ingress passes hyper's `Incoming`; any body works (benchmarks pass an in-memory
    /// one to time exactly this path without a socket).
    pub async fn handle_http<B>(
        self: std::sync::Arc<Self>,
        request: hyper::Request<B>,
        max_body: u64,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(proxy) = self.http.clone() else {
            return error_response(
                500,
                &format!("{} has no HTTP handler", self.spec.label()),
                false,
            );
        };
        let started = std::time::Instant::now();
        let permit = match self.spec.partition.admit().await {
            Ok(permit) => permit,
            Err(source) => {
                let err = InvocationError::Busy {
                    label: self.spec.label(),
                    source,
                };
                self.record(&Err(err.clone()), started);
                return invocation_response(&err);
            }
        };
        let mut store = match self.new_store() {
            Ok(store) => store,
            Err(err) => {
                self.record(&Err(err.clone()), started);
                return invocation_response(&err);
            }
        };
        let request = request.map(|body| {
            Limited::new(body, max_body as usize).map_err(move |err| {
                if err.is::<LengthLimitError>() {
                    return wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max_body));
                }
                match err.downcast::<hyper::Error>() {
                    Ok(err) => wasmtime_wasi_http::Error::Hyper(*err),
                    Err(err) => wasmtime_wasi_http::Error::InternalError(Some(err.to_string())),
                }
            })
        });
        let prepared = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .and_then(|req| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let out = store.data_mut().http().new_response_outparam(tx)?;
                Ok((req, out, rx))
            });
        let (req, out, response_rx) = match prepared {
            Ok(parts) => parts,
            Err(err) => {
                return error_response(
                    400,
                    &format!(
                        "{}: cannot pass the request to the guest: {err:#}",
                        self.spec.label()
                    ),
                    false,
                )
            }
        };
        let workload = self.clone();
        let grace = self.spec.timeout + crate::engine::EPOCH_TICK * 10;
        // The guest runs in its own task so it can keep streaming the body after the
        // response head went out; the slot is held until it finishes.
        let task = tokio::spawn(async move {
            let _permit = permit;
            let call = async {
                let instance = workload
                    .timed_instantiate(proxy.instantiate_async(&mut store))
                    .await?;
                instance
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            let result = match tokio::time::timeout(grace, call).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(workload.classify(store.data(), &err)),
                Err(_) => Err(InvocationError::Timeout {
                    label: workload.spec.label(),
                    timeout: workload.spec.timeout,
                }),
            };
            workload.record(&result, started);
            result
        });
        match response_rx.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => error_response(
                500,
                &format!("{}: guest answered with error {code:?}", self.spec.label()),
                false,
            ),
            // The guest never set a response: the task tells why.
            Err(_) => match task.await {
                Ok(Err(err)) => invocation_response(&err),
                Ok(Ok(())) => error_response(
                    500,
                    &format!("{} returned without sending a response", self.spec.label()),
                    false,
                ),
                Err(join) => error_response(
                    500,
                    &format!("{} crashed: {join}", self.spec.label()),
                    false,
                ),
            },
        }
    }
}
