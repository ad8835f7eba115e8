//! `deviceId`, partition / ID segments, SPIFFE client IDs and `sha256:` digests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::types::is_valid_id_segment;
use wasmgate::deploy::model::is_valid_device_id;
use wasmgate::margo::tls::ClientIdentity;
use wasmgate::margo::types::Digest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = Digest::parse(&String::from_utf8_lossy(data));
        return;
    };
    if let Ok(d) = Digest::parse(text) {
        assert_eq!(d.as_str(), text);
        assert_eq!(d.hex().len(), 64);
        assert!(d
            .hex()
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
    assert!(Digest::parse(Digest::of(data).as_str()).is_ok());
    if is_valid_device_id(text) {
        // Device IDs end up in URLs and file names: no separators beyond '/'.
        let body = text.strip_suffix("/*").unwrap_or(text);
        assert!(body.split('/').all(|s| !s.is_empty() && s != "*"));
        assert!(!text.contains(['\\', '?', '#', '%', ' ', '\n', '"']));
    }
    if is_valid_id_segment(text) {
        assert!(!text.contains('/') && text.len() <= 128);
    }
    if let Ok(id) = ClientIdentity::parse(text) {
        assert!(!id.trust_domain.is_empty() && !id.client_id.is_empty());
        assert!(!id.client_id.contains('/') && !id.wfm_id.contains('/'));
    }
});
