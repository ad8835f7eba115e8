//! `sensor-filter` (world `http-and-event-function`): a timer samples a simulated sensor and
//! keeps a moving average in the keyvalue bucket; an HTTP route reads it back as JSON.
//!
//! Bucket layout: `samples` holds the last `window` readings as a comma-separated list of
//! decimals, `average` their mean as a decimal string, `ticks` the number of events handled
//! (a counter kept with `atomics.increment`, stored as ASCII decimal).

use exports::margo::edge::event_handler::{self, Trigger};
use exports::wasi::http::incoming_handler;
use guest_kit::wasi::http::types::{IncomingRequest, ResponseOutparam};
use guest_kit::wasi::keyvalue::atomics;
use guest_kit::wasi::keyvalue::store::Bucket;
use guest_kit::{bucket, config_parse_or, get_u64, log, respond, respond_text, Level};

// Only the exports are generated here; every import is the kit's, so its helpers apply.
wit_bindgen::generate!({
    path: "../../../wit",
    world: "margo:edge/http-and-event-function",
    with: {
        "wasi:cli/stdin@0.2.12": guest_kit::wasi::cli::stdin,
        "wasi:cli/stdout@0.2.12": guest_kit::wasi::cli::stdout,
        "wasi:cli/stderr@0.2.12": guest_kit::wasi::cli::stderr,
        "wasi:clocks/monotonic-clock@0.2.12": guest_kit::wasi::clocks::monotonic_clock,
        "wasi:clocks/wall-clock@0.2.12": guest_kit::wasi::clocks::wall_clock,
        "wasi:config/store@0.2.0-rc.1": guest_kit::wasi::config::store,
        "wasi:http/types@0.2.12": guest_kit::wasi::http::types,
        "wasi:http/outgoing-handler@0.2.12": guest_kit::wasi::http::outgoing_handler,
        "wasi:io/error@0.2.12": guest_kit::wasi::io::error,
        "wasi:io/poll@0.2.12": guest_kit::wasi::io::poll,
        "wasi:io/streams@0.2.12": guest_kit::wasi::io::streams,
        "wasi:keyvalue/store@0.2.0-draft": guest_kit::wasi::keyvalue::store,
        "wasi:keyvalue/atomics@0.2.0-draft": guest_kit::wasi::keyvalue::atomics,
        "wasi:logging/logging@0.1.0-draft": guest_kit::wasi::logging::logging,
        "wasi:random/random@0.2.12": guest_kit::wasi::random::random,
    },
});

const CONTEXT: &str = "sensor-filter";
const DEFAULT_WINDOW: usize = 5;

/// The simulated reading for tick `sequence`: deterministic, so tests can predict it.
fn reading(sequence: u64) -> f64 {
    20.0 + 5.0 * (sequence as f64 / 3.0).sin()
}

fn parse_samples(bytes: Option<Vec<u8>>) -> Vec<f64> {
    let bytes = bytes.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    text.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Appends `value`, keeps the newest `window` samples and returns their mean.
fn push_sample(samples: &mut Vec<f64>, value: f64, window: usize) -> f64 {
    samples.push(value);
    let excess = samples.len().saturating_sub(window);
    samples.drain(..excess);
    samples.iter().sum::<f64>() / samples.len() as f64
}

fn load_samples(bucket: &Bucket) -> Result<Vec<f64>, String> {
    let stored = bucket
        .get("samples")
        .map_err(|e| format!("get samples: {e:?}"))?;
    Ok(parse_samples(stored))
}

fn set(bucket: &Bucket, key: &str, value: &str) -> Result<(), String> {
    bucket
        .set(key, value.as_bytes())
        .map_err(|e| format!("set {key}: {e:?}"))
}

fn sample(sequence: u64) -> Result<(), String> {
    let window = config_parse_or("window", DEFAULT_WINDOW).max(1);
    let bucket = bucket()?;

    let mut samples = load_samples(&bucket)?;
    let average = push_sample(&mut samples, reading(sequence), window);

    let list: Vec<String> = samples.iter().map(f64::to_string).collect();
    set(&bucket, "samples", &list.join(","))?;
    set(&bucket, "average", &average.to_string())?;
    atomics::increment(&bucket, "ticks", 1).map_err(|e| format!("increment ticks: {e:?}"))?;

    log(
        Level::Info,
        CONTEXT,
        &format!("average={average:.3} over {} samples", samples.len()),
    );
    Ok(())
}

fn summary() -> Result<String, String> {
    let bucket = bucket()?;
    let samples = load_samples(&bucket)?.len();
    let ticks = get_u64(&bucket, "ticks")?;
    let average = bucket
        .get("average")
        .map_err(|e| format!("get average: {e:?}"))?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        // JSON has no NaN or infinity.
        .filter(|value| value.is_finite())
        .map_or_else(|| "null".to_string(), |value| value.to_string());
    Ok(format!(
        "{{\"average\": {average}, \"samples\": {samples}, \"ticks\": {ticks}}}\n"
    ))
}

struct SensorFilter;

impl event_handler::Guest for SensorFilter {
    fn handle(event: Trigger) -> Result<(), String> {
        match event {
            Trigger::Timer(tick) => sample(tick.sequence),
        }
    }
}

impl incoming_handler::Guest for SensorFilter {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        match summary() {
            Ok(json) => respond(out, 200, "application/json", json.as_bytes()),
            Err(err) => {
                log(Level::Error, CONTEXT, &err);
                respond_text(out, 500, &format!("{err}\n"));
            }
        }
    }
}

export!(SensorFilter);

// Run on the build machine: `cargo test -p sensor-filter --target x86_64-unknown-linux-gnu`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_deterministic() {
        assert_eq!(reading(0), 20.0);
        assert!((reading(3) - (20.0 + 5.0 * 1f64.sin())).abs() < 1e-12);
    }

    #[test]
    fn samples_round_trip() {
        let parsed = parse_samples(Some(b"20,21.5, 19.25".to_vec()));
        assert_eq!(parsed, vec![20.0, 21.5, 19.25]);
        assert!(parse_samples(None).is_empty());
    }

    #[test]
    fn keeps_a_moving_window() {
        let mut samples = vec![1.0, 2.0];
        assert_eq!(push_sample(&mut samples, 3.0, 3), 2.0);
        assert_eq!(push_sample(&mut samples, 7.0, 3), 4.0);
        assert_eq!(samples, vec![2.0, 3.0, 7.0]);
        assert_eq!(push_sample(&mut samples, 5.0, 1), 5.0);
    }
}
