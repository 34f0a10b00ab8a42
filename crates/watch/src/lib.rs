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
use myelin_config::Discovery;
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
        other => Err(WatchError::Unsupported(other.method())),
    }
}

/// `default_servers` only: an empty `Reset` (so the service counts as synced), then nothing.
pub fn static_source() -> UpdateStream {
    Box::pin(futures::stream::once(async { Ok(Update::Reset(vec![])) }).chain(futures::stream::pending()))
}

use futures::StreamExt as _;
