//! The etcd source (`method: etcd`): the instances registered under a key prefix in etcd (v3
//! API) as a service's backends.
//!
//! Each opening connects to one member (the one that last worked first, then the others in
//! turn), reads the prefix (a serializable read: any healthy member answers from its own copy)
//! and yields a `Reset`, then watches the prefix from the revision after that read, so no
//! change is missed or applied twice. A compaction past the watch's revision makes it read and
//! watch again; a cancelled watch, a member that loses its leader, or a broken connection ends
//! the stream after one error, and the supervisor reopens it (on the next member). One key per
//! instance, `<path>/<instance-id>`, holds Nerve's JSON or a plain `host:port`: see
//! [`registration`], the single definition of that format. A malformed value is reported
//! (`SourceError::Entry`, naming the key) and skipped; the rest is routed.
#![forbid(unsafe_code)]

pub mod announce;
mod instances;
pub mod registration;
mod source;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use myelin_source::{Context, LabelFilter, Number, Partition, Seconds, SettingsProblem, SourceConfig};
use serde::Deserialize;

pub use announce::{EtcdAnnounce, EtcdRegistry};
pub use instances::{Instances, Rejected};
pub use registration::{Registration, RegistrationError};
pub use source::EtcdSource;

/// etcd's client port, for Synapse's `host` form without `port`.
pub const DEFAULT_PORT: u16 = 2379;
/// Seconds to connect to a member, and for each read, when `timeout` is not set.
pub const DEFAULT_TIMEOUT: f64 = 5.0;

/// A service's etcd settings (`discovery: {method: etcd, ...}`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// The members to ask, `http://host:port`, `https://host:port` or `host:port`; myelin talks
    /// to one at a time and fails over to the next.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Synapse's form: one member's host (and `port`, default 2379) instead of `endpoints`.
    pub host: Option<String>,
    pub port: Option<Number>,
    /// The key prefix of the service's instances; `<path>/<instance-id>` keys are read.
    pub path: String,
    /// etcd authentication (both or neither).
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// TLS to the members (all endpoints then use TLS).
    pub tls: Option<TlsSettings>,
    /// Seconds to connect to a member and for each read (default 5).
    pub timeout: Option<Seconds>,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}

/// A password: never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The CA that signed the members' certificates (PEM).
    pub ca_file: PathBuf,
    /// A client certificate and its key (PEM), when the members require one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name to verify in the members' certificates (default: each endpoint's host).
    pub server_name: Option<String>,
}

/// One member's address, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `http://host:port`, `https://host:port` or `host:port` (TLS when `tls` is set); an IPv6
    /// host in brackets; the port defaults to 2379.
    pub fn parse(text: &str, tls: bool) -> Result<Self, String> {
        let t = text.trim();
        let (scheme_tls, rest) = if let Some(r) = t.strip_prefix("https://") {
            (Some(true), r)
        } else if let Some(r) = t.strip_prefix("http://") {
            (Some(false), r)
        } else if t.contains("://") {
            return Err(format!("{t:?}: only http:// and https:// endpoints are supported"));
        } else {
            (None, t)
        };
        if scheme_tls == Some(!tls) {
            return Err(if tls { format!("{t:?} is http:// but `tls` is set") } else { format!("{t:?} is https://: set `tls` (its `ca_file`)") });
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r.split_once(']').ok_or_else(|| format!("{t:?}: unclosed `[`"))?;
            (h, p.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => return Err(format!("{t:?}: an IPv6 address goes in brackets")),
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', '?', '#']) || host.chars().any(char::is_whitespace) {
            return Err(format!("{t:?} is not host:port"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{t:?}: the port must be 1-65535"))?,
        };
        Ok(Self { tls, host: host.to_owned(), port })
    }

    /// The URL etcd-client dials.
    pub fn url(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The settings a source runs with, checked and normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub endpoints: Vec<Endpoint>,
    /// The prefix read and watched, ending in `/`.
    pub prefix: String,
    pub user: Option<(String, Secret)>,
    pub tls: Option<TlsSettings>,
    pub timeout: Duration,
}

impl EtcdConfig {
    fn endpoint_texts(&self) -> Vec<(String, String)> {
        match &self.host {
            Some(h) => {
                let port = self.port.map_or(u64::from(DEFAULT_PORT), |p| p.0);
                let h = if h.contains(':') && !h.starts_with('[') { format!("[{h}]") } else { h.clone() };
                vec![("host".to_owned(), format!("{h}:{port}"))]
            }
            None => self.endpoints.iter().enumerate().map(|(i, e)| (format!("endpoints[{i}]"), e.clone())).collect(),
        }
    }

    /// The settings to run with, or every problem with them.
    pub fn settings(&self) -> Result<Settings, Vec<SettingsProblem>> {
        let mut problems = Vec::new();
        let tls = self.tls.is_some();
        if self.host.is_some() && !self.endpoints.is_empty() {
            problems.push(SettingsProblem::new("host", "give either `endpoints` or Synapse's `host` and `port`, not both"));
        } else if self.host.is_none() && self.endpoints.is_empty() {
            problems.push(SettingsProblem::new("endpoints", "at least one etcd endpoint is required (or Synapse's `host` and `port`)"));
        }
        if self.port.is_some() && self.host.is_none() {
            problems.push(SettingsProblem::new("port", "`port` goes with `host`; list `endpoints` as host:port instead"));
        }
        let bad_port = self.port.is_some_and(|p| !(1..=65535).contains(&p.0));
        if let Some(p) = self.port.filter(|_| bad_port) {
            problems.push(SettingsProblem::new("port", format!("{} is not a port (1-65535)", p.0)));
        }
        let mut endpoints = Vec::new();
        for (key, text) in self.endpoint_texts() {
            match Endpoint::parse(&text, tls) {
                Ok(e) if endpoints.contains(&e) => problems.push(SettingsProblem::new(key, format!("{e} is listed twice"))),
                Ok(e) => endpoints.push(e),
                Err(_) if bad_port => {}
                Err(m) => problems.push(SettingsProblem::new(key, m)),
            }
        }
        let path = self.path.trim_end_matches('/');
        if path.is_empty() {
            problems.push(SettingsProblem::new("path", "a key prefix is required (e.g. /services/web); it cannot be the whole key space"));
        }
        let user = match (&self.user, &self.password) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p.clone())),
            (Some(_), Some(_)) => {
                problems.push(SettingsProblem::new("user", "the user name is empty"));
                None
            }
            (Some(_), None) => {
                problems.push(SettingsProblem::new("password", "`user` needs a `password`"));
                None
            }
            (None, Some(_)) => {
                problems.push(SettingsProblem::new("user", "`password` needs a `user`"));
                None
            }
            (None, None) => None,
        };
        if let Some(t) = &self.tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                problems.push(SettingsProblem::new("tls", "`cert_file` and `key_file` go together"));
            }
        }
        let timeout = self.timeout.map_or(DEFAULT_TIMEOUT, Seconds::get);
        if !(0.1..=3600.0).contains(&timeout) {
            problems.push(SettingsProblem::new("timeout", format!("{timeout} is not from 0.1 to 3600 seconds")));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Settings { endpoints, prefix: format!("{path}/"), user, tls: self.tls.clone(), timeout: Duration::from_secs_f64(timeout) })
    }
}

impl SourceConfig for EtcdConfig {
    fn method(&self) -> &'static str {
        "etcd"
    }

    fn label_filters(&self) -> &[LabelFilter] {
        &self.label_filters
    }

    fn check(&self) -> Vec<SettingsProblem> {
        self.settings().err().unwrap_or_default()
    }

    fn partitions(&self, cx: &Context) -> Vec<Partition> {
        // `check` ran before: settings that do not pass it open nothing.
        match self.settings() {
            Ok(mut settings) => {
                if let Some(t) = &mut settings.tls {
                    t.ca_file = cx.resolve(&t.ca_file);
                    for p in [&mut t.cert_file, &mut t.key_file].into_iter().flatten() {
                        *p = cx.resolve(p);
                    }
                }
                let source = EtcdSource::new(settings);
                vec![Partition::single(Box::new(move || source.open()))]
            }
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(yaml: &str) -> EtcdConfig {
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn problems(yaml: &str) -> Vec<String> {
        parse(yaml).check().into_iter().map(|p| format!("{}: {}", p.key, p.message)).collect()
    }

    #[test]
    fn endpoints_and_synapse_form() {
        let d = parse("{endpoints: ['http://127.0.0.1:2379', '192.0.2.2:2379', '[::1]:2379', 'etcd-3'], path: /services/web/}");
        let s = d.settings().unwrap();
        let urls: Vec<String> = s.endpoints.iter().map(Endpoint::url).collect();
        assert_eq!(urls, ["http://127.0.0.1:2379", "http://192.0.2.2:2379", "http://[::1]:2379", "http://etcd-3:2379"]);
        assert_eq!(s.prefix, "/services/web/");
        assert_eq!(s.timeout, Duration::from_secs(5));
        // Synapse: host, port (a string too), path.
        let s = parse("{host: etcd.internal, port: '4001', path: /services/web}").settings().unwrap();
        assert_eq!(s.endpoints, vec![Endpoint { tls: false, host: "etcd.internal".into(), port: 4001 }]);
        assert_eq!(s.prefix, "/services/web/");
        let s = parse("{host: '::1', path: /s}").settings().unwrap();
        assert_eq!(s.endpoints[0].url(), "http://[::1]:2379");
        let tls = parse("{endpoints: ['https://a:2379', 'b:2379'], path: /s, tls: {ca_file: ca.pem}}").settings().unwrap();
        assert!(tls.endpoints.iter().all(|e| e.tls));
        assert_eq!(tls.endpoints[1].url(), "https://b:2379");
    }

    #[test]
    fn settings_problems() {
        assert_eq!(problems("{path: /s}"), ["endpoints: at least one etcd endpoint is required (or Synapse's `host` and `port`)"]);
        assert_eq!(problems("{host: a, endpoints: [b], path: /s}"), ["host: give either `endpoints` or Synapse's `host` and `port`, not both"]);
        assert_eq!(problems("{host: a, port: 70000, path: /s}"), ["port: 70000 is not a port (1-65535)"]);
        assert_eq!(problems("{endpoints: [a], port: 1, path: /s}"), ["port: `port` goes with `host`; list `endpoints` as host:port instead"]);
        assert_eq!(problems("{endpoints: [a, 'http://a:2379'], path: /s}"), ["endpoints[1]: http://a:2379 is listed twice"]);
        assert_eq!(problems("{endpoints: ['unix:///x'], path: /s}"), ["endpoints[0]: \"unix:///x\": only http:// and https:// endpoints are supported"]);
        assert_eq!(problems("{endpoints: ['https://a'], path: /s}"), ["endpoints[0]: \"https://a\" is https://: set `tls` (its `ca_file`)"]);
        assert_eq!(problems("{endpoints: ['http://a'], path: /s, tls: {ca_file: /ca}}"), ["endpoints[0]: \"http://a\" is http:// but `tls` is set"]);
        assert_eq!(problems("{endpoints: ['a:0'], path: /s}"), ["endpoints[0]: \"a:0\": the port must be 1-65535"]);
        assert_eq!(problems("{endpoints: ['::1:2379'], path: /s}"), ["endpoints[0]: \"::1:2379\": an IPv6 address goes in brackets"]);
        assert_eq!(problems("{endpoints: ['a b:1'], path: /s}"), ["endpoints[0]: \"a b:1\" is not host:port"]);
        assert_eq!(problems("{endpoints: [a], path: /}"), ["path: a key prefix is required (e.g. /services/web); it cannot be the whole key space"]);
        assert_eq!(problems("{endpoints: [a], path: /s, user: root}"), ["password: `user` needs a `password`"]);
        assert_eq!(problems("{endpoints: [a], path: /s, password: x}"), ["user: `password` needs a `user`"]);
        assert_eq!(problems("{endpoints: [a], path: /s, tls: {ca_file: /ca, cert_file: /c}}"), ["tls: `cert_file` and `key_file` go together"]);
        assert_eq!(problems("{endpoints: [a], path: /s, timeout: 0}"), ["timeout: 0 is not from 0.1 to 3600 seconds"]);
        assert!(problems("{endpoints: [a], path: /s, user: root, password: pw, timeout: '2.5'}").is_empty());
        // Unknown keys are refused by serde.
        assert!(serde_yaml_ng::from_str::<EtcdConfig>("{endpoints: [a], path: /s, prefix: /x}").is_err());
        assert!(serde_yaml_ng::from_str::<EtcdConfig>("{endpoints: [a], path: /s, tls: {ca: /x}}").is_err());
    }

    #[test]
    fn the_password_is_never_printed() {
        let d = parse("{endpoints: [a], path: /s, user: root, password: hunter2}");
        assert!(!format!("{d:?}").contains("hunter2"));
        assert!(!format!("{:?}", d.settings().unwrap()).contains("hunter2"));
    }

    #[test]
    fn one_partition() {
        let d = parse("{endpoints: ['127.0.0.1:1'], path: /s}");
        let cx = Context { service: myelin_source::ServiceName::parse("web").unwrap(), config_file: "/etc/myelin/myelin.yaml".into() };
        assert_eq!(d.partitions(&cx).len(), 1);
        assert_eq!(d.method(), "etcd");
        assert_eq!(cx.resolve(Path::new("certs/ca.pem")), Path::new("/etc/myelin/certs/ca.pem"));
    }
}
