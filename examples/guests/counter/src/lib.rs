//! `counter` (world `http-function`): counts requests in the deployment's keyvalue bucket.
//!
//! Assumption shared with the host (and with wasmtime-wasi-keyvalue): `atomics.increment`
//! stores the counter as the ASCII decimal string of the new value, so `/peek` reads it back
//! with a plain `get` and a decimal parse.

use guest_kit::exports::wasi::http::incoming_handler::Guest;
use guest_kit::wasi::http::types::{IncomingRequest, ResponseOutparam};
use guest_kit::wasi::keyvalue::atomics;
use guest_kit::{bucket, get_u64, log, request_path, respond_text, Level};

const KEY: &str = "hits";

struct Counter;

impl Guest for Counter {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let peek = request_path(&request).ends_with("/peek");
        let hits = bucket().and_then(|bucket| {
            if peek {
                get_u64(&bucket, KEY)
            } else {
                atomics::increment(&bucket, KEY, 1).map_err(|err| format!("increment: {err:?}"))
            }
        });
        match hits {
            Ok(hits) => respond_text(out, 200, &format!("hits: {hits}\n")),
            Err(err) => {
                log(Level::Error, "counter", &err);
                respond_text(out, 500, &format!("{err}\n"));
            }
        }
    }
}

guest_kit::export!(Counter);
