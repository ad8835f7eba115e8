//! OCI references (`oci://...` + Margo `revision`) and image manifests from a registry.
//! Input: `repository`, then optionally NUL + `revision`, then optionally NUL + a
//! manifest body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::deploy::oci::parse_reference;
use wasmgate::fuzzing::oci_component_layer;

const MAX: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let repository = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let revision = parts.next().map(String::from_utf8_lossy);
    if let Ok(r) = parse_reference(&repository, revision.as_deref()) {
        assert!(r.display.starts_with("oci://"));
        // What a reference prints must parse back to the same reference.
        let again = parse_reference(&r.display, None).expect("display re-parses");
        assert_eq!(again.display, r.display);
    }
    let body = parts.next().unwrap_or(data);
    if let Ok((digest, size)) = oci_component_layer(body, MAX) {
        assert!(digest.starts_with("sha256:") && digest.len() == 71);
        assert!(size <= MAX);
    }
});
