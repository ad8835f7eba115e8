//! `deviceConstraints` (capacity requirements and eligibility rules) evaluated against
//! a capabilities document. Input: a JSON object with `deviceConstraints` and
//! `capabilities`, or any JSON (then used as both).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wasmgate::deploy::eligibility::check;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let constraints = doc.get("deviceConstraints").unwrap_or(&doc);
    let capabilities = doc.get("capabilities").unwrap_or(&doc);
    let _ = check(Some(constraints), capabilities);
    // The rules must never depend on which of the two documents is which to stay
    // panic-free.
    let _ = check(Some(capabilities), constraints);
});
