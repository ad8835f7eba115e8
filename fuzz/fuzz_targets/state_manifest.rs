//! State manifest JSON as the WFM sends it (`GET .../deployments` body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::margo::types::{Digest, StateManifest};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = StateManifest::parse(data) else {
        return;
    };
    // What the client relies on after a successful parse.
    assert!(m.version.get() >= 1);
    assert_eq!(m.bundle.is_some(), !m.deployments.is_empty());
    let mut ids = std::collections::BTreeSet::new();
    for d in &m.deployments {
        assert!(!d.deployment_id.is_empty() && !d.url.is_empty());
        assert!(ids.insert(d.deployment_id.as_str()), "duplicate id passed");
        assert_eq!(Digest::parse(d.digest.as_str()).as_ref(), Ok(&d.digest));
        assert_eq!(d.digest.hex().len(), 64);
    }
});
