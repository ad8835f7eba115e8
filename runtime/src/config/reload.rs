//! What a reloaded configuration (SIGHUP) may change while the host runs, and what only
//! a restart applies.
//!
//! Reloadable: the partitions (added, removed, resized), the `[http]` `listen` and
//! `admin` addresses, `log-filter`, and the descriptive `[device]` keys that only shape
//! the capabilities documents (labels, vendor, model, serial, otel-collector). The rest
//! was built into long-lived parts at start (the state directory and its stores, the
//! WFM transport and identity, registry clients, the telemetry pipeline, connection
//! limits): a change there refuses the whole reload, naming each key, so that what
//! runs is always exactly one configuration file.

use super::Config;
use crate::ingress::HttpSettings;
use crate::margo::DeviceSettings;

/// The keys whose change in `new` needs a restart, in file order; empty when `new`
/// can be applied to a host running `old`.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check("state-dir", old.state_dir != new.state_dir);
    check("watch-interval", old.watch_interval != new.watch_interval);
    check("[device] id", old.device_id() != new.device_id());
    check("[device] mode", old.mode() != new.mode());
    check("[device] hosts", hosts(old) != hosts(new));
    check(
        "[http] (other than listen and admin)",
        connection_settings(&old.http) != connection_settings(&new.http),
    );
    check("[wfm]", old.wfm != new.wfm);
    check("[artifacts]", old.artifacts != new.artifacts);
    check("[registries]", old.registries != new.registries);
    check("[telemetry]", old.telemetry != new.telemetry);
    changed
}

fn hosts(config: &Config) -> bool {
    config
        .device
        .as_ref()
        .is_some_and(|d: &DeviceSettings| d.hosts)
}

/// `[http]` without the two addresses a reload may move.
fn connection_settings(http: &HttpSettings) -> HttpSettings {
    let defaults = HttpSettings::default();
    HttpSettings {
        listen: defaults.listen,
        admin: None,
        ..http.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
state-dir = "/var/lib/wasmgate"
[http]
listen = "127.0.0.1:8080"
admin = "127.0.0.1:8081"
[device]
id = "edge-01"
labels = { site = "a" }
[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
"#;

    fn with(edit: impl Fn(&str) -> String) -> Config {
        Config::parse(&edit(BASE)).unwrap()
    }

    #[test]
    fn partitions_addresses_labels_and_the_log_filter_reload() {
        let old = with(str::to_owned);
        let new = with(|b| {
            format!("log-filter = \"debug\"\n{b}")
                .replace("8080", "9090")
                .replace("8081", "9091")
                .replace("site = \"a\"", "site = \"b\"")
                .replace("memory = \"256Mi\"", "memory = \"128Mi\"")
                + "[[partition]]\nid = \"more\"\ncpu = 0.5\nmemory = \"64Mi\"\nstorage = \"1Mi\"\n"
        });
        assert_eq!(new.log_filter.as_deref(), Some("debug"));
        assert_eq!(new.partitions.len(), 2);
        assert_eq!(restart_only_changes(&old, &new), Vec::<&str>::new());
    }

    #[test]
    fn every_restart_only_key_is_named() {
        let old = with(str::to_owned);
        let new = with(|b| {
            format!("watch-interval = \"1s\"\n{b}")
                .replace("/var/lib/wasmgate", "/srv/wasmgate")
                .replace("id = \"edge-01\"", "id = \"edge-02\"\nmode = \"opaque\"")
                .replace(
                    "admin = \"127.0.0.1:8081\"",
                    "admin = \"127.0.0.1:8081\"\nidle-timeout = \"9s\"",
                )
                + "[artifacts]\ngc-grace = \"5m\"\n[telemetry]\nenabled = false\n"
        });
        assert_eq!(
            restart_only_changes(&old, &new),
            [
                "state-dir",
                "watch-interval",
                "[device] id",
                "[device] mode",
                "[http] (other than listen and admin)",
                "[artifacts]",
                "[telemetry]",
            ]
        );
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert!(restart_only_changes(&with(str::to_owned), &with(str::to_owned)).is_empty());
    }
}
