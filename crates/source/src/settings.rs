//! Setting types every source shares.

use std::collections::BTreeMap;
use std::time::Duration;

use std::fmt;

use serde::de::{self, Visitor};
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
        // A visitor rather than an untagged enum: serde buffers an untagged enum's input, and
        // that buffer cannot hold an integer wider than 64 bits, which made
        // `18446744073709551616` "invalid type: integer as u128, expected any value".
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Number, E> {
                Ok(Number(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Number, E> {
                u64::try_from(n).map(Number).map_err(|_| E::custom(format!("{n} is negative: expected a whole number")))
            }
            fn visit_u128<E: de::Error>(self, n: u128) -> Result<Number, E> {
                u64::try_from(n).map(Number).map_err(|_| E::custom(format!("{n} is too large (at most {})", u64::MAX)))
            }
            fn visit_i128<E: de::Error>(self, n: i128) -> Result<Number, E> {
                u64::try_from(n).map(Number).map_err(|_| E::custom(format!("{n} is not a whole number from 0 to {}", u64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, f: f64) -> Result<Number, E> {
                Err(E::custom(format!("{f} is not a whole number")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Number, E> {
                s.trim().parse().map(Number).map_err(|_| E::custom(format!("{s:?} is not a whole number")))
            }
        }
        d.deserialize_any(V)
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
        // A visitor, not an untagged enum: see `Number`.
        struct V;
        fn seconds<E: de::Error>(v: f64) -> Result<Seconds, E> {
            Seconds::new(v).ok_or_else(|| E::custom(format!("{v} is not a number of seconds from 0 to {}", Seconds::MAX)))
        }
        impl<'de> Visitor<'de> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Seconds, E> {
                seconds(n as f64)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Seconds, E> {
                seconds(n as f64)
            }
            fn visit_u128<E: de::Error>(self, n: u128) -> Result<Seconds, E> {
                seconds(n as f64)
            }
            fn visit_i128<E: de::Error>(self, n: i128) -> Result<Seconds, E> {
                seconds(n as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                seconds(v)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Seconds, E> {
                seconds(s.trim().parse::<f64>().map_err(|_| E::custom(format!("{s:?} is not a number of seconds")))?)
            }
        }
        d.deserialize_any(V)
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

    /// Found by the fuzz suite: inside a struct (as in a config file), integers wider than 64
    /// bits gave "invalid type: integer `...` as u128, expected any value".
    #[test]
    fn wide_integers_are_clear_errors() {
        #[derive(Debug, Deserialize)]
        struct S {
            #[allow(dead_code)]
            n: Option<Number>,
            #[allow(dead_code)]
            s: Option<Seconds>,
        }
        let err = |yaml: &str| serde_yaml_ng::from_str::<S>(yaml).unwrap_err().to_string();
        assert!(err("n: 18446744073709551616").starts_with("n: 18446744073709551616 is too large (at most 18446744073709551615)"), "{}", err("n: 18446744073709551616"));
        assert!(err("n: -170141183460469231731687303715884105728").contains("is not a whole number from 0"));
        assert!(err("n: -1").starts_with("n: -1 is negative: expected a whole number"));
        assert!(err("n: 80.5").starts_with("n: 80.5 is not a whole number"));
        assert!(err("n: [1]").contains("expected a whole number"));
        assert!(err("s: 18446744073709551616").starts_with("s: 18446744073709552000 is not a number of seconds from 0 to 315360000"), "{}", err("s: 18446744073709551616"));
        assert!(err("s: {a: 1}").contains("expected a number of seconds"));
        assert_eq!(serde_yaml_ng::from_str::<S>("{n: '18', s: '2.5'}").map(|s| (s.n, s.s)).unwrap(), (Some(Number(18)), Some(Seconds(2.5))));
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
