//! `plain-hello`: the benchmark guest. It imports nothing beyond `wasi:http/proxy` (plus
//! what Rust `std` pulls in from `wasi:cli`), so `wasmtime serve` runs it unchanged and
//! the side-by-side comparison serves the very same bytes on both runtimes.
//!
//! It also exports a `margo:edge/event-handler` whose `handle` returns at once: the warm
//! dispatch benchmark calls it to measure the cost of a call, not of the work in it.
//! Extra exports are ignored by `wasmtime serve`.

use exports::margo::edge::event_handler::{self, Trigger};
use exports::wasi::http::incoming_handler;
use guest_kit::respond_text;
use guest_kit::wasi::http::types::{IncomingRequest, ResponseOutparam};

// Only the exports are generated here; every import is the kit's (and only the HTTP ones
// are used, so the component imports nothing else from the platform).
wit_bindgen::generate!({
    path: "../../../wit",
    world: "margo:edge/http-and-event-function",
    with: {
        "wasi:cli/stdin@0.2.12": guest_kit::wasi::cli::stdin,
        "wasi:cli/stdout@0.2.12": guest_kit::wasi::cli::stdout,
        "wasi:cli/stderr@0.2.12": guest_kit::wasi::cli::stderr,
        "wasi:clocks/monotonic-clock@0.2.12": guest_kit::wasi::clocks::monotonic_clock,
        "wasi:clocks/wall-clock@0.2.12": guest_kit::wasi::clocks::wall_clock,
        "wasi:config/store@0.2.0-rc.1": guest_kit::wasi::config::store,
        "wasi:http/types@0.2.12": guest_kit::wasi::http::types,
        "wasi:http/outgoing-handler@0.2.12": guest_kit::wasi::http::outgoing_handler,
        "wasi:io/error@0.2.12": guest_kit::wasi::io::error,
        "wasi:io/poll@0.2.12": guest_kit::wasi::io::poll,
        "wasi:io/streams@0.2.12": guest_kit::wasi::io::streams,
        "wasi:keyvalue/store@0.2.0-draft": guest_kit::wasi::keyvalue::store,
        "wasi:keyvalue/atomics@0.2.0-draft": guest_kit::wasi::keyvalue::atomics,
        "wasi:logging/logging@0.1.0-draft": guest_kit::wasi::logging::logging,
        "wasi:random/random@0.2.12": guest_kit::wasi::random::random,
    },
});

struct PlainHello;

impl incoming_handler::Guest for PlainHello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        respond_text(out, 200, "Hello, world!\n");
    }
}

impl event_handler::Guest for PlainHello {
    fn handle(_event: Trigger) -> Result<(), String> {
        Ok(())
    }
}

export!(PlainHello);
