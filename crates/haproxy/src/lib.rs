//! myelin's HAProxy side: render the desired state into haproxy.cfg, validate a candidate with
//! HAProxy itself, install it atomically, and reload.
#![forbid(unsafe_code)]

mod command;
mod gate;
mod render;
mod writer;

pub use command::{run_command, CommandOutput};
pub use gate::ReloadGate;
pub use render::render;
pub use writer::{InstallOutcome, Writer};

use std::path::PathBuf;

/// Errors of the HAProxy side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("haproxy rejected the new configuration (kept as {rejected}): {output}")]
    Rejected { rejected: PathBuf, output: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {output}")]
    Failed { command: String, status: String, output: String },
    #[error("`{command}` did not finish within {seconds} s and was killed")]
    Timeout { command: String, seconds: u64 },
}
