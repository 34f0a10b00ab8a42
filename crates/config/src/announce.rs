//! `services.<name>.announce` and the top-level `announce_as`: which local containers this host
//! publishes for a service, at which address, after which check, and to which registry. The
//! registries are a closed, `method`-tagged enum ([`AnnounceTo`]); each arm's settings belong
//! to its registry's crate, which also makes its `Registry` backend.

use myelin_source::{Number, Seconds};
use myelin_watch_docker::DockerConfig;
use myelin_watch_etcd::EtcdAnnounce;
use serde::Deserialize;

use crate::discovery::{with_path, Discovery};

/// `services.<name>.announce`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// Which containers of this host's own engine: the Docker discovery's keys (`servers` is
    /// refused: a host announces its own engine only).
    pub containers: DockerConfig,
    /// The address other hosts reach the published ports at (an IP address); required unless
    /// `containers.address` is `container` (routed container networks).
    pub address: Option<String>,
    /// myelin's own check before a container is announced.
    pub check: Option<CheckConfig>,
    /// The registry; by default the service's own discovery when it is a registry (etcd).
    pub to: Option<AnnounceTo>,
}

/// `announce.to`: the registry to publish to, by `method`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum AnnounceTo {
    /// Keys `<path>/<instance id>` on a lease kept alive by myelin.
    #[serde(deserialize_with = "with_path")]
    Etcd(EtcdAnnounce),
}

impl AnnounceTo {
    /// The default `to`: the service's own discovery, when it is a registry myelin announces to.
    pub fn from_discovery(d: &Discovery) -> Option<Self> {
        match d {
            Discovery::Etcd(e) => Some(Self::Etcd(EtcdAnnounce::from_discovery(e))),
            Discovery::Static(_) | Discovery::File(_) | Discovery::Docker(_) | Discovery::Zookeeper(_) | Discovery::ZookeeperPoll(_) | Discovery::Consul(_) => None,
        }
    }

    pub fn method(&self) -> &'static str {
        match self {
            Self::Etcd(_) => "etcd",
        }
    }

    /// What serde cannot check, each with its key below `to`.
    pub fn check(&self) -> Vec<myelin_source::SettingsProblem> {
        match self {
            Self::Etcd(e) => e.check(),
        }
    }
}

/// `announce.check`: Nerve's check, run by myelin against each container before it is
/// announced, and while it is.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// `http` only: the path to `GET` (default `/`); 2xx and 3xx pass.
    pub path: Option<String>,
    /// Seconds between checks (default 1).
    pub interval: Option<Seconds>,
    /// Seconds one check may take (default 1).
    pub timeout: Option<Seconds>,
    /// Consecutive passes before a container is announced (default 1).
    pub rise: Option<Number>,
    /// Consecutive failures before it is withdrawn (default 1).
    pub fall: Option<Number>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    Tcp,
    Http,
}
