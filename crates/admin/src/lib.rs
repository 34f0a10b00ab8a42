//! myelin's admin side: the [`Snapshot`] of the daemon's state, the Prometheus [`Metrics`], the
//! HTTP listener that serves both (`/health`, `/ready`, `/status`, `/metrics`), and the table
//! `myelin status` prints.
#![forbid(unsafe_code)]

pub mod client;
mod metrics;
mod server;
mod status;

use std::net::SocketAddr;

pub use metrics::{Metrics, APPLY_OUTCOMES};
pub use server::{bind, router, serve};
pub use status::{render_table, timestamp, BackendStatus, ConfigStatus, FileOutputStatus, HaproxyStatus, Outcome, ServiceMap, ServiceStatus, Snapshot, WatcherState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("cannot ask {addr}: {error}")]
    Request { addr: SocketAddr, error: std::io::Error },
    #[error("unexpected answer from {addr}: {reason}")]
    Response { addr: SocketAddr, reason: String },
}
