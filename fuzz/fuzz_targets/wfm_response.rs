//! What the runtime parses of WFM responses besides manifests and bundles: problem
//! details, SPIFFE trust bundles (JWK set or PEM), and the URI SANs / SPIFFE ID of a
//! certificate. The runtime has no RFC 9421 `Signature-Input` parser of its own (it
//! only signs; WFM responses are not signed), so this stands in for that item.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::margo::tls::{spiffe_id, uri_sans, TrustBundle};
use wasmgate::margo::types::Problem;

fuzz_target!(|data: &[u8]| {
    if let Some(p) = Problem::parse(data) {
        if let Some(fragment) = p.margo_type() {
            assert!(!fragment.contains('#'));
        }
    }
    if let Ok(bundle) = TrustBundle::parse(data) {
        assert!(!bundle.anchors.is_empty());
    }
    if let Ok(id) = spiffe_id(data) {
        assert!(id.starts_with("spiffe://"));
    }
    let _ = uri_sans(data);
});
