//! `method: file`: a YAML or JSON file listing backends, watched for changes.
//!
//! All the file sources of a process share one inotify instance ([`hub`]); each follows the
//! names on the way to its file, symlinks included ([`resolve`]), and reads its file only when
//! one of them changed ([`source`]).
#![forbid(unsafe_code)]

mod hub;
mod parse;
mod resolve;
mod source;

use std::path::PathBuf;
use std::time::Duration;

use myelin_source::{Context, LabelFilter, Partition, SettingsProblem, SourceConfig};
use serde::Deserialize;

pub use parse::{parse_backends, Known, Parsed};
pub use source::file_source;

/// The largest backends file read: 16 MiB, the bound of a config file too (100,000 backends
/// take about 6 MiB). At most this much and one byte is read, so a wrong path (`/dev/zero`, a
/// log file) fails at once and cannot exhaust memory; the service keeps its backends.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// How long the file must stay quiet after a write with the file still open before it is read
/// (a close after writing or a rename into place is read at once).
pub const QUIET: Duration = Duration::from_millis(25);

/// `method: file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The backends file; relative paths are taken from the config file's directory.
    pub path: PathBuf,
    #[serde(default)]
    pub label_filters: Vec<LabelFilter>,
}

impl SourceConfig for FileConfig {
    fn method(&self) -> &'static str {
        "file"
    }

    fn label_filters(&self) -> &[LabelFilter] {
        &self.label_filters
    }

    fn check(&self) -> Vec<SettingsProblem> {
        if self.path.as_os_str().is_empty() {
            return vec![SettingsProblem::new("path", "must not be empty")];
        }
        Vec::new()
    }

    fn partitions(&self, cx: &Context) -> Vec<Partition> {
        let path = cx.resolve(&self.path);
        vec![Partition::single(Box::new(move || file_source(path.clone(), QUIET)))]
    }
}
