//! Deployment bundle extraction (gzip'd tar from the WFM).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::margo::bundle::{read_members, MAX_MEMBERS, MAX_MEMBER_BYTES};

/// Small enough that the fuzzer reaches the expansion limit with tiny inputs.
const LIMIT: u64 = 256 << 10;

fuzz_target!(|data: &[u8]| {
    let Ok(members) = read_members(data, LIMIT) else {
        return;
    };
    assert!(members.len() <= MAX_MEMBERS);
    let mut total = 0u64;
    for (digest, bytes) in &members {
        assert!(digest.matches(bytes));
        assert!(bytes.len() as u64 <= MAX_MEMBER_BYTES);
        total += bytes.len() as u64;
    }
    assert!(total <= LIMIT);
});
