//! Discovery sources and the contract they share.
//!
//! A source is a function that opens an [`UpdateStream`]: a stream of `Result<Update, WatchError>`
//! that begins with a `Reset`. An `Err` item reports a problem and the stream goes on (the
//! service keeps its backends); the end of the stream means the source lost its connection.
//! Sources never retry by themselves: the [`supervise`] loop reopens them with capped backoff and
//! jitter, and rewrites what follows a reopen to start with a `Reset`.
#![forbid(unsafe_code)]

mod file;
mod supervisor;

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use myelin_config::{Discovery, DockerAddress, DockerDiscovery};
use myelin_core::Update;

pub use file::{file_source, parse_backends};
pub use supervisor::{first_sync, supervise, Event, EventKind};

/// What every source yields.
pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<Update, WatchError>> + Send>>;

/// Opens (and after a disconnect, reopens) one source.
pub type Opener = Box<dyn Fn() -> UpdateStream + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is malformed: {reason}")]
    Malformed { path: String, reason: String },
    #[error("{path}: entry {index} rejected: {reason}")]
    Entry { path: String, index: usize, reason: String },
    #[error("cannot watch {path}: {reason}")]
    Watch { path: String, reason: String },
    /// A Docker engine's problem (unreachable, a container that cannot be routed, ...).
    #[error("{0}")]
    Docker(String),
    #[error("discovery method `{0}` is not supported yet")]
    Unsupported(&'static str),
}

/// The sources of a service: one per partition (e.g. per Docker host), each with its opener.
pub fn sources(discovery: &Discovery) -> Result<Vec<(String, Opener)>, WatchError> {
    match discovery {
        Discovery::Static(_) => Ok(vec![(String::new(), Box::new(|| static_source()) as Opener)]),
        Discovery::File(f) => {
            let path = f.path.clone();
            Ok(vec![(String::new(), Box::new(move || file_source(path.clone(), Duration::from_millis(25))) as Opener)])
        }
        Discovery::Docker(d) => Ok(docker_sources(d)),
        other => Err(WatchError::Unsupported(other.method())),
    }
}

/// One source per Docker engine, so an engine that goes down keeps its own backends and leaves
/// the others' alone. With no `servers`, the local engine (`socket`, `DOCKER_HOST`, or the
/// standard socket).
fn docker_sources(d: &DockerDiscovery) -> Vec<(String, Opener)> {
    use myelin_watch_docker as docker;
    let settings = docker::Settings {
        selector: docker::Selector {
            image: d.image_name.as_deref().map(docker::ImageRef::parse),
            labels: d.labels.clone(),
            name_pattern: d.name_pattern.clone(),
        },
        container_port: d.container_port.and_then(|p| u16::try_from(p.0).ok()),
        address: match d.address {
            DockerAddress::Published => docker::Address::Published,
            DockerAddress::Container => docker::Address::Container,
        },
        require_healthy: d.require_healthy,
        resync: Duration::from_secs_f64(d.check_interval.unwrap_or(30.0).clamp(0.1, 86400.0)),
    };
    let endpoints: Vec<(String, docker::Endpoint)> = if d.servers.is_empty() {
        let env = |k: &str| std::env::var(k).ok();
        let local = docker::Endpoint::local(d.socket.clone(), env("DOCKER_HOST").as_deref(), env("DOCKER_TLS_VERIFY").as_deref(), env("DOCKER_CERT_PATH").as_deref());
        vec![(String::new(), local)]
    } else {
        d.servers
            .iter()
            .map(|s| {
                let port = s.port.and_then(|p| u16::try_from(p.0).ok()).unwrap_or(docker::DEFAULT_TCP_PORT);
                (s.name.clone(), docker::Endpoint::Tcp { name: s.name.clone(), host: s.host.clone(), port, cert_path: s.cert_path.clone() })
            })
            .collect()
    };
    endpoints
        .into_iter()
        .map(|(partition, endpoint)| {
            let source = docker::DockerSource::new(endpoint, settings.clone());
            let open: Opener = Box::new(move || Box::pin(source.open().map(|r| r.map_err(|e| WatchError::Docker(e.to_string())))));
            (partition, open)
        })
        .collect()
}

/// `default_servers` only: an empty `Reset` (so the service counts as synced), then nothing.
pub fn static_source() -> UpdateStream {
    Box::pin(futures::stream::once(async { Ok(Update::Reset(vec![])) }).chain(futures::stream::pending()))
}

use futures::StreamExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    fn docker(yaml: &str) -> Discovery {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn one_docker_partition_per_engine() {
        let two = docker("{method: docker, servers: [{name: a, host: 192.0.2.1}, {name: b, host: 192.0.2.2, port: 2375}], container_port: 8000}");
        let parts: Vec<String> = sources(&two).unwrap().into_iter().map(|(p, _)| p).collect();
        assert_eq!(parts, ["a", "b"]);
        let local = docker("{method: docker, socket: /nonexistent/docker.sock}");
        assert_eq!(sources(&local).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_engine_is_reported_once_then_the_stream_ends() {
        let local = docker("{method: docker, socket: /nonexistent/docker.sock}");
        let (_, open) = sources(&local).unwrap().pop().unwrap();
        let first: Vec<_> = open().collect().await;
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(matches!(&first[0], Err(WatchError::Docker(m)) if m.contains("unix:///nonexistent/docker.sock is unreachable")), "{first:?}");
        // Reopened by the supervisor while still down: nothing new to say.
        let again: Vec<_> = open().collect().await;
        assert!(again.is_empty(), "{again:?}");
    }
}
