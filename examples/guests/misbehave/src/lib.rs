//! `misbehave` (world `http-function`): deliberately hostile behaviours for the host's
//! sandboxing tests, chosen by the last path segment (`/misbehave/spin`, ...):
//!
//! - `ok`: answers 200 `ok`.
//! - `spin`, `alloc`, `stack`: loops forever, grows memory, overflows the call stack.
//! - `escape`: tries to read files outside its preopens and round-trips `/data`.
//! - `busy?ms=N`: burns CPU for N ms. `drain`: reads the whole request body.
//! - `drip?chunks=N&ms=M`: a slow streaming response.
//! - `panic?msg=TEXT`, `shout?lines=N`: a guest panic, a burst of stdout lines.
//! - `count`: how many requests this instance has served, itself included (always 1
//!   unless the host reuses instances).
//! - `fetch?url=http://HOST:PORT/PATH`: an outgoing `wasi:http` GET (the URL is taken as
//!   is, not percent-decoded). 200 with `upstream STATUS` and the upstream's body, or 502
//!   with the error code's debug text (`HttpRequestDenied` outside the `outbound`
//!   allow-list).

use core::hint::black_box;
use core::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use guest_kit::exports::wasi::http::incoming_handler::Guest;
use guest_kit::wasi::http::outgoing_handler;
use guest_kit::wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use guest_kit::wasi::io::streams::StreamError;
use guest_kit::{query_param, request_path, respond_text};

const MIB: usize = 1 << 20;

/// Requests served by this instance: state that survives only in a reused instance.
static SERVED: AtomicU32 = AtomicU32::new(0);

/// Never returns: only fuel, epoch interruption or a timeout stops it.
fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        // `black_box` keeps the loop body observable so it is not folded away.
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Grows memory until the host's limit (or the 4 GiB address space) makes allocation fail,
/// which aborts the instance.
fn alloc() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; MIB];
        // Write every page so the memory is really committed on the host.
        for byte in chunk.iter_mut().step_by(4096) {
            *byte = 1;
        }
        hoard.push(black_box(chunk));
    }
}

/// Non-tail recursion until the wasm call stack (or the shadow stack in linear memory)
/// overflows and traps.
fn recurse(depth: u64) -> u64 {
    // A condition the optimiser cannot decide keeps this from being an infinite-recursion
    // lint error while never being true in practice.
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let below = recurse(black_box(depth + 1));
    black_box(below.wrapping_add(depth))
}

/// Reads `path` and reports success, or the error text.
fn try_read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|err| format!("{path}: {err}"))
}

/// Round-trips a file through the (optional) per-deployment `/data` preopen.
fn probe_data_dir() -> String {
    const PROBE: &str = "/data/probe.txt";
    const CONTENT: &str = "wasmgate probe\n";
    let result = std::fs::write(PROBE, CONTENT)
        .map_err(|err| format!("write {PROBE}: {err}"))
        .and_then(|()| try_read(PROBE))
        .and_then(|read| {
            if read == CONTENT {
                Ok(())
            } else {
                Err(format!("{PROBE}: read back {read:?}"))
            }
        });
    match result {
        Ok(()) => "data-dir: ok".to_string(),
        Err(err) => format!("data-dir: {err}"),
    }
}

fn escape(out: ResponseOutparam) {
    let targets = ["/etc/passwd", "../../etc/passwd", "/data/../../etc/passwd"];
    let mut errors = Vec::new();
    let mut leaked = None;
    for path in targets {
        match try_read(path) {
            Ok(_) => {
                leaked = Some(path);
                break;
            }
            Err(err) => errors.push(err),
        }
    }
    let data_dir = probe_data_dir();
    match leaked {
        Some(path) => respond_text(out, 200, &format!("LEAKED {path}\n{data_dir}\n")),
        None => respond_text(
            out,
            403,
            &format!("denied: {}\n{data_dir}\n", errors.join("; ")),
        ),
    }
}

/// Burns CPU for `ms` milliseconds of monotonic time (`Instant` is `wasi:clocks/monotonic-clock`).
fn busy(ms: u64) -> u64 {
    let deadline = Duration::from_millis(ms);
    let start = Instant::now();
    let mut iterations: u64 = 0;
    while start.elapsed() < deadline {
        for _ in 0..1000 {
            iterations = black_box(iterations + 1);
        }
    }
    iterations
}

/// Reads the whole request body, however slowly it arrives, and returns its size.
fn drain(request: IncomingRequest) -> Result<u64, String> {
    let body = request
        .consume()
        .map_err(|()| "the body was already taken".to_string())?;
    let stream = body
        .stream()
        .map_err(|()| "the body stream was already taken".to_string())?;
    let mut total = 0u64;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => total += chunk.len() as u64,
            Err(StreamError::Closed) => return Ok(total),
            Err(StreamError::LastOperationFailed(err)) => return Err(err.to_debug_string()),
        }
    }
}

/// Sends the head at once, then `chunks` lines one `every` apart: a slow streaming
/// response, for the host's drain-on-shutdown tests.
fn drip(out: ResponseOutparam, chunks: u32, every: Duration) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .expect("content-type is a valid header");
    let response = OutgoingResponse::new(headers);
    let body = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = body.write().expect("stream is taken once");
        for i in 0..chunks {
            std::thread::sleep(every);
            let line = format!("chunk {i}\n");
            if stream.blocking_write_and_flush(line.as_bytes()).is_err() {
                return;
            }
        }
        // The stream is a child of the body and must be dropped before `finish`.
    }
    let _ = OutgoingBody::finish(body, None);
}

/// GETs `url` through `wasi:http/outgoing-handler`: the upstream's status and (at most
/// 64 KiB of) its body, or the error as text.
fn fetch(url: &str) -> Result<(u16, String), String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!("not an http(s) URL: {url:?}"));
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&scheme))
        .and_then(|()| request.set_authority(Some(authority)))
        .and_then(|()| request.set_path_with_query(Some(path)))
        .map_err(|()| format!("invalid URL {url:?}"))?;
    let pending = outgoing_handler::handle(request, None).map_err(|code| format!("{code:?}"))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(format!("{code:?}")),
        Some(Err(())) => return Err("the response was already taken".into()),
        None => return Err("no response after the pollable was ready".into()),
    };
    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| "the response body was already taken".to_string())?;
    let mut bytes = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| "the response stream was already taken".to_string())?;
        while bytes.len() < 64 * 1024 {
            match stream.blocking_read(64 * 1024 - bytes.len() as u64) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(err)) => return Err(err.to_debug_string()),
            }
        }
        // The stream is a child of the body and must be dropped before `finish`.
    }
    drop(IncomingBody::finish(body));
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

struct Misbehave;

impl Guest for Misbehave {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let path = request_path(&request);
        let action = path.rsplit('/').next().unwrap_or_default();
        match action {
            "ok" => respond_text(out, 200, "ok\n"),
            "count" => respond_text(out, 200, &format!("count {served}\n")),
            "spin" => spin(),
            "alloc" => alloc(),
            "stack" => {
                let depth = recurse(0);
                // Unreachable in practice; answering keeps the result used.
                respond_text(out, 500, &format!("stack survived: {depth}\n"));
            }
            "escape" => escape(out),
            "busy" => {
                let ms = query_param(&request, "ms")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(1000);
                let iterations = busy(ms);
                respond_text(out, 200, &format!("iterations: {iterations}\n"));
            }
            "drain" => match drain(request) {
                Ok(bytes) => respond_text(out, 200, &format!("read {bytes} bytes\n")),
                Err(err) => respond_text(out, 400, &format!("reading the body: {err}\n")),
            },
            "drip" => {
                let number = |name, default| {
                    query_param(&request, name)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(default)
                };
                let chunks = number("chunks", 5);
                let ms = number("ms", 500);
                drip(out, chunks, Duration::from_millis(u64::from(ms)));
            }
            "panic" => {
                let message = query_param(&request, "msg").unwrap_or_else(|| "boom".into());
                println!("about to panic: {message}");
                panic!("guest panic: {message}");
            }
            "shout" => {
                let lines: u32 = query_param(&request, "lines")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(10);
                for i in 0..lines {
                    println!("shout {i}");
                }
                respond_text(out, 200, &format!("shouted {lines} lines\n"));
            }
            "fetch" => match query_param(&request, "url").map(|url| fetch(&url)) {
                None => respond_text(out, 400, "fetch needs ?url=\n"),
                Some(Ok((status, body))) => {
                    respond_text(out, 200, &format!("upstream {status}\n{body}"))
                }
                Some(Err(err)) => respond_text(out, 502, &format!("fetch failed: {err}\n")),
            },
            _ => respond_text(out, 404, &format!("unknown behaviour {action:?}\n")),
        }
    }
}

guest_kit::export!(Misbehave);
