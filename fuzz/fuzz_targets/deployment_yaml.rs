//! ApplicationDeployment YAML (a bundle member, a single deployment document, or a file
//! in the local deployments folder).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::deploy::model::{is_valid_device_id, Deployment, MIN_TIMER_PERIOD};

fuzz_target!(|data: &[u8]| {
    let Ok(d) = Deployment::from_yaml(data) else {
        return;
    };
    assert!(!d.name.trim().is_empty());
    assert!(!d.components.is_empty());
    if let Some(device) = &d.device_id {
        assert!(is_valid_device_id(device), "{device:?}");
    }
    let mut names = std::collections::BTreeSet::new();
    for c in &d.components {
        assert!(
            names.insert(c.name.as_str()),
            "duplicate component {:?}",
            c.name
        );
        if let Some(timer) = &c.extensions.timer {
            assert!(timer.every >= MIN_TIMER_PERIOD);
        }
    }
});
