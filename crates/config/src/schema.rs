//! The file format: Synapse's keys, plus a few of myelin's own. Every struct denies unknown
//! fields, so a typo is an error with a hint rather than a key silently ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

pub use crate::discovery::*;
pub use myelin_source::{LabelCondition, LabelFilter, Number, Seconds};

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
    /// myelin's own: every Consul service carrying a tag becomes a service, from a template.
    pub consul_services: Option<crate::tagged::ConsulServicesConfig>,
    /// myelin's own: this host's name in registries when it announces (default: the host name).
    pub announce_as: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ADDRESS:PORT` (an IP address), or a port alone for `127.0.0.1:PORT`.
    pub bind: AdminBind,
}

/// `admin.bind`: a port number, or text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminBind {
    Port(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for AdminBind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, not an untagged enum: serde's buffer for those cannot hold integers wider
        // than 64 bits ("invalid type: integer as u128, expected any value").
        struct V;
        fn out_of_range<E: serde::de::Error>(n: impl std::fmt::Display) -> E {
            E::custom(format!("port {n} is not from 1 to 65535"))
        }
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AdminBind;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number or \"ADDRESS:PORT\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<AdminBind, E> {
                Ok(AdminBind::Port(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<AdminBind, E> {
                u64::try_from(n).map(AdminBind::Port).map_err(|_| out_of_range(n))
            }
            fn visit_u128<E: serde::de::Error>(self, n: u128) -> Result<AdminBind, E> {
                Err(out_of_range(n))
            }
            fn visit_i128<E: serde::de::Error>(self, n: i128) -> Result<AdminBind, E> {
                Err(out_of_range(n))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<AdminBind, E> {
                Err(E::custom(format!("{v} is not a port number")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<AdminBind, E> {
                Ok(AdminBind::Text(s.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
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
    /// myelin's own: publish this host's containers of the service to a registry.
    pub announce: Option<crate::announce::AnnounceConfig>,
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
    pub restart_interval: Option<Seconds>,
    /// Up to this fraction of `restart_interval` is added at random to each wait (default 0).
    pub restart_jitter: Option<f64>,
    pub socket_file_path: Option<Lines>,
    pub do_socket: Option<bool>,
    pub state_file_path: Option<PathBuf>,
    pub state_file_ttl: Option<Seconds>,
    pub server_order_seed: Option<u64>,
    pub max_server_id: Option<u64>,
    /// HAProxy's master CLI socket (HAProxy started with `-S <path>`): reloads go through it and
    /// are verified with `show proc`. Without it, `reload_command` is run.
    pub master_socket_path: Option<PathBuf>,
    /// Seconds a removed server is drained (no new connections) before it is put in maintenance
    /// and deleted, at the most (default 30). Draining ends earlier when its sessions reach zero.
    pub drain_timeout: Option<Seconds>,
    /// HAProxy's `server-state-file`, written before each reload so that health and weights
    /// survive it (default: `<config_file_path>.state`). Used when `do_socket` is on.
    pub server_state_file: Option<PathBuf>,
    /// Seconds between checks that HAProxy's servers (`show servers state`) match the desired
    /// state; a mismatch is repaired (default 30).
    pub verify_interval: Option<Seconds>,
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
