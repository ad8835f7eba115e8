//! Quantities as people write them in config files and deployment YAMLs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A size in bytes, written as a plain number or with a binary (`Ki`, `Mi`, `Gi`, `Ti`)
/// or decimal (`K`/`k`, `M`, `G`, `T`) suffix, as Kubernetes and Margo do (`"128Mi"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: expected {expected}")]
pub struct UnitError {
    what: &'static str,
    input: String,
    expected: &'static str,
}

const BYTES_EXPECTED: &str = "a byte count such as 1048576, 512Ki, 128Mi or 2Gi";
const DURATION_EXPECTED: &str = "a duration such as 500ms, 10s, 5m, 1h or 5m0s";

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, UnitError> {
        let err = || UnitError {
            what: "size",
            input: input.to_owned(),
            expected: BYTES_EXPECTED,
        };
        let s = input.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, suffix) = s.split_at(split);
        let number: u64 = digits.parse().map_err(|_| err())?;
        let factor: u64 = match suffix {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            "Pi" => 1 << 50,
            "Ei" => 1 << 60,
            "k" | "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            _ => return Err(err()),
        };
        number.checked_mul(factor).map(ByteSize).ok_or_else(err)
    }
}

/// Binary units, largest first.
const BINARY_UNITS: [(u64, &str); 4] = [
    (1 << 40, "Ti"),
    (1 << 30, "Gi"),
    (1 << 20, "Mi"),
    (1 << 10, "Ki"),
];

impl ByteSize {
    /// For people reading a table: the largest binary unit that fits, one decimal
    /// when not exact (`1.5Mi`); `Display` stays exact so that it parses back.
    pub fn approximate(self) -> String {
        match BINARY_UNITS.iter().find(|(factor, _)| self.0 >= *factor) {
            Some((factor, unit)) if !self.0.is_multiple_of(*factor) => {
                format!("{:.1}{unit}", self.0 as f64 / *factor as f64)
            }
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (factor, unit) in BINARY_UNITS {
            if self.0 >= factor && self.0.is_multiple_of(factor) {
                return write!(f, "{}{unit}", self.0 / factor);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h`, and compound forms such as `5m0s` (the Margo
/// component `timeout` pattern).
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let err = || UnitError {
        what: "duration",
        input: input.to_owned(),
        expected: DURATION_EXPECTED,
    };
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (digits, tail) = rest.split_at(split);
        let number: u64 = digits.parse().map_err(|_| err())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(number.checked_mul(3600).ok_or_else(err)?),
            _ => return Err(err()),
        };
        total = total.checked_add(part).ok_or_else(err)?;
        rest = tail;
    }
    Ok(total)
}

/// A duration field in TOML or YAML (`"10s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximate_sizes() {
        for (n, text) in [
            (0, "0"),
            (1000, "1000"),
            (1024, "1Ki"),
            (1536, "1.5Ki"),
            (1572864, "1.5Mi"),
            (256 << 20, "256Mi"),
            ((1 << 30) + 1, "1.0Gi"),
        ] {
            assert_eq!(ByteSize(n).approximate(), text, "{n}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!("128Mi".parse::<ByteSize>().unwrap(), ByteSize(128 << 20));
        assert_eq!("2Gi".parse::<ByteSize>().unwrap(), ByteSize(2 << 30));
        assert_eq!("1000".parse::<ByteSize>().unwrap(), ByteSize(1000));
        assert_eq!("5M".parse::<ByteSize>().unwrap(), ByteSize(5_000_000));
        for bad in ["", "Mi", "12 Mi", "1.5Gi", "-1", "12mb", "99999999999Ei"] {
            let err = bad.parse::<ByteSize>().unwrap_err();
            assert!(err.to_string().contains("128Mi"), "{err}");
        }
        assert_eq!(ByteSize(128 << 20).to_string(), "128Mi");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m0s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h2m3s").unwrap(), Duration::from_secs(3723));
        for bad in ["", "10", "s", "10 s", "1d", "-5s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should not parse");
        }
    }
}
