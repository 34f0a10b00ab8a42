//! myelin's HAProxy side: render the desired state into haproxy.cfg, validate a candidate with
//! HAProxy itself, install it atomically, and reload.
#![forbid(unsafe_code)]

mod command;
mod driver;
mod gate;
mod master;
mod ondisk;
mod ops;
mod render;
mod route;
mod runtime;
mod servers;
mod socket;
mod state_file;
mod writer;

pub use command::{run_command, CommandOutput};
pub use driver::{Driver, DriverSettings, Outcome, Report};
pub use route::{route, Reload, Route, Situation};
pub use gate::ReloadGate;
pub use ondisk::{servers_by_backend, servers_on_disk};
pub use render::{render, Rendered, Renderer};
pub use master::{parse_show_proc, Master, Processes};
pub use ops::{runtime_ops, Op};
pub use runtime::{commands_of, remove_commands, state_command, update_commands, Command, Runtime};
pub use servers::{check, drift, parse_servers_state, parse_stat_sessions, servers_running, stuck_draining, Findings, ServerState, ADMIN_FORCED_DRAIN};
pub use state_file::filter_state_file;
pub use writer::{write_atomic, InstallOutcome, Writer, Written};

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
    #[error("runtime API at {socket}: `{command}`: {source}")]
    Socket { socket: PathBuf, command: String, source: std::io::Error },
    #[error("runtime API: `{command}` answered {reply:?}")]
    Runtime { command: String, reply: String },
    #[error("`{command}` did not finish within {seconds} s and was killed")]
    Timeout { command: String, seconds: u64 },
}
