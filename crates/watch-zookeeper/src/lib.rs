//! The ZooKeeper source: the instances registered under a path, as Airbnb's Nerve or a Finagle
//! serverset announcer writes them (one ephemeral child node per instance, holding JSON).
//!
//! `method: zookeeper` follows the path with child watches: each opening lists the children
//! (watching them), reads the data of each (watching it), and yields a `Reset`; when the child
//! watch fires it lists them again and reads only the children it has not seen, and when a data
//! watch fires it reads that child again, yielding `Upsert`s and `Remove`s. A path that does
//! not exist is an empty service, watched until it appears. `method: zookeeper_poll` lists
//! the path every `polling_interval_sec` instead, without watches. Sources with the same
//! connect string share one session.
//!
//! A lost connection or an expired session ends the stream (the service keeps its backends);
//! the supervisor opens a new session with backoff, and its first update is a complete
//! `Reset`. Node data becomes records through the pure functions of [`payload`]; a malformed
//! node is skipped and reported (`SourceError::Entry`, naming the node). This crate knows
//! nothing of HAProxy.
//!
//! [`announce`] is the other half: this host's instances as ephemeral Nerve nodes
//! (`announce.to: {method: zookeeper}`).
#![forbid(unsafe_code)]

pub mod announce;
mod config;
pub mod payload;
mod source;

pub use announce::{ZookeeperAnnounce, ZookeeperRegistry};
pub use config::{DecodeConfig, DecodeMethod, ZookeeperConfig, ZookeeperPollConfig};
pub use payload::{Format, Instance};
pub use source::{Mode, Settings, ZookeeperSource, SESSION_TIMEOUT};
