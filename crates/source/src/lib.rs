//! The discovery contract: what every source crate implements and the daemon consumes.
//!
//! A source turns its registry into an [`UpdateStream`]: a stream of `Result<Update,
//! SourceError>` that begins with a `Reset` (the complete set), then carries `Upsert`s and
//! `Remove`s (or further `Reset`s). An `Err` item reports a problem and the stream goes on (the
//! service keeps its backends); the end of the stream means the source lost its registry.
//! Sources never retry by themselves: the supervisor in `myelin-watch` reopens them with capped
//! backoff and jitter, and drops whatever comes before the first `Reset` of each opening.
//! Dropping a stream cancels its source.
//!
//! Each source crate owns its settings: a serde struct (with `deny_unknown_fields`) that
//! implements [`SourceConfig`], which checks the settings and opens the source's partitions.
//! The closed `Discovery` enum in `myelin-config` lists every kind, and its one match turns a
//! kind into a `&dyn SourceConfig`.
#![forbid(unsafe_code)]

mod error;
mod settings;

use std::path::Path;
use std::pin::Pin;

use futures::Stream;
pub use myelin_core::{Discovered, ServiceName, Update};

pub use error::{Cause, SourceError};
pub use settings::{LabelCondition, LabelFilter, Number, Seconds};

/// What every source yields.
pub type UpdateStream = Pin<Box<dyn Stream<Item = Result<Update, SourceError>> + Send>>;

/// Opens (and after a disconnect, reopens) one source.
pub type Opener = Box<dyn Fn() -> UpdateStream + Send + Sync>;

/// One independently tracked part of a service's discovery (e.g. one Docker engine of several):
/// a partition that goes down keeps its own backends and leaves the others alone. Most sources
/// have one partition, named `""`.
pub struct Partition {
    pub name: String,
    pub open: Opener,
    /// A set known at once that never changes (the `static` kind's): it needs no task to
    /// watch it, and the daemon takes it as the first `Reset` straight away. `open` yields
    /// the same set, then nothing.
    pub fixed: Option<Vec<Discovered>>,
}

impl Partition {
    pub fn new(name: impl Into<String>, open: Opener) -> Self {
        Self { name: name.into(), open, fixed: None }
    }

    /// The only partition of a source whose set is `set`, for ever.
    pub fn fixed(set: Vec<Discovered>) -> Self {
        let given = set.clone();
        let open: Opener = Box::new(move || fixed_source(given.clone()));
        Self { name: String::new(), open, fixed: Some(set) }
    }

    /// The only partition of a source that has one.
    pub fn single(open: Opener) -> Self {
        Self::new(String::new(), open)
    }
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition").field("name", &self.name).finish_non_exhaustive()
    }
}

/// What a source is told about the service it discovers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The myelin service (e.g. the default name to look up in a registry).
    pub service: ServiceName,
    /// The configuration file the settings come from: relative paths in them are taken from
    /// its directory (see [`Context::resolve`]).
    pub config_file: std::path::PathBuf,
}

impl Context {
    /// A path from the settings, taken from the config file's directory unless absolute.
    pub fn resolve(&self, path: &Path) -> std::path::PathBuf {
        resolve(&self.config_file, path)
    }
}

/// A problem with a source's settings that serde cannot see alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsProblem {
    /// The key's path below `discovery`, e.g. `servers[1].host`; empty for the section itself.
    pub key: String,
    pub message: String,
}

impl SettingsProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// A discovery kind's settings: what the rest of myelin needs of them.
pub trait SourceConfig {
    /// The `method` that selects this kind.
    fn method(&self) -> &'static str;

    /// Synapse's label filters, applied by the supervisor to every record.
    fn label_filters(&self) -> &[LabelFilter];

    /// Check what serde could not (ranges, names, combinations); empty when all is well.
    fn check(&self) -> Vec<SettingsProblem>;

    /// The service's sources, one per partition. Opening one starts no I/O: that waits until
    /// its stream is polled. Relative paths are resolved with [`Context::resolve`].
    fn partitions(&self, cx: &Context) -> Vec<Partition>;

    /// Whether myelin can discover with this kind yet. A kind that cannot is written with its
    /// `default_servers` only, and `myelin check` says so.
    fn supported(&self) -> bool {
        true
    }
}

/// `method: static` (Synapse's `base`): the service's `default_servers` only.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}

impl SourceConfig for StaticConfig {
    fn method(&self) -> &'static str {
        "static"
    }

    fn label_filters(&self) -> &[LabelFilter] {
        &self.label_filters
    }

    fn check(&self) -> Vec<SettingsProblem> {
        Vec::new()
    }

    /// `default_servers` only (Synapse's `base`): an empty set, so the service counts as
    /// synced, then nothing.
    fn partitions(&self, _: &Context) -> Vec<Partition> {
        vec![Partition::fixed(Vec::new())]
    }
}

/// A `Reset` of `set`, then nothing.
fn fixed_source(set: Vec<Discovered>) -> UpdateStream {
    use futures::StreamExt as _;
    Box::pin(futures::stream::once(async { Ok(Update::Reset(set)) }).chain(futures::stream::pending()))
}

/// The path in `path` taken from the directory of the config file `base`, unless absolute.
pub fn resolve(base: &Path, path: &Path) -> std::path::PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(path)
    }
}
