//! Every discovery kind myelin knows, selected by `method`. Each kind's settings live in its
//! own crate, which implements [`SourceConfig`]; [`Discovery::source`] is the one match over
//! the kinds, so adding a kind is one arm here (and one in the enum), and the compiler lists
//! what is missing. See "Adding a discovery source" in docs/architecture.md.

use myelin_source::{LabelFilter, SourceConfig, StaticConfig};
use myelin_watch_consul::ConsulConfig;
use myelin_watch_docker::DockerConfig;
use myelin_watch_etcd::EtcdConfig;
use myelin_watch_file::FileConfig;
use myelin_watch_zookeeper::{ZookeeperConfig, ZookeeperPollConfig};
use serde::Deserialize;

/// `services.<name>.discovery`. Each kind is read with [`with_path`], so that an error names
/// the key inside the kind's settings (an internally tagged enum loses it otherwise).
/// The registry kinds' settings are boxed: a service keeps its `Discovery` for its life, and
/// the largest kind would make every `static` service's as large.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Discovery {
    /// `default_servers` only (Synapse calls it `base`).
    #[serde(alias = "base", deserialize_with = "with_path")]
    Static(StaticConfig),
    /// A YAML or JSON file listing backends, watched for changes.
    #[serde(deserialize_with = "with_path")]
    File(FileConfig),
    /// The containers of one or more Docker engines.
    #[serde(deserialize_with = "with_path")]
    Docker(Box<DockerConfig>),
    /// Nerve or serverset registrations under a ZooKeeper path, followed with child watches.
    #[serde(deserialize_with = "with_path")]
    Zookeeper(Box<ZookeeperConfig>),
    /// The same, listed every `polling_interval_sec` (Synapse's `zookeeper_poll`).
    #[serde(deserialize_with = "with_path")]
    ZookeeperPoll(Box<ZookeeperPollConfig>),
    /// Instances registered under a key prefix in etcd (v3 API).
    #[serde(deserialize_with = "with_path")]
    Etcd(Box<EtcdConfig>),
    /// The healthy instances of a Consul service (blocking queries).
    #[serde(deserialize_with = "with_path")]
    Consul(Box<ConsulConfig>),
}

/// Marks the key path below `discovery` at the front of an error message:
/// `<MARK>servers[1].port<MARK>message`. The loader moves it into the error's key path.
pub(crate) const PATH_MARK: char = '\u{1}';

/// Deserialize a kind's settings, keeping the key path of an error in its message.
pub(crate) fn with_path<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    serde_path_to_error::deserialize(d).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            inner
        } else {
            serde::de::Error::custom(format!("{PATH_MARK}{path}{PATH_MARK}{inner}"))
        }
    })
}

/// Split a message made by [`with_path`] into the key path below `discovery` and the message.
pub(crate) fn split_path(message: &str) -> Option<(&str, &str)> {
    message.strip_prefix(PATH_MARK)?.split_once(PATH_MARK)
}

impl Discovery {
    /// The kind's settings, as the rest of myelin sees them.
    pub fn source(&self) -> &dyn SourceConfig {
        match self {
            Self::Static(c) => c,
            Self::File(c) => c,
            Self::Docker(c) => c.as_ref(),
            Self::Zookeeper(c) => c.as_ref(),
            Self::ZookeeperPoll(c) => c.as_ref(),
            Self::Etcd(c) => c.as_ref(),
            Self::Consul(c) => c.as_ref(),
        }
    }

    pub fn method(&self) -> &'static str {
        self.source().method()
    }

    /// Synapse's label filters, which apply to every method.
    pub fn label_filters(&self) -> &[LabelFilter] {
        self.source().label_filters()
    }

    /// Whether myelin discovers with this kind yet.
    pub fn supported(&self) -> bool {
        self.source().supported()
    }
}
