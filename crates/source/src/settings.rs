//! Setting types every source shares.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Synapse's label filter: keep only the records whose label matches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelFilter {
    pub label: String,
    pub value: String,
    #[serde(default)]
    pub condition: LabelCondition,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelCondition {
    #[default]
    Equals,
    NotEquals,
}

impl LabelFilter {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let equal = labels.get(&self.label).is_some_and(|v| *v == self.value);
        match self.condition {
            LabelCondition::Equals => equal,
            LabelCondition::NotEquals => !equal,
        }
    }
}

/// A whole number that Synapse configs sometimes write as a string of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number(pub u64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a whole number")]
        enum NumOrStr {
            Num(u64),
            Str(String),
        }
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => Ok(Number(n)),
            NumOrStr::Str(s) => s.trim().parse().map(Number).map_err(|_| serde::de::Error::custom(format!("{s:?} is not a whole number"))),
        }
    }
}

/// A number of seconds: finite, not negative, and at most [`Seconds::MAX`] (ten years), so that
/// it always makes a [`Duration`]. Written as a number or a string holding one. Keys with a
/// narrower range check it themselves.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Seconds(f64);

impl Seconds {
    pub const MAX: f64 = 315_360_000.0;

    pub fn new(v: f64) -> Option<Self> {
        (v.is_finite() && (0.0..=Self::MAX).contains(&v)).then_some(Self(v))
    }

    pub fn get(self) -> f64 {
        self.0
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a number of seconds")]
        enum NumOrStr {
            Num(f64),
            Str(String),
        }
        let v = match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => n,
            NumOrStr::Str(s) => s.trim().parse::<f64>().map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number of seconds")))?,
        };
        Seconds::new(v).ok_or_else(|| serde::de::Error::custom(format!("{v} is not a number of seconds from 0 to {}", Seconds::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(yaml: &str) -> Result<Seconds, String> {
        serde_yaml_ng::from_str::<Seconds>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn seconds_are_finite_and_bounded() {
        assert_eq!(secs("2").unwrap().duration(), Duration::from_secs(2));
        assert_eq!(secs("0.25").unwrap().duration(), Duration::from_millis(250));
        assert_eq!(secs("'1.5'").unwrap().get(), 1.5);
        for bad in [".nan", ".inf", "-.inf", "-1", "1e20", "'soon'", "[1]", "{a: 1}", "~"] {
            assert!(secs(bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(Seconds::new(Seconds::MAX).unwrap().duration(), Duration::from_secs(315_360_000));
    }

    #[test]
    fn numbers_accept_digit_strings() {
        assert_eq!(serde_yaml_ng::from_str::<Number>("'8080'").unwrap(), Number(8080));
        assert!(serde_yaml_ng::from_str::<Number>("1.5").is_err());
        assert!(serde_yaml_ng::from_str::<Number>("18446744073709551616").is_err());
    }

    #[test]
    fn label_filters() {
        let f = LabelFilter { label: "az".into(), value: "a".into(), condition: LabelCondition::Equals };
        let labels: BTreeMap<String, String> = [("az".to_owned(), "a".to_owned())].into();
        assert!(f.matches(&labels));
        assert!(!LabelFilter { condition: LabelCondition::NotEquals, ..f.clone() }.matches(&labels));
        assert!(!f.matches(&BTreeMap::new()));
    }
}
