//! The Docker source: the containers of one Docker engine as a service's backends.
//!
//! Each opening connects, subscribes to the engine's container events, lists the running
//! containers (the events stream is requested first and asked to replay the seconds before, so
//! nothing that starts in between is missed), and yields a `Reset`; then every relevant event
//! becomes an `Upsert` or a `Remove`, and a full `Reset` follows every `resync` period as a
//! safety net. A `kill` with a terminating signal (what `docker stop` sends first) removes the
//! container at once, while it still serves, so HAProxy drains it before it dies. The stream
//! ends when the engine goes away; the supervisor reopens it. Payloads become records through
//! the pure functions of [`payload`]; this crate knows nothing of HAProxy.
#![forbid(unsafe_code)]

mod config;
mod matching;
pub mod payload;
mod source;

use std::path::PathBuf;
use std::time::Duration;

pub use config::{DockerAddress, DockerConfig, DockerServer};
pub use matching::{glob_matches, ImageRef, Selector};
pub use payload::{backend_key, classify, verdict, Action, Verdict};
pub use source::DockerSource;

/// Synapse's default port for Docker engines listed in `servers`.
pub const DEFAULT_TCP_PORT: u16 = 4243;
/// The local engine's socket when neither the config nor `DOCKER_HOST` names one.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// A Docker engine to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The local engine, on a unix socket: ports it publishes are dialled on this host.
    Local { socket: PathBuf },
    /// An engine over TCP, with TLS when `cert_path` (holding `ca.pem`, `cert.pem`, `key.pem`)
    /// is set. `name` prefixes its backends' names; `host` is dialled for ports it publishes on
    /// all interfaces.
    Tcp { name: String, host: String, port: u16, cert_path: Option<PathBuf> },
}

impl Endpoint {
    /// The default engine as Docker's own client finds it: `DOCKER_HOST` (`unix://` or
    /// `tcp://`, TLS with `DOCKER_CERT_PATH` when `DOCKER_TLS_VERIFY` is set), else the
    /// standard socket. `socket` from the configuration wins over both.
    pub fn local(socket: Option<PathBuf>, docker_host: Option<&str>, tls_verify: Option<&str>, cert_path: Option<&str>) -> Self {
        if let Some(socket) = socket {
            return Self::Local { socket };
        }
        match docker_host.map(str::trim).filter(|h| !h.is_empty()) {
            Some(h) if h.starts_with("tcp://") => {
                let rest = h.trim_start_matches("tcp://").trim_end_matches('/');
                let (host, port) = match rest.rsplit_once(':') {
                    Some((host, port)) if !host.ends_with(':') => (host, port.parse().unwrap_or(2375)),
                    _ => (rest, 2375),
                };
                let tls = tls_verify.is_some_and(|v| !v.is_empty() && v != "0");
                let home_certs = || std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker"));
                let cert_path = if tls { cert_path.map(PathBuf::from).or_else(home_certs) } else { None };
                let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                // A local engine reached over TCP: no prefix, as for the socket.
                Self::Tcp { name: String::new(), host, port, cert_path }
            }
            Some(h) => Self::Local { socket: PathBuf::from(h.trim_start_matches("unix://")) },
            None => Self::Local { socket: PathBuf::from(DEFAULT_SOCKET) },
        }
    }

    /// The prefix of this engine's backends' names, if it has one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Tcp { name, .. } if !name.is_empty() => Some(name),
            _ => None,
        }
    }

    /// Where ports published on all interfaces are dialled.
    pub fn backend_host(&self) -> &str {
        match self {
            Self::Local { .. } => "127.0.0.1",
            Self::Tcp { host, .. } => host,
        }
    }

    /// Whether the engine runs on this host (so its loopback is ours).
    pub fn is_local(&self) -> bool {
        match self {
            Self::Local { .. } => true,
            Self::Tcp { host, .. } => host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local { socket } => write!(f, "unix://{}", socket.display()),
            Self::Tcp { host, port, cert_path, .. } => {
                let host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
                write!(f, "{}://{host}:{port}", if cert_path.is_some() { "https" } else { "tcp" })
            }
        }
    }
}

/// Which address of a container HAProxy dials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Address {
    /// The engine's host and the port published for the private port (Synapse's way).
    #[default]
    Published,
    /// The container's own IP address and private port.
    Container,
}

/// A service's Docker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub selector: Selector,
    /// The private port to route to, unless a container's `myelin.port` label says otherwise.
    pub container_port: Option<u16>,
    pub address: Address,
    /// Route a container that has a healthcheck only while it is healthy.
    pub require_healthy: bool,
    /// The period of the full resync.
    pub resync: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_engine_from_the_environment() {
        assert_eq!(Endpoint::local(None, None, None, None), Endpoint::Local { socket: DEFAULT_SOCKET.into() });
        assert_eq!(Endpoint::local(None, Some("unix:///tmp/d/docker.sock"), None, None), Endpoint::Local { socket: "/tmp/d/docker.sock".into() });
        assert_eq!(Endpoint::local(Some("/x.sock".into()), Some("tcp://h:1"), None, None), Endpoint::Local { socket: "/x.sock".into() });
        let tcp = Endpoint::local(None, Some("tcp://192.0.2.1:2376"), Some("1"), Some("/certs"));
        assert_eq!(tcp, Endpoint::Tcp { name: String::new(), host: "192.0.2.1".into(), port: 2376, cert_path: Some("/certs".into()) });
        assert_eq!(tcp.to_string(), "https://192.0.2.1:2376");
        assert_eq!(tcp.name(), None);
        assert!(!tcp.is_local());
        let plain = Endpoint::local(None, Some("tcp://[::1]:2375"), None, Some("/certs"));
        assert_eq!(plain, Endpoint::Tcp { name: String::new(), host: "::1".into(), port: 2375, cert_path: None });
        assert!(plain.is_local());
        assert_eq!(plain.to_string(), "tcp://[::1]:2375");
    }
}
