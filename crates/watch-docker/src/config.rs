//! `method: docker`: the settings, their checks, and the sources they open (one per engine).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use myelin_core::{Host, Port, ServerName};
use myelin_source::{Context, LabelFilter, Number, Partition, Seconds, SettingsProblem, SourceConfig};
use serde::Deserialize;

use crate::{Address, DockerSource, Endpoint, ImageRef, Selector, Settings, DEFAULT_TCP_PORT};

/// A Docker engine to ask over TCP (Synapse's `servers` entry). Each one is tracked on its
/// own: an engine that goes away keeps its last known backends without touching the others'.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerServer {
    /// Names this engine in logs and prefixes its backends' names (`<name>_<container>`).
    pub name: String,
    /// The engine's address; also the address HAProxy dials for ports it publishes on all
    /// interfaces.
    pub host: String,
    /// The engine's API port (default 4243, Synapse's; Docker's TLS port is 2376).
    pub port: Option<Number>,
    /// Talk TLS: a directory holding `ca.pem`, `cert.pem` and `key.pem`, as `DOCKER_CERT_PATH`.
    /// Relative paths are taken from the config file's directory.
    pub cert_path: Option<PathBuf>,
}

/// Which address of a container HAProxy dials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerAddress {
    /// The engine's host address and the port published for `container_port` (Synapse's way).
    #[default]
    Published,
    /// The container's own IP address and `container_port` (for user-defined networks).
    Container,
}

fn yes() -> bool {
    true
}

/// `method: docker`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Engines reached over TCP. Empty: the local engine on `socket`.
    #[serde(default)]
    pub servers: Vec<DockerServer>,
    /// The local engine's unix socket when `servers` is empty (default: `DOCKER_HOST`, else
    /// `/var/run/docker.sock`).
    pub socket: Option<PathBuf>,
    /// Only containers of this image: `repo` matches any tag or digest of it, `repo:tag` only
    /// that tag, `repo@sha256:...` only that digest.
    pub image_name: Option<String>,
    /// The container's private port to route to (a container's `myelin.port` label overrides it).
    pub container_port: Option<Number>,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
    /// Only containers carrying all of these labels with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Only containers whose name matches this glob (`*` any run of characters, `?` one).
    pub name_pattern: Option<String>,
    #[serde(default)]
    pub address: DockerAddress,
    /// A container with a healthcheck is routed only while Docker reports it `healthy`
    /// (default true); false routes it from its start, whatever its health.
    #[serde(default = "yes")]
    pub require_healthy: bool,
    /// Seconds between full resyncs, a safety net behind the events stream (default 30).
    /// Synapse's poll interval, whose key it keeps.
    pub check_interval: Option<Seconds>,
}

/// The bounds of `check_interval`, in seconds.
const RESYNC_RANGE: (f64, f64) = (0.1, 86400.0);

impl DockerConfig {
    fn settings(&self) -> Settings {
        Settings {
            selector: Selector {
                image: self.image_name.as_deref().map(ImageRef::parse),
                labels: self.labels.clone(),
                name_pattern: self.name_pattern.clone(),
            },
            container_port: self.container_port.and_then(|p| u16::try_from(p.0).ok()),
            address: match self.address {
                DockerAddress::Published => Address::Published,
                DockerAddress::Container => Address::Container,
            },
            require_healthy: self.require_healthy,
            resync: self
                .check_interval
                .map_or(Duration::from_secs(30), |s| Duration::from_secs_f64(s.get().clamp(RESYNC_RANGE.0, RESYNC_RANGE.1))),
        }
    }

    /// The engines to ask, each with its partition name. With no `servers`, the local engine
    /// (`socket`, `DOCKER_HOST`, or the standard socket).
    fn endpoints(&self, cx: &Context) -> Vec<(String, Endpoint)> {
        if self.servers.is_empty() {
            let env = |k: &str| std::env::var(k).ok();
            let socket = self.socket.as_deref().map(|p| cx.resolve(p));
            let local = Endpoint::local(socket, env("DOCKER_HOST").as_deref(), env("DOCKER_TLS_VERIFY").as_deref(), env("DOCKER_CERT_PATH").as_deref());
            return vec![(String::new(), local)];
        }
        self.servers
            .iter()
            .map(|s| {
                let port = s.port.and_then(|p| u16::try_from(p.0).ok()).unwrap_or(DEFAULT_TCP_PORT);
                let cert_path = s.cert_path.as_deref().map(|p| cx.resolve(p));
                (s.name.clone(), Endpoint::Tcp { name: s.name.clone(), host: s.host.clone(), port, cert_path })
            })
            .collect()
    }
}

impl SourceConfig for DockerConfig {
    fn method(&self) -> &'static str {
        "docker"
    }

    fn label_filters(&self) -> &[LabelFilter] {
        &self.label_filters
    }

    fn check(&self) -> Vec<SettingsProblem> {
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            if let Err(e) = ServerName::parse(&s.name) {
                out.push(SettingsProblem::new(format!("servers[{i}].name"), e.to_string()));
            } else if !names.insert(s.name.as_str()) {
                out.push(SettingsProblem::new(format!("servers[{i}].name"), format!("server name `{}` is listed twice", s.name)));
            }
            if let Err(e) = Host::parse(&s.host) {
                out.push(SettingsProblem::new(format!("servers[{i}].host"), e.to_string()));
            }
            if let Some(p) = s.port {
                if let Err(e) = Port::parse(&p.0.to_string()) {
                    out.push(SettingsProblem::new(format!("servers[{i}].port"), e.to_string()));
                }
            }
        }
        if let Some(p) = self.container_port {
            if let Err(e) = Port::parse(&p.0.to_string()) {
                out.push(SettingsProblem::new("container_port", e.to_string()));
            }
        }
        for (key, value) in [("image_name", &self.image_name), ("name_pattern", &self.name_pattern)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                out.push(SettingsProblem::new(key, "must not be empty"));
            }
        }
        if self.check_interval.is_some_and(|i| !(RESYNC_RANGE.0..=RESYNC_RANGE.1).contains(&i.get())) {
            out.push(SettingsProblem::new("check_interval", "must be 0.1 to 86400 seconds"));
        }
        out
    }

    fn partitions(&self, cx: &Context) -> Vec<Partition> {
        let settings = self.settings();
        self.endpoints(cx)
            .into_iter()
            .map(|(name, endpoint)| {
                let source = DockerSource::new(endpoint, settings.clone());
                Partition::new(name, Box::new(move || source.open()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use myelin_source::{ServiceName, SourceError};

    fn config(yaml: &str) -> DockerConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn cx() -> Context {
        Context { service: ServiceName::parse("web").unwrap(), config_file: "/etc/myelin/myelin.yaml".into() }
    }

    #[test]
    fn one_partition_per_engine() {
        let two = config("{servers: [{name: a, host: 192.0.2.1}, {name: b, host: 192.0.2.2, port: 2375}], container_port: 8000}");
        let parts: Vec<String> = two.partitions(&cx()).into_iter().map(|p| p.name).collect();
        assert_eq!(parts, ["a", "b"]);
        let local = config("{socket: /nonexistent/docker.sock}");
        assert_eq!(local.partitions(&cx()).len(), 1);
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_file() {
        let c = config("{socket: run/docker.sock}");
        assert_eq!(c.endpoints(&cx())[0].1, Endpoint::Local { socket: "/etc/myelin/run/docker.sock".into() });
        let t = config("{servers: [{name: a, host: 192.0.2.1, cert_path: certs}]}");
        assert!(matches!(&t.endpoints(&cx())[0].1, Endpoint::Tcp { cert_path: Some(p), .. } if p == std::path::Path::new("/etc/myelin/certs")));
    }

    #[test]
    fn checks_what_serde_cannot() {
        let c = config("{servers: [{name: a, host: 192.0.2.1}, {name: a, host: 'bad host', port: 70000}], container_port: 0, image_name: ' ', check_interval: 0.01}");
        let keys: Vec<String> = c.check().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["servers[1].name", "servers[1].host", "servers[1].port", "container_port", "image_name", "check_interval"]);
        assert!(config("{container_port: 8000}").check().is_empty());
        assert!(serde_yaml_ng::from_str::<DockerConfig>("{check_interval: .inf}").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_engine_is_reported_once_then_the_stream_ends() {
        let local = config("{socket: /nonexistent/docker.sock}");
        let part = local.partitions(&cx()).pop().unwrap();
        let first: Vec<_> = (part.open)().collect().await;
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(
            matches!(&first[0], Err(e @ SourceError::Unreachable { .. }) if e.report().contains("unix:///nonexistent/docker.sock is unreachable")),
            "{first:?}"
        );
        // Reopened by the supervisor while still down: nothing new to say.
        let again: Vec<_> = (part.open)().collect().await;
        assert!(again.is_empty(), "{again:?}");
    }
}
