//! The Consul source: the healthy instances of a Consul service as a myelin service's backends.
//!
//! Each opening asks `/v1/health/service/<name>` once without an index (a complete set:
//! `Reset`), then with Consul's blocking queries (`index` = the last `X-Consul-Index`, `wait`),
//! so an answer comes as soon as the service changes, or when `wait` expires. Every answer is a
//! complete set and becomes a `Reset` when it differs from the last one. The index follows
//! Consul's documented rules (a value that went backwards starts again from 0, one below 1 is
//! taken as 1) and requests are rate-limited, so an index that does not move never makes a
//! hot loop. On any fault (unreachable, an HTTP error such as 403 or 500, no answer within
//! `wait` plus Consul's jitter, a malformed answer) the stream yields one error and ends: the
//! supervisor reopens it with backoff and the service keeps its backends meanwhile. The same
//! fault again at the next opening is not reported again.
//!
//! [`announce`] is the other half: this host's instances registered with its local agent
//! (`announce.to: {method: consul}`), with a TTL check myelin keeps passing.
//!
//! [`catalog`] finds the Consul services that carry a tag (`/v1/catalog/services`, blocking
//! too), and turns each into a myelin service's settings from a template.
//!
//! Consul's answers are untrusted: [`payload`] turns them into [`Discovered`] records (pure
//! functions, tested on documented payloads), which the store validates. This crate knows
//! nothing of HAProxy. The ACL token is a [`Token`], whose `Debug` and `Display` hide it; it is
//! sent in the `X-Consul-Token` header (marked sensitive), never in a URL.
#![forbid(unsafe_code)]

pub mod announce;
pub mod catalog;
mod client;
pub mod payload;
mod settings;
mod source;

pub use myelin_core::Discovered;
pub use settings::{ConsulConfig, Endpoint, Env, Token, TokenFrom, DEFAULT_ADDRESS, DEFAULT_WAIT};
pub use announce::{ConsulAnnounce, ConsulRegistry};
pub use catalog::{CatalogSource, DEFAULT_PORT_TAG};
pub use source::{ConsulSource, Query};
