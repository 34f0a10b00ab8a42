//! The file format: Synapse's keys, plus a few of myelin's own. Every struct denies unknown
//! fields, so a typo is an error with a hint rather than a key silently ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    pub haproxy: Option<HaproxyConfig>,
    /// A directory of `<service>.json`/`.yaml` files, each one service.
    pub service_conf_dir: Option<PathBuf>,
    pub file_output: Option<FileOutputConfig>,
    /// Synapse's statsd settings: read, not supported yet.
    pub statsd: Option<StatsdConfig>,
    /// myelin's own: the admin HTTP listener (`/health`, `/ready`, `/status`, `/metrics`).
    /// Off unless set.
    pub admin: Option<AdminConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ADDRESS:PORT` (an IP address), or a port alone for `127.0.0.1:PORT`.
    pub bind: AdminBind,
}

/// `admin.bind`: a port number, or text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "a port number or \"ADDRESS:PORT\"")]
pub enum AdminBind {
    Port(u64),
    Text(String),
}

/// One or many: Synapse's lists may be written as a single string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines(pub Vec<String>);

impl<'de> Deserialize<'de> for Lines {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a string or a list of strings")]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => Lines(vec![s]),
            OneOrMany::Many(v) => Lines(v),
        })
    }
}

/// A number that Synapse configs sometimes write as a string of digits.
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

/// A command: a shell string (as Synapse runs it) or an argv list (run without a shell).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, expecting = "a shell command string or a list of arguments")]
pub enum CommandConfig {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub discovery: Discovery,
    #[serde(default)]
    pub haproxy: ServiceHaproxy,
    #[serde(default)]
    pub default_servers: Vec<ServerEntry>,
    #[serde(default)]
    pub keep_default_servers: bool,
    #[serde(default = "yes")]
    pub use_previous_backends: bool,
    pub backend_port_override: Option<Number>,
    /// Synapse's leader election: read, not supported yet.
    pub leader_election: Option<bool>,
}

fn yes() -> bool {
    true
}

/// A backend written in the config (`default_servers`, `static` discovery).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    pub name: Option<String>,
    pub host: String,
    pub port: Number,
    pub weight: Option<Number>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Synapse's label filter.
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

/// Every discovery kind myelin knows, selected by `method`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Discovery {
    /// `default_servers` only (Synapse calls it `base`).
    #[serde(alias = "base")]
    Static(StaticDiscovery),
    /// A YAML or JSON file listing backends, watched for changes.
    File(FileDiscovery),
    Docker(DockerDiscovery),
    Zookeeper(ZookeeperDiscovery),
    Etcd(EtcdDiscovery),
    Consul(ConsulDiscovery),
}

impl Discovery {
    /// Synapse's label filters, which apply to every method.
    pub fn label_filters(&self) -> &[LabelFilter] {
        match self {
            Self::Static(d) => &d.label_filters,
            Self::File(d) => &d.label_filters,
            Self::Docker(d) => &d.label_filters,
            Self::Zookeeper(d) => &d.label_filters,
            Self::Etcd(d) => &d.label_filters,
            Self::Consul(d) => &d.label_filters,
        }
    }

    pub fn method(&self) -> &'static str {
        match self {
            Self::Static(_) => "static",
            Self::File(_) => "file",
            Self::Docker(_) => "docker",
            Self::Zookeeper(_) => "zookeeper",
            Self::Etcd(_) => "etcd",
            Self::Consul(_) => "consul",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticDiscovery {
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    /// The backends file; relative paths are taken from the config file's directory.
    pub path: PathBuf,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}

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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerDiscovery {
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
    pub check_interval: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperDiscovery {
    pub hosts: Vec<String>,
    pub path: String,
    pub decode: Option<BTreeMap<String, String>>,
    pub discovery_jitter: Option<f64>,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdDiscovery {
    pub host: String,
    pub port: Option<Number>,
    pub path: String,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}

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

/// `services.<name>.haproxy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceHaproxy {
    pub port: Option<Number>,
    pub bind_address: Option<String>,
    pub bind_options: Option<String>,
    pub server_options: Option<String>,
    /// Deprecated in Synapse in favour of the service's `backend_port_override`.
    pub server_port_override: Option<Number>,
    #[serde(default)]
    pub listen: Lines,
    #[serde(default)]
    pub frontend: Lines,
    #[serde(default)]
    pub backend: Lines,
    pub backend_name: Option<String>,
    pub backend_order: Option<BackendOrderConfig>,
    #[serde(default)]
    pub disabled: bool,
    /// Read, not supported yet.
    pub shared_frontend: Option<Lines>,
    /// Read, not supported yet.
    pub cookie_value_method: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendOrderConfig {
    Asc,
    Desc,
    NoShuffle,
    Shuffle,
}

/// The top-level `haproxy` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxyConfig {
    pub global: Option<Lines>,
    pub defaults: Option<Lines>,
    #[serde(default)]
    pub extra_sections: BTreeMap<String, Lines>,
    pub config_file_path: Option<PathBuf>,
    #[serde(default = "yes")]
    pub do_writes: bool,
    #[serde(default = "yes")]
    pub do_reloads: bool,
    pub reload_command: Option<CommandConfig>,
    #[serde(default = "yes")]
    pub do_checks: bool,
    pub check_command: Option<CommandConfig>,
    pub bind_address: Option<String>,
    /// Seconds between reloads at the most (default 2).
    pub restart_interval: Option<f64>,
    /// Up to this fraction of `restart_interval` is added at random to each wait (default 0).
    pub restart_jitter: Option<f64>,
    pub socket_file_path: Option<Lines>,
    pub do_socket: Option<bool>,
    pub state_file_path: Option<PathBuf>,
    pub state_file_ttl: Option<f64>,
    pub server_order_seed: Option<u64>,
    pub max_server_id: Option<u64>,
    /// HAProxy's master CLI socket (HAProxy started with `-S <path>`): reloads go through it and
    /// are verified with `show proc`. Without it, `reload_command` is run.
    pub master_socket_path: Option<PathBuf>,
    /// Seconds a removed server is drained (no new connections) before it is put in maintenance
    /// and deleted, at the most (default 30). Draining ends earlier when its sessions reach zero.
    pub drain_timeout: Option<f64>,
    /// HAProxy's `server-state-file`, written before each reload so that health and weights
    /// survive it (default: `<config_file_path>.state`). Used when `do_socket` is on.
    pub server_state_file: Option<PathBuf>,
    /// Seconds between checks that HAProxy's servers (`show servers state`) match the desired
    /// state; a mismatch is repaired (default 30).
    pub verify_interval: Option<f64>,
    pub shared_frontend: Option<Lines>,
    pub use_nerve_weights: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutputConfig {
    pub output_directory: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsdConfig {
    pub host: Option<String>,
    pub port: Option<Number>,
    #[serde(default)]
    pub sample_rate: BTreeMap<String, f64>,
}
