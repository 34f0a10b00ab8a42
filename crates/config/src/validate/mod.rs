//! Turning the parsed file into what the daemon runs: the [`Spec`] for HAProxy, the discovery
//! settings per service, and HAProxy's operating settings. Every error is collected, not just
//! the first, and each points at its key's node in its file (see [`crate::position`]).
//!
//! - `services`: each service's spec (frontend, backend, listen lines, `default_servers`) and
//!   the checks across services;
//! - `discovery`: what each discovery kind's own check finds;
//! - `haproxy`: the sections of haproxy.cfg and how HAProxy is driven;
//! - `admin`: `admin`, `file_output`, `statsd`;
//! - `context`: the positions, errors and notices carried along.

mod admin;
mod announce;
mod context;
mod discovery;
mod haproxy;
mod services;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use myelin_core::{ServiceName, Spec, StoreOptions};

use crate::error::{ConfigError, Notice};
use crate::position::Positions;
use crate::schema::{Config, Discovery};
use context::Ctx;

/// A command to run: through `sh -c`, or directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    /// The program and its arguments.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Self::Argv(v) => v.clone(),
        }
    }
}

/// How myelin drives HAProxy.
#[derive(Debug, Clone, PartialEq)]
pub struct HaproxySettings {
    pub config_file_path: PathBuf,
    pub do_writes: bool,
    pub do_reloads: bool,
    pub reload_command: Option<Command>,
    pub do_checks: bool,
    /// `None`: `haproxy -c -f <candidate>`.
    pub check_command: Option<Command>,
    pub restart_interval: Duration,
    pub restart_jitter: f64,
    pub socket_file_path: Option<PathBuf>,
    pub do_socket: bool,
    pub state_file_path: Option<PathBuf>,
    pub state_file_ttl: Duration,
    pub master_socket_path: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub server_state_file: Option<PathBuf>,
    pub verify_interval: Duration,
}

/// What a service's watcher needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRuntime {
    /// Shared with the running watcher (which compares it with the next configuration's).
    pub discovery: std::sync::Arc<Discovery>,
    pub store: StoreOptions,
    /// What this host announces for the service, if anything (boxed: most services announce
    /// nothing, and a configuration may hold tens of thousands of services).
    pub announce: Option<Box<Announce>>,
}

/// A service's `announce` section, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Announce {
    /// Which containers of this host's engine (the Docker discovery's settings, no `servers`).
    pub containers: myelin_watch_docker::DockerConfig,
    /// The address announced for published ports; `None`: each container's own address.
    pub address: Option<std::net::IpAddr>,
    pub check: Option<myelin_announce::Check>,
    pub to: crate::announce::AnnounceTo,
}

impl Announce {
    /// How this host's records become instances.
    pub fn mapping(&self, owner: &myelin_announce::Owner) -> myelin_announce::Mapping {
        myelin_announce::Mapping {
            owner: owner.clone(),
            address: self.address,
            container_port: self.containers.container_port.and_then(|p| u16::try_from(p.0).ok()),
        }
    }
}

/// A loaded, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub file: PathBuf,
    pub spec: Spec,
    pub services: BTreeMap<ServiceName, ServiceRuntime>,
    pub haproxy: HaproxySettings,
    /// Synapse's `file_output.output_directory`.
    pub file_output: Option<PathBuf>,
    /// Where the admin HTTP listener binds, when it is on.
    pub admin: Option<SocketAddr>,
    /// Translations made and keys not supported yet: to be shown as warnings.
    pub notices: Vec<Notice>,
    /// `consul_services`: the template of the services made from tagged Consul services.
    pub consul_services: Option<crate::tagged::ConsulServicesConfig>,
    /// This host's name in registries (`announce_as`, else the host name), when a service
    /// announces.
    pub owner: Option<myelin_announce::Owner>,
}

impl Loaded {
    /// What the sources of `service` are told: its name, and the file their relative paths
    /// are taken from.
    pub fn source_context(&self, service: &ServiceName) -> myelin_source::Context {
        myelin_source::Context { service: service.clone(), config_file: self.file.clone() }
    }
}

pub(crate) fn validate(file: &Path, config: Config, positions: Positions) -> Result<Loaded, Vec<ConfigError>> {
    let mut cx = Ctx::new(positions);
    let hap = config.haproxy.as_ref();
    let mut sections = haproxy::sections(&mut cx, hap);
    let global_bind = hap.and_then(|h| h.bind_address.clone()).unwrap_or_else(|| "localhost".into());
    let (specs, services) = services::services(&mut cx, &config.services, &global_bind);
    let haproxy = haproxy::settings(&mut cx, file, hap);
    if cx.errors.is_empty() {
        haproxy::runtime_lines(&mut sections, &haproxy);
    }
    admin::statsd(&mut cx, &config);
    let file_output = admin::file_output(&mut cx, file, &config);
    let admin = admin::admin(&mut cx, &config);
    discovery::consul_services(&mut cx, &config);
    let owner = if services.values().any(|s| s.announce.is_some()) || config.announce_as.is_some() {
        announce::owner(&mut cx, config.announce_as.as_deref())
    } else {
        None
    };

    if cx.errors.is_empty() {
        let consul_services = config.consul_services.clone();
        Ok(Loaded { file: file.into(), spec: Spec { sections, services: specs }, services, haproxy, file_output, admin, notices: cx.notices, consul_services, owner })
    } else {
        Err(cx.errors)
    }
}
