//! The host's TOML configuration file, including `[wfm]` settings and downtime windows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmgate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    assert!(!config.partitions.is_empty());
    let _ = config.watch_interval();
    let _ = config.artifacts.max_component_size();
    let _ = config.artifacts.pull_timeout();
    if let Some(wfm) = &config.wfm {
        let _ = wfm.profile();
        assert!(!wfm.poll_interval.is_zero());
    }
});
