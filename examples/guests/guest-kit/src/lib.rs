//! Bindings for `margo:edge/http-function`, generated once for all example guests, plus
//! small helpers so each guest stays a screenful of code.
//!
//! HTTP-only guests implement [`exports::wasi::http::incoming_handler::Guest`] and call
//! `guest_kit::export!(MyType)`. A guest of another world generates its own exports and maps
//! its imports onto the modules here with `with:` (see `sensor-filter`), so that the kit's
//! helpers accept its types.

// Lets the generated code name this crate by the same path from inside and outside.
extern crate self as guest_kit;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "margo:edge/http-function",
    pub_export_macro: true,
    default_bindings_module: "guest_kit",
    // Guests then need no direct dependency on wit-bindgen to use `export!`.
    runtime_path: "guest_kit::wit_bindgen::rt",
    generate_all,
});

pub use wit_bindgen;

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::keyvalue::store::{self, Bucket};
pub use wasi::logging::logging::Level;

/// The keyvalue bucket every example uses; the host scopes it to the deployment.
pub const BUCKET: &str = "default";

/// Sends a complete response with a `content-type` header and `body`.
pub fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers =
        Fields::from_list(&[("content-type".to_string(), content_type.as_bytes().to_vec())])
            .expect("content-type is a valid header");
    let response = OutgoingResponse::new(headers);
    response
        .set_status_code(status)
        .expect("status code is valid");
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = outgoing.write().expect("stream is taken once");
        // `blocking-write-and-flush` accepts at most 4096 bytes per call.
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                // The client went away; nothing useful is left to do.
                return;
            }
        }
        // The stream is a child of the body and must be dropped before `finish`.
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Shorthand for a `text/plain` response.
pub fn respond_text(out: ResponseOutparam, status: u16, body: &str) {
    respond(out, status, "text/plain", body.as_bytes());
}

/// The request's path without its query string (`/` when the host sent none).
pub fn request_path(request: &IncomingRequest) -> String {
    let full = request.path_with_query().unwrap_or_else(|| "/".to_string());
    path_of(&full).to_string()
}

/// The value of query parameter `name` in the request, if present.
pub fn query_param(request: &IncomingRequest, name: &str) -> Option<String> {
    query_value(&request.path_with_query()?, name).map(str::to_string)
}

/// The path part of a `path-with-query`.
pub fn path_of(path_with_query: &str) -> &str {
    path_with_query
        .split_once('?')
        .map_or(path_with_query, |(path, _)| path)
}

/// The value of query parameter `name` in a `path-with-query` (no percent-decoding: the
/// examples only take numbers).
pub fn query_value<'a>(path_with_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_with_query.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// A `wasi:config` value, or `default` when the key is unset or the store fails.
pub fn config_or(key: &str, default: &str) -> String {
    match wasi::config::store::get(key) {
        Ok(Some(value)) => value,
        Ok(None) => default.to_string(),
        Err(err) => {
            log(Level::Warn, "guest-kit", &format!("config {key}: {err:?}"));
            default.to_string()
        }
    }
}

/// A `wasi:config` value parsed as `T`, or `default` when unset or unparsable.
pub fn config_parse_or<T: core::str::FromStr>(key: &str, default: T) -> T {
    match wasi::config::store::get(key) {
        Ok(Some(value)) => value.trim().parse().unwrap_or(default),
        _ => default,
    }
}

/// Opens the deployment's [`BUCKET`].
pub fn bucket() -> Result<Bucket, String> {
    store::open(BUCKET).map_err(|err| format!("open bucket {BUCKET:?}: {err:?}"))
}

/// Reads a decimal `u64` (the format `wasi:keyvalue/atomics.increment` stores); a missing
/// key reads as 0.
pub fn get_u64(bucket: &Bucket, key: &str) -> Result<u64, String> {
    match bucket
        .get(key)
        .map_err(|err| format!("get {key}: {err:?}"))?
    {
        None => Ok(0),
        Some(bytes) => core::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .ok_or_else(|| format!("{key} is not a decimal u64")),
    }
}

/// Logs through `wasi:logging`.
pub fn log(level: Level, context: &str, message: &str) {
    wasi::logging::logging::log(level, context, message);
}

// Run on the build machine: `cargo test -p guest-kit --target x86_64-unknown-linux-gnu`.
#[cfg(test)]
mod tests {
    use super::{path_of, query_value};

    #[test]
    fn splits_path_and_query() {
        assert_eq!(path_of("/misbehave/busy?ms=5"), "/misbehave/busy");
        assert_eq!(path_of("/counter/peek"), "/counter/peek");
        assert_eq!(query_value("/busy?x=1&ms=250", "ms"), Some("250"));
        assert_eq!(query_value("/busy?flag&ms", "ms"), Some(""));
        assert_eq!(query_value("/busy?msx=1", "ms"), None);
        assert_eq!(query_value("/busy", "ms"), None);
    }
}
