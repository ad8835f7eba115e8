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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WfmSettings {
    /// Base URL, may carry a path prefix (`https://wfm:443/v1alpha2/margo`).
    pub url: url::Url,
    #[serde(default)]
    pub profile: Profile,
    /// How often desired state is polled.
    pub poll_interval: Option<HumanDuration>,
    /// Hours of the day (UTC) when polling happens; always when absent.
    pub polling_window: Option<DailyWindow>,
    /// Known downtime windows: no polling, no retries, communication errors ignored.
    /// Each `"FROM/UNTIL"` in Unix seconds, or a daily `"HH:MM-HH:MM"`.
    #[serde(default)]
    pub downtime: Vec<String>,
    // rc3
    pub svid_cert: Option<PathBuf>,
    pub svid_key: Option<PathBuf>,
    pub trust_bundle: Option<PathBuf>,
    pub discovery_url: Option<url::Url>,
    pub pinned_ca: Option<PathBuf>,
    // rc2
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub root_ca: Option<PathBuf>,
    /// Largest bundle accepted (compressed and expanded).
    pub max_bundle_size: Option<crate::units::ByteSize>,
}

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_BUNDLE: u64 = 16 << 20;

impl WfmSettings {
    pub fn from_table(table: &toml::Table) -> Result<Self, String> {
        let settings: Self = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| format!("[wfm]: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
            .map(|d| d.0)
            .unwrap_or(DEFAULT_POLL_INTERVAL)
    }

    pub fn max_bundle(&self) -> u64 {
        self.max_bundle_size
            .map(|b| b.0)
            .unwrap_or(DEFAULT_MAX_BUNDLE)
    }

    /// Parsed downtime windows: one-off (`FROM/UNTIL`) and daily (`HH:MM-HH:MM`).
    pub fn downtimes(&self) -> Result<(Vec<Downtime>, Vec<DailyWindow>), String> {
        let mut once = Vec::new();
        let mut daily = Vec::new();
        for entry in &self.downtime {
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

    fn validate(&self) -> Result<(), String> {
        if self.url.scheme() != "https" {
            return Err(format!(
                "[wfm] url {}: the Management Interface is HTTPS only",
                self.url
            ));
        }
        if self.poll_interval().is_zero() {
            return Err("[wfm] poll-interval: expected more than 0s".into());
        }
        self.downtimes()?;
        match self.profile {
            Profile::Rc3 => {
                if self.svid_cert.is_none() || self.svid_key.is_none() {
                    return Err("[wfm] profile rc3 needs svid-cert and svid-key".into());
                }
                match (&self.trust_bundle, &self.discovery_url, &self.pinned_ca) {
                    (Some(_), None, _) => {}
                    (None, Some(url), Some(_)) if url.scheme() == "https" => {}
                    (None, Some(url), Some(_)) => return Err(format!("[wfm] discovery-url {url}: must be https")),
                    (None, Some(_), None) => return Err("[wfm] discovery-url needs pinned-ca (trust is never taken on first use)".into()),
                    _ => return Err("[wfm] profile rc3 needs exactly one of trust-bundle or discovery-url (+ pinned-ca)".into()),
                }
            }
            Profile::Rc2 => {
                if self.client_cert.is_none() || self.client_key.is_none() {
                    return Err("[wfm] profile rc2 needs client-cert and client-key".into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WfmSettings, String> {
        WfmSettings::from_table(&text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn profiles_need_their_files() {
        let rc3 = "url = \"https://wfm/v1alpha2/margo\"\nsvid-cert = \"c\"\nsvid-key = \"k\"\ntrust-bundle = \"b\"\npoll-interval = \"5s\"";
        assert_eq!(parse(rc3).unwrap().poll_interval(), Duration::from_secs(5));
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
    }

    #[test]
    fn windows() {
        let night = DailyWindow::parse("22:00-06:00").unwrap();
        assert!(night.contains(23 * 60) && night.contains(60) && !night.contains(12 * 60));
        let day = DailyWindow::parse("08:00-17:30").unwrap();
        assert!(day.contains(8 * 60) && !day.contains(17 * 60 + 30));
        assert!(DailyWindow::parse("25:00-01:00").is_err());
        let s = parse("url = \"https://wfm\"\nprofile = \"rc2\"\nclient-cert = \"c\"\nclient-key = \"k\"\ndowntime = [\"100/200\", \"01:00-02:00\"]").unwrap();
        let (once, daily) = s.downtimes().unwrap();
        assert_eq!(
            once,
            vec![Downtime {
                from_unix: 100,
                until_unix: 200
            }]
        );
        assert_eq!(daily.len(), 1);
    }
}
