//! HTTP triggers: one request, one `wasi:http/incoming-handler` call, in a fresh
//! instance or (with `reuse`) one parked by an earlier request of the same workload.

use super::body::{prefetch, BodyRate, BoxError, Paced, TooSlow, Tripwire};
use super::reuse::Warm;
use super::{InstanceState, InvocationError, Workload};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::WasiHttpView;

/// The body type every ingress response uses.
pub type ResponseBody = UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// What the guest sets through its `response-outparam`, sent straight to the request's
/// waiting side (no forwarding task: each hop between the partition's threads and the
/// ingress costs a wake-up).
type Head = Result<hyper::Response<ResponseBody>, ErrorCode>;

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

/// Maps a failure of the request body onto what `wasi:http` reports to the guest.
fn body_error(max_body: u64, err: BoxError) -> wasmtime_wasi_http::Error {
    if err.is::<LengthLimitError>() {
        return wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max_body));
    }
    match err.downcast::<hyper::Error>() {
        Ok(err) => wasmtime_wasi_http::Error::Hyper(*err),
        Err(err) => wasmtime_wasi_http::Error::InternalError(Some(err.to_string())),
    }
}

impl Workload {
    /// Serves `request` in a fresh instance. Never fails: every problem becomes an HTTP
    /// error response naming the deployment and what went wrong.
    ///
    /// The ingress passes hyper's `Incoming`; any body works (benchmarks pass an in-memory
    /// one to time exactly this path without a socket).
    ///
    /// The instance runs on the partition's own runtime (see [`crate::sandbox::GuestRuntime`]),
    /// so this future, on the ingress runtime, only waits. The body's first bytes are read
    /// before a slot is taken, under the minimum-rate rule of [`super::body`].
    pub async fn handle_http<B>(
        self: std::sync::Arc<Self>,
        request: hyper::Request<B>,
        max_body: u64,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.handle_http_paced(request, max_body, BodyRate::default())
            .await
    }

    /// [`Self::handle_http`] with an explicit body rule.
    pub async fn handle_http_paced<B>(
        self: std::sync::Arc<Self>,
        request: hyper::Request<B>,
        max_body: u64,
        rate: BodyRate,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(proxy) = self.http.clone() else {
            return error_response(
                500,
                &format!("{} has no HTTP handler", self.spec.label()),
                false,
            );
        };
        let (parts, body) = request.into_parts();
        let tripwire = Tripwire::default();
        let paced = Paced::new(
            Limited::new(body, max_body as usize),
            rate,
            tripwire.clone(),
        );
        let body = match prefetch(paced).await {
            Ok(body) => body,
            Err(err) => return self.unread_body(max_body, err),
        };
        // Invocation time counts from admission, as without a body.
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
        let request =
            hyper::Request::from_parts(parts, body.map_err(move |err| body_error(max_body, err)));
        let (head_tx, head) = tokio::sync::oneshot::channel::<Head>();
        let workload = self.clone();
        // The guest runs in its own task so it can keep streaming the body after the
        // response head went out; the slot is held until it finishes.
        // The request's span follows the guest onto the partition's runtime.
        let task = self
            .spec
            .partition
            .guests()
            .spawn(tracing::Instrument::instrument(
                async move {
                    let _permit = permit;
                    workload.run_http(proxy, request, head_tx, started).await
                },
                tracing::Span::current(),
            ));
        let response = tokio::select! {
            response = head => response,
            () = tripwire.tripped() => {
                // No head yet and the client stalls: stop the instance, free its slot.
                task.abort();
                return error_response(408, &format!("{}: {}", self.spec.label(), TooSlow(rate)), false);
            }
        };
        match response {
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

    /// The answer to a request whose body failed before it was admitted.
    fn unread_body(&self, max_body: u64, err: BoxError) -> hyper::Response<ResponseBody> {
        let label = self.spec.label();
        if let Some(slow) = err.downcast_ref::<TooSlow>() {
            return error_response(408, &format!("{label}: {slow}"), false);
        }
        if err.is::<LengthLimitError>() {
            return error_response(
                413,
                &format!("{label}: the request body exceeds {max_body} bytes"),
                false,
            );
        }
        error_response(
            400,
            &format!("{label}: cannot read the request body: {err}"),
            false,
        )
    }

    /// An instance this workload parked, ready for one more request.
    fn warm(&self) -> Option<Warm> {
        self.spec.reuse?;
        let parked = self.spec.partition.idle().take(self.owner)?;
        let mut warm = *parked.downcast::<Warm>().ok()?;
        let state = warm.store.data_mut();
        state.clock.restart(self.spec.timeout);
        state.limiter.clear_denial();
        warm.store.set_epoch_deadline(1);
        Some(warm)
    }

    /// Instantiates (or takes a parked instance) and calls the guest's handler, which
    /// sends the response head on `head` as soon as it sets one; when there is none, the
    /// result says why. Runs on the partition's runtime.
    async fn run_http<B>(
        self: std::sync::Arc<Self>,
        proxy: ProxyPre<InstanceState>,
        request: hyper::Request<B>,
        head: tokio::sync::oneshot::Sender<Head>,
        started: std::time::Instant,
    ) -> Result<(), InvocationError>
    where
        B: hyper::body::Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static,
    {
        let (mut store, reused, served) = match self.warm() {
            Some(warm) => (warm.store, Some(warm.proxy), warm.served),
            None => match self.new_store() {
                Ok(store) => (store, None, 0),
                Err(err) => {
                    self.record(&Err(err.clone()), started);
                    return Err(err);
                }
            },
        };
        let req = match store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
        {
            Ok(req) => req,
            Err(err) => {
                let _ = head.send(Ok(error_response(
                    400,
                    &format!(
                        "{}: cannot pass the request to the guest: {err:#}",
                        self.spec.label()
                    ),
                    false,
                )));
                return Ok(());
            }
        };
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(head)
            .map_err(|err| self.failed(format!("cannot create its response: {err:#}")))?;
        let grace = self.spec.timeout + crate::engine::EPOCH_TICK * 10;
        let call = async {
            let instance = match reused {
                Some(instance) => instance,
                None => {
                    self.timed_instantiate(proxy.instantiate_async(&mut store))
                        .await?
                }
            };
            // The handler's own span: its log lines and output are tied to it.
            let guest = tracing::info_span!(
                "wasmgate.guest",
                wasmgate.deployment = %self.spec.deployment_name,
                wasmgate.component = %self.spec.component,
                wasmgate.partition = %self.spec.partition.device_id,
            );
            tracing::Instrument::instrument(
                instance
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out),
                guest,
            )
            .await?;
            Ok::<_, wasmtime::Error>(instance)
        };
        let (result, finished) = match tokio::time::timeout(grace, call).await {
            Ok(Ok(instance)) => (Ok(()), Some(instance)),
            Ok(Err(err)) => (Err(self.classify(store.data(), &err)), None),
            Err(_) => (
                Err(InvocationError::Timeout {
                    label: self.spec.label(),
                    timeout: self.spec.timeout,
                }),
                None,
            ),
        };
        self.record(&result, started);
        // Only an instance that answered within every limit serves again.
        if let (Some(reuse), Some(proxy)) = (self.spec.reuse, finished) {
            let served = served + 1;
            if served < reuse.requests && store.data().limiter.denial.is_none() {
                let warm = Warm {
                    store,
                    proxy,
                    served,
                };
                self.spec
                    .partition
                    .park(self.owner, Box::new(warm), reuse.idle_timeout);
                return result;
            }
        }
        drop(store);
        result
    }
}
