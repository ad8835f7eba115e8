//! Paths of the example guest components, built by `build.rs` from `examples/guests` into
//! `target/guests/wasm32-wasip2/release/`.
//!
//! Cargo reruns the build when guest sources or `wit/` change, not when `target/guests` is
//! deleted on its own: then `touch examples/build.rs` (or `cargo clean -p wasmgate-examples`).

/// `hello` (world `http-function`): greets with the `greeting` and `name` parameters.
pub const HELLO: &str = env!("WASMGATE_GUEST_HELLO");
/// `counter` (world `http-function`): counts hits in the keyvalue store; `/peek` reads only.
pub const COUNTER: &str = env!("WASMGATE_GUEST_COUNTER");
/// `sensor-filter` (world `http-and-event-function`): timer-driven moving average.
pub const SENSOR_FILTER: &str = env!("WASMGATE_GUEST_SENSOR_FILTER");
/// `misbehave` (world `http-function`): hostile behaviours for sandboxing tests.
pub const MISBEHAVE: &str = env!("WASMGATE_GUEST_MISBEHAVE");
/// `plain-hello`: imports only `wasi:http/proxy` (no platform services), so `wasmtime serve`
/// runs it too; its `margo:edge/event-handler` export returns at once. The benchmark guest.
pub const PLAIN_HELLO: &str = env!("WASMGATE_GUEST_PLAIN_HELLO");

/// Every example as `(name, path)`.
pub fn all() -> [(&'static str, &'static str); 5] {
    [
        ("hello", HELLO),
        ("counter", COUNTER),
        ("sensor-filter", SENSOR_FILTER),
        ("misbehave", MISBEHAVE),
        ("plain-hello", PLAIN_HELLO),
    ]
}

#[cfg(test)]
mod tests {
    use super::all;

    /// `\0asm` then version 0x0d with layer 1: a component, not a core module (`01 00 00 00`).
    const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[test]
    fn every_guest_is_a_built_component() {
        for (name, path) in all() {
            assert!(
                std::path::Path::new(path).is_absolute(),
                "{name}: {path} is not absolute"
            );
            let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{name}: {path}: {err}"));
            assert!(
                bytes.starts_with(&COMPONENT_HEADER),
                "{name}: {path} does not start with the component header"
            );
        }
    }
}
