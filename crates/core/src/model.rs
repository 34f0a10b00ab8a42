//! Validated newtypes. Everything that discovery reports is untrusted input to a config file:
//! a value only reaches a template through one of these types.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidValue {
    pub what: &'static str,
    /// The offending value, shortened so that hostile input cannot flood a log line.
    pub value: String,
    pub reason: &'static str,
}

impl InvalidValue {
    fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        let mut shown: String = value.chars().take(80).collect();
        if value.chars().count() > 80 {
            shown.push('…');
        }
        Self { what, value: shown, reason }
    }
}

const IDENT_MAX: usize = 100;

/// An HAProxy identifier: letters, digits, `-`, `_`, `.` and `:` (HAProxy's own rule for proxy
/// and server names), 1 to 100 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Ident(Arc<str>);

impl Ident {
    pub fn parse(what: &'static str, s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() {
            return Err(InvalidValue::new(what, s, "must not be empty"));
        }
        if s.len() > IDENT_MAX {
            return Err(InvalidValue::new(what, s, "longer than 100 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')) {
            return Err(InvalidValue::new(
                what,
                s,
                "only letters, digits, '-', '_', '.' and ':' are allowed",
            ));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! ident_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(Ident);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                Ident::parse($what, s).map(Self)
            }
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

ident_newtype!(
    /// A service's name, as the key under `services:`; also its frontend's name.
    ServiceName,
    "service name"
);
ident_newtype!(
    /// The name of an HAProxy backend section.
    BackendName,
    "backend name"
);
ident_newtype!(
    /// A server's name inside a backend; the identity of a backend instance.
    ServerName,
    "server name"
);

/// A server address: an IP address or an RFC 1123 host name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Host(Arc<str>);

impl Host {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self(ip.to_string().into()));
        }
        if s.is_empty() {
            return Err(InvalidValue::new("host", s, "must not be empty"));
        }
        if s.len() > 253 {
            return Err(InvalidValue::new("host", s, "longer than 253 characters"));
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(InvalidValue::new("host", s, "each dot-separated label must have 1 to 63 characters"));
            }
            if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(InvalidValue::new("host", s, "not an IP address or a host name"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(InvalidValue::new("host", s, "a label may not start or end with '-'"));
            }
        }
        Ok(Self(s.to_ascii_lowercase().into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_ipv6(&self) -> bool {
        self.0.contains(':')
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Host {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Port(u16);

impl Port {
    pub fn new(n: u16) -> Result<Self, InvalidValue> {
        if n == 0 {
            return Err(InvalidValue::new("port", "0", "must be 1 to 65535"));
        }
        Ok(Self(n))
    }

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let n: u64 = s.trim().parse().map_err(|_| InvalidValue::new("port", s, "not a number"))?;
        if !(1..=65535).contains(&n) {
            return Err(InvalidValue::new("port", s, "must be 1 to 65535"));
        }
        Ok(Self(n as u16))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        Self::parse(&n.to_string()).map_err(serde::de::Error::custom)
    }
}

/// A server weight, 0 to 256 (HAProxy's range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Weight(u16);

impl Weight {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let n: u64 = s.trim().parse().map_err(|_| InvalidValue::new("weight", s, "not a number"))?;
        if n > 256 {
            return Err(InvalidValue::new("weight", s, "must be 0 to 256"));
        }
        Ok(Self(n as u16))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        Self::parse(&n.to_string()).map_err(serde::de::Error::custom)
    }
}

/// One line of operator-written HAProxy configuration (from `global`, `listen`, ...): anything
/// but a line break or a NUL, so a value can never open a section of its own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ConfigLine(Arc<str>);

impl ConfigLine {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.bytes().any(|b| matches!(b, b'\n' | b'\r' | b'\0')) {
            return Err(InvalidValue::new("config line", s, "must not contain a line break or NUL"));
        }
        let t = s.trim();
        if t.is_empty() {
            return Err(InvalidValue::new("config line", s, "must not be empty"));
        }
        Ok(Self(t.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first word: HAProxy's keyword for this line.
    pub fn keyword(&self) -> &str {
        self.0.split_whitespace().next().unwrap_or("")
    }
}

impl fmt::Display for ConfigLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConfigLine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A backend instance as a discovery source reported it: untrusted, unvalidated text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovered {
    pub name: Option<String>,
    pub host: String,
    pub port: String,
    pub weight: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl Discovered {
    pub fn new(host: impl Into<String>, port: impl ToString) -> Self {
        Self { host: host.into(), port: port.to_string(), ..Self::default() }
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn weighted(mut self, weight: impl ToString) -> Self {
        self.weight = Some(weight.to_string());
        self
    }

    /// The key this record is known by: its name, or `host:port` when it has none.
    pub fn key(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    pub fn validate(&self) -> Result<Backend, InvalidValue> {
        let host = Host::parse(&self.host)?;
        let port = Port::parse(&self.port)?;
        let name = ServerName::parse(&self.key())?;
        let weight = self.weight.as_deref().map(Weight::parse).transpose()?;
        for (k, v) in &self.labels {
            if k.len() > 256 || v.len() > 4096 {
                return Err(InvalidValue::new("label", k, "label key or value too long"));
            }
        }
        Ok(Backend { name, host, port, weight, labels: self.labels.clone() })
    }
}

/// A validated backend instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Backend {
    pub name: ServerName,
    pub host: Host,
    pub port: Port,
    pub weight: Option<Weight>,
    /// Free-form labels; never rendered into haproxy.cfg.
    pub labels: BTreeMap<String, String>,
}

/// Equal text held once: the backends of one configuration load pass through one `Interner`,
/// so that a host many services' servers run on, or a server name many services use, is one
/// allocation however many backends carry it (at 100,000 backends on a few hosts that is
/// megabytes). It keeps nothing alive once dropped, and changes no value: only where the text
/// is stored.
#[derive(Debug, Default)]
pub struct Interner(HashSet<Arc<str>>);

impl Interner {
    fn share(&mut self, text: Arc<str>) -> Arc<str> {
        match self.0.get(&*text) {
            Some(known) => Arc::clone(known),
            None => {
                self.0.insert(Arc::clone(&text));
                text
            }
        }
    }

    /// `b` with its name and host sharing the text of any equal ones seen before.
    pub fn backend(&mut self, b: Backend) -> Backend {
        let name = ServerName(Ident(self.share(b.name.0 .0)));
        let host = Host(self.share(b.host.0));
        Backend { name, host, ..b }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents_refuse_what_could_change_a_config() {
        for bad in ["", "a b", "a\nb", "a#b", "x;y", "a\tb", &"x".repeat(101), "ü"] {
            assert!(Ident::parse("name", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["web", "web-1", "svc_a.b:8080", "A9"] {
            assert!(Ident::parse("name", good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(Host::parse("127.0.0.1").unwrap().as_str(), "127.0.0.1");
        assert_eq!(Host::parse("[::1]").unwrap().as_str(), "::1");
        assert!(Host::parse("::1").unwrap().is_ipv6());
        assert_eq!(Host::parse("Web-1.Example.com").unwrap().as_str(), "web-1.example.com");
        for bad in ["", "a b", "host\n  server evil 1.2.3.4:1", "x#y", "-a.b", "a..b", "a:b"] {
            assert!(Host::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ports_and_weights() {
        assert_eq!(Port::parse("8080").unwrap().get(), 8080);
        for bad in ["0", "65536", "99999999999999999999", "-1", "80 # x", ""] {
            assert!(Port::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Weight::parse("256").unwrap().get(), 256);
        assert!(Weight::parse("257").is_err());
    }

    #[test]
    fn config_lines_cannot_break_out() {
        assert!(ConfigLine::parse("mode http\nbackend evil").is_err());
        assert!(ConfigLine::parse("  ").is_err());
        assert_eq!(ConfigLine::parse(" option httpchk GET / ").unwrap().keyword(), "option");
    }

    #[test]
    fn discovered_validation() {
        let b = Discovered::new("192.0.2.1", 80).validate().unwrap();
        assert_eq!(b.name.as_str(), "192.0.2.1:80");
        assert!(Discovered::new("192.0.2.1", 80).named("bad name").validate().is_err());
        assert!(Discovered::new("192.0.2.1", 70000).validate().is_err());
        assert!(Discovered::new("192.0.2.1", 80).weighted(300).validate().is_err());
    }

    #[test]
    fn interned_backends_share_equal_text_and_keep_their_values() {
        let mut interner = Interner::default();
        let a = Discovered::new("192.0.2.1", 80).named("web-1").validate().unwrap();
        let b = Discovered::new("192.0.2.1", 81).named("web-1").validate().unwrap();
        let c = Discovered::new("192.0.2.2", 80).named("web-2").validate().unwrap();
        assert!(!Arc::ptr_eq(&a.host.0, &b.host.0));
        let (a2, b2, c2) = (interner.backend(a.clone()), interner.backend(b.clone()), interner.backend(c.clone()));
        assert_eq!((&a2, &b2, &c2), (&a, &b, &c));
        assert!(Arc::ptr_eq(&a2.host.0, &b2.host.0));
        assert!(Arc::ptr_eq(&a2.name.0 .0, &b2.name.0 .0));
        assert!(!Arc::ptr_eq(&a2.host.0, &c2.host.0));
        assert!(!Arc::ptr_eq(&a2.name.0 .0, &c2.name.0 .0));
    }
}
