//! The `[wfm]` section of the host configuration.

use crate::units::HumanDuration;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Margo 1.0.0-rc.3: mutual TLS with X.509-SVIDs.
    #[default]
    Rc3,
    /// The gateway-SUP era (rc.2): onboarding, `clientId` paths, RFC 9421 signatures.
    Rc2,
}

/// Hours of the day, `"HH:MM-HH:MM"` in UTC; may wrap midnight (`"22:00-06:00"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyWindow {
    start_min: u32,
    end_min: u32,
}

impl DailyWindow {
    pub fn parse(text: &str) -> Result<Self, String> {
        let err = || format!("{text:?}: expected HH:MM-HH:MM (UTC), e.g. 22:00-06:00");
        let (a, b) = text.split_once('-').ok_or_else(err)?;
        let minutes = |s: &str| -> Result<u32, String> {
            let (h, m) = s.trim().split_once(':').ok_or_else(err)?;
            let (h, m): (u32, u32) = (h.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?);
            if h > 24 || m > 59 || (h == 24 && m > 0) {
                return Err(err());
            }
            Ok(h * 60 + m)
        };
        Ok(Self {
            start_min: minutes(a)?,
            end_min: minutes(b)?,
        })
    }

    /// Whether `minute_of_day` (UTC) falls inside the window.
    pub fn contains(&self, minute_of_day: u32) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start_min || minute_of_day < self.end_min
        }
    }
}

impl<'de> Deserialize<'de> for DailyWindow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A one-off window of known downtime, RFC 3339 UTC timestamps as Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downtime {
    pub from_unix: u64,
    pub until_unix: u64,
}

/// `[wfm]` as written: every key of both profiles, checked and turned into
/// [`WfmSettings`] as it is deserialized.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWfm {
    url: url::Url,
    #[serde(default)]
    profile: Profile,
    poll_interval: Option<HumanDuration>,
    polling_window: Option<DailyWindow>,
    #[serde(default)]
    downtime: Vec<String>,
    // rc3
    svid_cert: Option<PathBuf>,
    svid_key: Option<PathBuf>,
    trust_bundle: Option<PathBuf>,
    discovery_url: Option<url::Url>,
    pinned_ca: Option<PathBuf>,
    // rc2
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    root_ca: Option<PathBuf>,
    max_bundle_size: Option<crate::units::ByteSize>,
}

/// Where an rc.3 device gets the trust bundle that vouches for the WFM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rc3Trust {
    /// A bundle file the operator keeps current.
    File(PathBuf),
    /// Fetched from the discovery endpoint, over TLS that `pinned_ca` vouches for.
    Discovery { url: url::Url, pinned_ca: PathBuf },
}

/// The credentials of one profile: only the keys that profile uses, all present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSettings {
    /// Margo 1.0.0-rc.3: mutual TLS with an X.509-SVID.
    Rc3 {
        svid_cert: PathBuf,
        svid_key: PathBuf,
        trust: Rc3Trust,
    },
    /// rc.2: onboarding with a client certificate, signed requests; `root_ca` is the
    /// WFM's root when the operator pins it (else downloaded once at onboarding).
    Rc2 {
        client_cert: PathBuf,
        client_key: PathBuf,
        root_ca: Option<PathBuf>,
    },
}

/// The parsed `[wfm]` section of the host configuration: checked as it is read, so
/// every value it holds is usable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawWfm")]
pub struct WfmSettings {
    /// Base URL, may carry a path prefix (`https://wfm:443/v1alpha2/margo`).
    pub url: url::Url,
    /// How often desired state is polled.
    pub poll_interval: Duration,
    /// Hours of the day (UTC) when polling happens; always when absent.
    pub polling_window: Option<DailyWindow>,
    /// Known downtime: no polling, no retries, communication errors ignored.
    pub downtime_once: Vec<Downtime>,
    pub downtime_daily: Vec<DailyWindow>,
    /// Largest bundle accepted (compressed and expanded).
    pub max_bundle: u64,
    pub credentials: ProfileSettings,
}

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_BUNDLE: u64 = 16 << 20;

impl WfmSettings {
    pub fn profile(&self) -> Profile {
        match self.credentials {
            ProfileSettings::Rc3 { .. } => Profile::Rc3,
            ProfileSettings::Rc2 { .. } => Profile::Rc2,
        }
    }
}

/// `downtime` entries: one-off (`FROM/UNTIL`, Unix seconds) and daily (`HH:MM-HH:MM`).
fn parse_downtimes(entries: &[String]) -> Result<(Vec<Downtime>, Vec<DailyWindow>), String> {
    let mut once = Vec::new();
    let mut daily = Vec::new();
    for entry in entries {
        if let Some((a, b)) = entry.split_once('/') {
            let parse = |s: &str| {
                s.trim().parse::<u64>().map_err(|_| {
                    format!("[wfm] downtime {entry:?}: expected FROM/UNTIL in Unix seconds")
                })
            };
            let (from_unix, until_unix) = (parse(a)?, parse(b)?);
            if until_unix <= from_unix {
                return Err(format!(
                    "[wfm] downtime {entry:?}: UNTIL must be after FROM"
                ));
            }
            once.push(Downtime {
                from_unix,
                until_unix,
            });
        } else {
            daily.push(DailyWindow::parse(entry).map_err(|e| format!("[wfm] downtime {e}"))?);
        }
    }
    Ok((once, daily))
}

impl TryFrom<RawWfm> for WfmSettings {
    type Error = String;

    fn try_from(raw: RawWfm) -> Result<Self, String> {
        if raw.url.scheme() != "https" {
            return Err(format!(
                "[wfm] url {}: the Management Interface is HTTPS only",
                raw.url
            ));
        }
        let poll_interval = raw.poll_interval.map_or(DEFAULT_POLL_INTERVAL, |d| d.0);
        if poll_interval.is_zero() {
            return Err("[wfm] poll-interval: expected more than 0s".into());
        }
        let (downtime_once, downtime_daily) = parse_downtimes(&raw.downtime)?;
        // A key of the other profile would do nothing: say so rather than let the
        // operator believe it is in use.
        let foreign = match raw.profile {
            Profile::Rc3 => [
                ("client-cert", raw.client_cert.is_some()),
                ("client-key", raw.client_key.is_some()),
                ("root-ca", raw.root_ca.is_some()),
            ],
            Profile::Rc2 => [
                ("svid-cert", raw.svid_cert.is_some()),
                ("svid-key", raw.svid_key.is_some()),
                (
                    "trust-bundle, discovery-url or pinned-ca",
                    raw.trust_bundle.is_some()
                        || raw.discovery_url.is_some()
                        || raw.pinned_ca.is_some(),
                ),
            ],
        };
        if let Some((key, _)) = foreign.iter().find(|(_, set)| *set) {
            let profile = match raw.profile {
                Profile::Rc3 => "rc3",
                Profile::Rc2 => "rc2",
            };
            return Err(format!(
                "[wfm] {key}: not used by profile {profile} (remove it, or set the profile that uses it)"
            ));
        }
        let credentials = match raw.profile {
            Profile::Rc3 => {
                let (Some(svid_cert), Some(svid_key)) = (raw.svid_cert, raw.svid_key) else {
                    return Err("[wfm] profile rc3 needs svid-cert and svid-key".into());
                };
                let trust = match (raw.trust_bundle, raw.discovery_url, raw.pinned_ca) {
                    (Some(file), None, _) => Rc3Trust::File(file),
                    (None, Some(url), Some(pinned_ca)) if url.scheme() == "https" => {
                        Rc3Trust::Discovery { url, pinned_ca }
                    }
                    (None, Some(url), Some(_)) => {
                        return Err(format!("[wfm] discovery-url {url}: must be https"))
                    }
                    (None, Some(_), None) => {
                        return Err("[wfm] discovery-url needs pinned-ca (trust is never taken on first use)".into())
                    }
                    _ => return Err("[wfm] profile rc3 needs exactly one of trust-bundle or discovery-url (+ pinned-ca)".into()),
                };
                ProfileSettings::Rc3 {
                    svid_cert,
                    svid_key,
                    trust,
                }
            }
            Profile::Rc2 => {
                let (Some(client_cert), Some(client_key)) = (raw.client_cert, raw.client_key)
                else {
                    return Err("[wfm] profile rc2 needs client-cert and client-key".into());
                };
                ProfileSettings::Rc2 {
                    client_cert,
                    client_key,
                    root_ca: raw.root_ca,
                }
            }
        };
        Ok(Self {
            url: raw.url,
            poll_interval,
            polling_window: raw.polling_window,
            downtime_once,
            downtime_daily,
            max_bundle: raw.max_bundle_size.map_or(DEFAULT_MAX_BUNDLE, |b| b.0),
            credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WfmSettings, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| e.to_string())
    }

    #[test]
    fn profiles_need_their_files() {
        let rc3 = "url = \"https://wfm/v1alpha2/margo\"\nsvid-cert = \"c\"\nsvid-key = \"k\"\ntrust-bundle = \"b\"\npoll-interval = \"5s\"";
        assert_eq!(parse(rc3).unwrap().poll_interval, Duration::from_secs(5));
        assert!(
            parse("url = \"https://wfm\"\nsvid-cert = \"c\"\nsvid-key = \"k\"")
                .unwrap_err()
                .contains("trust-bundle")
        );
        assert!(parse("url = \"https://wfm\"\nprofile = \"rc2\"")
            .unwrap_err()
            .contains("client-cert"));
        assert!(parse(
            "url = \"http://wfm\"\nprofile = \"rc2\"\nclient-cert = \"c\"\nclient-key = \"k\""
        )
        .unwrap_err()
        .contains("HTTPS"));
        assert!(parse("url = \"https://wfm\"\nsvid-cert = \"c\"\nsvid-key = \"k\"\ndiscovery-url = \"https://mis\"").unwrap_err().contains("pinned-ca"));

        // Each profile holds only its own keys, all present.
        match parse(rc3).unwrap().credentials {
            ProfileSettings::Rc3 {
                svid_cert, trust, ..
            } => {
                assert_eq!(svid_cert, PathBuf::from("c"));
                assert_eq!(trust, Rc3Trust::File("b".into()));
            }
            other => panic!("rc3 settings parsed as {other:?}"),
        }
        let rc2 = parse(
            "url = \"https://wfm\"\nprofile = \"rc2\"\nclient-cert = \"c\"\nclient-key = \"k\"",
        )
        .unwrap();
        assert_eq!(rc2.profile(), Profile::Rc2);
        assert_eq!(rc2.max_bundle, DEFAULT_MAX_BUNDLE);
        // A key of the other profile would do nothing: refused, named.
        let err = parse(&format!("{rc3}\nclient-cert = \"c\"")).unwrap_err();
        assert!(
            err.contains("[wfm] client-cert: not used by profile rc3"),
            "{err}"
        );
        let err = parse("url = \"https://wfm\"\nprofile = \"rc2\"\nclient-cert = \"c\"\nclient-key = \"k\"\ntrust-bundle = \"b\"").unwrap_err();
        assert!(err.contains("not used by profile rc2"), "{err}");
    }

    #[test]
    fn windows() {
        let night = DailyWindow::parse("22:00-06:00").unwrap();
        assert!(night.contains(23 * 60) && night.contains(60) && !night.contains(12 * 60));
        let day = DailyWindow::parse("08:00-17:30").unwrap();
        assert!(day.contains(8 * 60) && !day.contains(17 * 60 + 30));
        assert!(DailyWindow::parse("25:00-01:00").is_err());
        let s = parse("url = \"https://wfm\"\nprofile = \"rc2\"\nclient-cert = \"c\"\nclient-key = \"k\"\ndowntime = [\"100/200\", \"01:00-02:00\"]").unwrap();
        assert_eq!(
            s.downtime_once,
            vec![Downtime {
                from_unix: 100,
                until_unix: 200
            }]
        );
        assert_eq!(s.downtime_daily.len(), 1);
    }
}
