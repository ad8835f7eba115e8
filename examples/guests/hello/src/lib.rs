//! `hello` (world `http-function`): greets with the deployment's `greeting` and `name`
//! parameters, which reach the component through `wasi:config`.

use guest_kit::exports::wasi::http::incoming_handler::Guest;
use guest_kit::wasi::http::types::{IncomingRequest, ResponseOutparam};
use guest_kit::{config_or, log, respond_text, Level};

struct Hello;

impl Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let greeting = config_or("greeting", "Hello");
        let name = config_or("name", "world");
        log(Level::Info, "hello", &format!("greeting {name}"));
        respond_text(out, 200, &format!("{greeting}, {name}!\n"));
    }
}

guest_kit::export!(Hello);
