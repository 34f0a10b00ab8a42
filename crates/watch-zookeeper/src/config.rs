//! `method: zookeeper` and `method: zookeeper_poll`: the settings (Synapse's keys), their
//! checks, and the source they open.

use std::time::Duration;

use myelin_source::{Context, LabelFilter, Partition, Seconds, SettingsProblem, SourceConfig};
use serde::Deserialize;

use crate::payload::Format;
use crate::source::{Mode, Settings, ZookeeperSource};

/// `decode.method`: how the nodes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeMethod {
    Nerve,
    Serverset,
}

/// `decode`: Synapse's `{method: nerve | serverset, endpoint_name}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    pub method: DecodeMethod,
    /// With `serverset`: route this one of the `additionalEndpoints` instead of the
    /// `serviceEndpoint`.
    pub endpoint_name: Option<String>,
}

/// `method: zookeeper`: the nodes under `path`, followed with child watches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperConfig {
    /// The ensemble: `host:port` entries (port 2181 when left out); a chroot may follow one of
    /// them (`zk3:2181/chroot`), and applies to all.
    pub hosts: Vec<String>,
    /// The registration path: one child node per instance.
    pub path: String,
    /// How the nodes are written (default: Nerve).
    pub decode: Option<DecodeConfig>,
    /// After a change, wait until this many seconds have passed since the last listing before
    /// listing again (0 to 120; default none), so that a burst of changes is read once.
    pub discovery_jitter: Option<Seconds>,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}

/// `method: zookeeper_poll`: the nodes under `path`, listed every `polling_interval_sec`
/// without watches (for very large fleets, where a watch firing on every change costs more
/// than a periodic read).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperPollConfig {
    pub hosts: Vec<String>,
    pub path: String,
    pub decode: Option<DecodeConfig>,
    /// Seconds between listings (default 60).
    pub polling_interval_sec: Option<Seconds>,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}

/// `discovery_jitter`'s bounds, as Synapse's.
const JITTER_MAX: f64 = 120.0;
/// `polling_interval_sec`'s bounds: shorter intervals are raised to the minimum (Synapse's
/// poll loop ticks every 0.5 s, so 0 means that).
const POLL_MIN: f64 = 0.5;
const POLL_MAX: f64 = 86400.0;
const POLL_DEFAULT: f64 = 60.0;

/// ZooKeeper's rule for a path: absolute, no empty, `.` or `..` segment, no trailing `/`
/// (but `/` itself), no control characters.
pub(crate) fn check_zk_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') {
        return Err("must start with `/`");
    }
    if p == "/" {
        return Ok(());
    }
    if p.ends_with('/') {
        return Err("must not end with `/`");
    }
    if p[1..].split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err("must not have empty, `.` or `..` segments");
    }
    if p.chars().any(|c| c.is_control()) {
        return Err("must not hold control characters");
    }
    Ok(())
}

/// `hosts` as the client's connect string, `h1:p1,h2:p2[/chroot]`, or the problems with it.
pub(crate) fn connect_string(hosts: &[String]) -> Result<String, Vec<SettingsProblem>> {
    let mut problems = Vec::new();
    if hosts.is_empty() {
        problems.push(SettingsProblem::new("hosts", "must list at least one `host:port`"));
    }
    let mut servers = Vec::new();
    let mut chroot: Option<&str> = None;
    for (i, entry) in hosts.iter().enumerate() {
        let key = format!("hosts[{i}]");
        let entry = entry.trim();
        let (server, root) = match entry.find('/') {
            Some(at) => (&entry[..at], Some(&entry[at..])),
            None => (entry, None),
        };
        if let Some(root) = root {
            if let Err(why) = check_zk_path(root) {
                problems.push(SettingsProblem::new(&key, format!("the chroot {root:?} {why}")));
            } else if chroot.is_some_and(|c| c != root) {
                problems.push(SettingsProblem::new(&key, format!("a second chroot {root:?}: one chroot applies to the whole ensemble")));
            } else if root != "/" {
                chroot = Some(root);
            }
        }
        let (host, port) = match server.strip_prefix('[') {
            // [v6]:port
            Some(rest) => match rest.split_once(']') {
                Some((h, p)) => (h, p.strip_prefix(':')),
                None => (server, None),
            },
            None => match server.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                _ => (server, None),
            },
        };
        if host.is_empty() || host.contains(char::is_whitespace) || host.contains(',') {
            problems.push(SettingsProblem::new(&key, format!("{entry:?} is not `host:port`")));
            continue;
        }
        if let Some(p) = port {
            if !p.parse::<u16>().is_ok_and(|p| p > 0) {
                problems.push(SettingsProblem::new(&key, format!("the port {p:?} is not a port number (1-65535)")));
                continue;
            }
        }
        servers.push(server.to_owned());
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(format!("{}{}", servers.join(","), chroot.unwrap_or("")))
}

fn check_common(hosts: &[String], path: &str, decode: Option<&DecodeConfig>) -> Vec<SettingsProblem> {
    let mut out = connect_string(hosts).err().unwrap_or_default();
    if let Err(why) = check_zk_path(path) {
        out.push(SettingsProblem::new("path", format!("{path:?} {why}")));
    }
    if let Some(d) = decode {
        match (&d.method, &d.endpoint_name) {
            (DecodeMethod::Nerve, Some(_)) => out.push(SettingsProblem::new("decode.endpoint_name", "is only used with `method: serverset`")),
            (DecodeMethod::Serverset, Some(n)) if n.trim().is_empty() => out.push(SettingsProblem::new("decode.endpoint_name", "must not be empty")),
            _ => {}
        }
    }
    out
}

fn format_of(decode: Option<&DecodeConfig>) -> Format {
    match decode {
        None | Some(DecodeConfig { method: DecodeMethod::Nerve, .. }) => Format::Nerve,
        Some(DecodeConfig { method: DecodeMethod::Serverset, endpoint_name }) => Format::Serverset { endpoint: endpoint_name.clone() },
    }
}

/// The one source of a service: `check` has refused what does not make a connect string.
fn partition(settings: Result<Settings, Vec<SettingsProblem>>) -> Vec<Partition> {
    let Ok(settings) = settings else { return Vec::new() };
    let source = ZookeeperSource::new(settings);
    vec![Partition::single(Box::new(move || source.open()))]
}

impl ZookeeperConfig {
    pub fn settings(&self) -> Result<Settings, Vec<SettingsProblem>> {
        let jitter = self.discovery_jitter.map(|j| Duration::from_secs_f64(j.get().min(JITTER_MAX)));
        Ok(Settings { connect: connect_string(&self.hosts)?, path: self.path.clone(), format: format_of(self.decode.as_ref()), mode: Mode::Watch { jitter } })
    }
}

impl ZookeeperPollConfig {
    pub fn settings(&self) -> Result<Settings, Vec<SettingsProblem>> {
        Ok(Settings { connect: connect_string(&self.hosts)?, path: self.path.clone(), format: format_of(self.decode.as_ref()), mode: Mode::Poll { interval: self.interval() } })
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.polling_interval_sec.map_or(POLL_DEFAULT, |s| s.get()).clamp(POLL_MIN, POLL_MAX))
    }
}

impl SourceConfig for ZookeeperConfig {
    fn method(&self) -> &'static str {
        "zookeeper"
    }

    fn label_filters(&self) -> &[LabelFilter] {
        &self.label_filters
    }

    fn check(&self) -> Vec<SettingsProblem> {
        let mut out = check_common(&self.hosts, &self.path, self.decode.as_ref());
        if self.discovery_jitter.is_some_and(|j| j.get() > JITTER_MAX) {
            out.push(SettingsProblem::new("discovery_jitter", "must be 0 to 120 seconds"));
        }
        out
    }

    fn partitions(&self, _: &Context) -> Vec<Partition> {
        partition(self.settings())
    }
}

impl SourceConfig for ZookeeperPollConfig {
    fn method(&self) -> &'static str {
        "zookeeper_poll"
    }

    fn label_filters(&self) -> &[LabelFilter] {
        &self.label_filters
    }

    fn check(&self) -> Vec<SettingsProblem> {
        let mut out = check_common(&self.hosts, &self.path, self.decode.as_ref());
        if self.polling_interval_sec.is_some_and(|s| s.get() > POLL_MAX) {
            out.push(SettingsProblem::new("polling_interval_sec", "must be at most 86400 seconds"));
        }
        out
    }

    fn partitions(&self, _: &Context) -> Vec<Partition> {
        partition(self.settings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zk(yaml: &str) -> ZookeeperConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn keys(p: Vec<SettingsProblem>) -> Vec<String> {
        p.into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn synapse_zookeeper_discovery_loads() {
        // The discovery section of Synapse's example service, as it is.
        let c: ZookeeperConfig = serde_json::from_str(r#"{"path": "/services/service1", "hosts": ["localhost:2181"]}"#).unwrap();
        assert!(c.check().is_empty());
        let s = c.settings().unwrap();
        assert_eq!((s.connect.as_str(), s.path.as_str(), &s.format), ("localhost:2181", "/services/service1", &Format::Nerve));
        assert_eq!(s.mode, Mode::Watch { jitter: None });
        let c = zk("{hosts: [zk1:2181, zk2:2181], path: /nerve/web, decode: {method: serverset, endpoint_name: http}, discovery_jitter: 2}");
        assert!(c.check().is_empty());
        let s = c.settings().unwrap();
        assert_eq!(s.format, Format::Serverset { endpoint: Some("http".into()) });
        assert_eq!(s.mode, Mode::Watch { jitter: Some(Duration::from_secs(2)) });
        assert!(serde_yaml_ng::from_str::<ZookeeperConfig>("{hosts: [a:1], path: /x, decode: {method: json}}").is_err());
        assert!(serde_yaml_ng::from_str::<ZookeeperConfig>("{hosts: [a:1], path: /x, decode: {endpoint_name: x}}").is_err());
        assert!(serde_yaml_ng::from_str::<ZookeeperConfig>("{hosts: [a:1], path: /x, polling_interval_sec: 5}").is_err());
        assert!(serde_yaml_ng::from_str::<ZookeeperConfig>("{hosts: [a:1], path: /x, discovery_jitter: .inf}").is_err());
    }

    #[test]
    fn hosts_make_one_connect_string_with_its_chroot() {
        let s = |hosts: &[&str]| connect_string(&hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["zk1:2181", "zk2:2181", "zk3:2181/smartstack"]).unwrap(), "zk1:2181,zk2:2181,zk3:2181/smartstack");
        assert_eq!(s(&["zk1:2181/a", "zk2:2181/a"]).unwrap(), "zk1:2181,zk2:2181/a");
        assert_eq!(s(&["zk1", "[::1]:2181", "192.0.2.1:2182/"]).unwrap(), "zk1,[::1]:2181,192.0.2.1:2182");
        assert_eq!(keys(s(&[]).unwrap_err()), ["hosts"]);
        assert_eq!(keys(s(&["zk1:2181/a", "zk2:2181/b"]).unwrap_err()), ["hosts[1]"]);
        assert_eq!(keys(s(&[":2181", "zk:0", "zk:http", "a b:1", "zk:1/x/"]).unwrap_err()), ["hosts[0]", "hosts[1]", "hosts[2]", "hosts[3]", "hosts[4]"]);
    }

    #[test]
    fn checks_what_serde_cannot() {
        let c = zk("{hosts: [], path: services/web/, decode: {method: nerve, endpoint_name: http}, discovery_jitter: 300}");
        assert_eq!(keys(c.check()), ["hosts", "path", "decode.endpoint_name", "discovery_jitter"]);
        for bad in ["/a//b", "/a/./b", "/a/..", "/a/"] {
            assert!(check_zk_path(bad).is_err(), "{bad}");
        }
        for good in ["/", "/a", "/a/b-c_d.e/f"] {
            assert!(check_zk_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn zookeeper_poll() {
        let c: ZookeeperPollConfig = serde_yaml_ng::from_str("{hosts: [zk:2181], path: /x, polling_interval_sec: 30}").unwrap();
        assert!(c.check().is_empty());
        assert_eq!(c.settings().unwrap().mode, Mode::Poll { interval: Duration::from_secs(30) });
        let c: ZookeeperPollConfig = serde_yaml_ng::from_str("{hosts: [zk:2181], path: /x}").unwrap();
        assert_eq!(c.settings().unwrap().mode, Mode::Poll { interval: Duration::from_secs(60) });
        let c: ZookeeperPollConfig = serde_yaml_ng::from_str("{hosts: [zk:2181], path: /x, polling_interval_sec: 0}").unwrap();
        assert_eq!(c.settings().unwrap().mode, Mode::Poll { interval: Duration::from_millis(500) });
        let c: ZookeeperPollConfig = serde_yaml_ng::from_str("{hosts: [zk:2181], path: /x, polling_interval_sec: 100000}").unwrap();
        assert_eq!(keys(c.check()), ["polling_interval_sec"]);
        assert!(serde_yaml_ng::from_str::<ZookeeperPollConfig>("{hosts: [zk:2181], path: /x, discovery_jitter: 1}").is_err());
    }
}
