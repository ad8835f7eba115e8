//! Capabilities and status (de)serialisation. The input is tried as a status report
//! (JSON, must round-trip) and as a host config (TOML) whose capabilities documents
//! are built for both profiles and must serialise and parse back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::config::Config;
use wasmgate::margo::capabilities::{documents, DeviceIdentity};
use wasmgate::margo::types::StatusReport;
use wasmgate::margo::Profile;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = serde_json::from_slice::<StatusReport>(data) {
        let bytes = serde_json::to_vec(&report).expect("a status report serialises");
        let back: StatusReport = serde_json::from_slice(&bytes).expect("and parses back");
        assert_eq!(back, report);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    let device = config.device_profile();
    let identity = DeviceIdentity {
        id: device.id.to_string(),
        vendor: "v".into(),
        model: "m".into(),
        serial: "s".into(),
    };
    for profile in [Profile::Rc3, Profile::Rc2] {
        let docs = documents(&device, &identity, profile);
        assert!(!docs.is_empty());
        for (device_id, doc) in docs {
            assert!(device_id.starts_with(&identity.id));
            let bytes = serde_json::to_vec(&doc).expect("capabilities serialise");
            let back: serde_json::Value = serde_json::from_slice(&bytes).expect("and parse back");
            assert_eq!(back, doc);
        }
    }
});
