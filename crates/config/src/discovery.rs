//! Every discovery kind myelin knows, selected by `method`. Each kind's settings live in its
//! own crate, which implements [`SourceConfig`]; [`Discovery::source`] is the one match over
//! the kinds, so adding a kind is one arm here (and one in the enum), and the compiler lists
//! what is missing. See "Adding a discovery source" in docs/architecture.md.

use std::collections::BTreeMap;

use myelin_source::{Context, LabelFilter, Number, Partition, Seconds, SettingsProblem, SourceConfig, StaticConfig};
use myelin_watch_docker::DockerConfig;
use myelin_watch_file::FileConfig;
use serde::Deserialize;

/// `services.<name>.discovery`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Discovery {
    /// `default_servers` only (Synapse calls it `base`).
    #[serde(alias = "base")]
    Static(StaticConfig),
    /// A YAML or JSON file listing backends, watched for changes.
    File(FileConfig),
    /// The containers of one or more Docker engines.
    Docker(DockerConfig),
    Zookeeper(ZookeeperDiscovery),
    Etcd(EtcdDiscovery),
    Consul(ConsulDiscovery),
}

impl Discovery {
    /// The kind's settings, as the rest of myelin sees them.
    pub fn source(&self) -> &dyn SourceConfig {
        match self {
            Self::Static(c) => c,
            Self::File(c) => c,
            Self::Docker(c) => c,
            Self::Zookeeper(c) => c,
            Self::Etcd(c) => c,
            Self::Consul(c) => c,
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

/// Read, not supported yet: the service is written with its `default_servers`.
macro_rules! not_supported_yet {
    ($ty:ty, $method:literal) => {
        impl SourceConfig for $ty {
            fn method(&self) -> &'static str {
                $method
            }
            fn label_filters(&self) -> &[LabelFilter] {
                &self.label_filters
            }
            fn check(&self) -> Vec<SettingsProblem> {
                Vec::new()
            }
            fn partitions(&self, _: &Context) -> Vec<Partition> {
                Vec::new()
            }
            fn supported(&self) -> bool {
                false
            }
        }
    };
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperDiscovery {
    pub hosts: Vec<String>,
    pub path: String,
    pub decode: Option<BTreeMap<String, String>>,
    pub discovery_jitter: Option<Seconds>,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}
not_supported_yet!(ZookeeperDiscovery, "zookeeper");

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdDiscovery {
    pub host: String,
    pub port: Option<Number>,
    pub path: String,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}
not_supported_yet!(EtcdDiscovery, "etcd");

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulDiscovery {
    /// The service's name in Consul (default: the myelin service name).
    pub service: Option<String>,
    /// Consul's HTTP address (default `http://127.0.0.1:8500`).
    pub address: Option<String>,
    pub tag: Option<String>,
    pub datacenter: Option<String>,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}
not_supported_yet!(ConsulDiscovery, "consul");
