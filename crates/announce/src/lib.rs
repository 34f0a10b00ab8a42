//! The announcing contract: what this host publishes to a registry, and what each registry's
//! backend implements.
//!
//! Announcing is the other half of discovery: each host's myelin publishes the ready containers
//! of its own Docker engine to a registry (etcd, Consul, ZooKeeper), and every host's myelin
//! discovers them from there. The set of instances a host wants published is computed from its
//! engine (level-triggered: always the complete set, [`Desired`]); a reconcile loop keeps one
//! registry equal to it through a [`Registry`] backend, reconnecting with backoff when the
//! registry fails. Backends live in the crate of their registry (`myelin-watch-etcd`,
//! `myelin-watch-consul`, `myelin-watch-zookeeper`), beside the code that reads the same format.
//!
//! Ownership: every entry a host writes carries its [`Owner`] in its [`InstanceId`], so a host
//! restarted takes over exactly its own entries (same ids, no duplicates) and never touches
//! another host's.
#![forbid(unsafe_code)]

pub mod ready;
mod reconcile;
mod registration;

pub use ready::{Check, CheckKind, Mapping};
pub use reconcile::{reconcile, AnnounceState, AnnounceStatus};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use myelin_core::ServiceName;
pub use myelin_source::Cause;
pub use registration::Registration;

/// The longest owner or instance id accepted (registries limit key and id lengths).
pub const MAX_ID_LEN: usize = 200;

/// Why an owner or instance id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is {0} characters, more than {MAX_ID_LEN}")]
    TooLong(usize),
    #[error("holds {0:?}: only ASCII letters, digits, '.' and '-' are allowed")]
    BadOwnerChar(char),
    #[error("holds {0:?}: only ASCII letters, digits, '.', '-' and '_' are allowed")]
    BadChar(char),
}

/// This host's identity in registries (by default its host name): ASCII letters, digits, `.`
/// and `-` (no `_`, which separates it from the rest of an [`InstanceId`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner(String);

impl Owner {
    pub fn new(s: &str) -> Result<Self, IdError> {
        check_len(s)?;
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '-')) {
            return Err(IdError::BadOwnerChar(c));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_len(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.len()));
    }
    Ok(())
}

/// The stable id of one announced instance: `<owner>_<container name>_<container port>`. The
/// same container gets the same id after a restart of myelin; it is the etcd key's last
/// segment, the ZooKeeper node's name, the Consul service id. Safe in a key, a path segment and
/// a URL path: ASCII letters, digits, `.`, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    /// The id of `container`'s `port` on `owner`'s engine. Docker container names are already
    /// within the charset (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`); anything else is refused.
    pub fn new(owner: &Owner, container: &str, port: u16) -> Result<Self, IdError> {
        Self::parse(&format!("{owner}_{container}_{port}"))
    }

    /// An id read back from a registry (a key's last segment, a node's name).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_len(s)?;
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
            return Err(IdError::BadChar(c));
        }
        Ok(Self(s.to_owned()))
    }

    /// Whether `owner` wrote this id.
    pub fn is_owned_by(&self, owner: &Owner) -> bool {
        self.0.strip_prefix(owner.as_str()).is_some_and(|rest| rest.starts_with('_'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One instance as published: where other hosts reach it, in the fields of Nerve's
/// registration (host, port, name, weight, labels). Built from validated values only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: InstanceId,
    /// The address other hosts reach it at (the host's, or the container's on a routed network).
    pub host: std::net::IpAddr,
    pub port: u16,
    /// The instance's name in the registration (the HAProxy server name other hosts use).
    pub name: String,
    pub weight: Option<u16>,
    pub labels: BTreeMap<String, String>,
}

/// Everything one registry should hold for this host, by id: always the complete set.
pub type Desired = Arc<BTreeMap<InstanceId, Instance>>;

/// A failure of a registry operation. `target` names the registry (`etcd http://…/services/web`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AnnounceError {
    /// The registry cannot be reached (refused, timed out, session or lease lost).
    #[error("{target} is unreachable")]
    Unreachable { target: String, #[source] cause: Cause },
    /// The registry answered with an error (denied, a conflict, a malformed answer).
    #[error("{target}: {what}")]
    Failed { target: String, what: String, #[source] cause: Option<Cause> },
}

impl AnnounceError {
    /// The error and its whole chain of causes on one line.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

/// One registry's backend, driven by the reconcile loop. The loop calls `connect` first (and
/// again after any error, with backoff), then `publish`/`withdraw` to make the registry equal
/// to the desired set, and `keepalive` at least every `keepalive_every()`. Backends never retry
/// or sleep by themselves: they report the failure and the loop decides.
pub trait Registry: Send + 'static {
    /// A short description for logs and `/status`: the registry's kind, address and path.
    fn target(&self) -> String;

    /// Connect (a new session, lease or client as the registry needs) and list the ids this
    /// host's owner has in the registry now: the loop adopts those still desired and withdraws
    /// the others.
    fn connect(&mut self) -> impl Future<Output = Result<BTreeSet<InstanceId>, AnnounceError>> + Send;

    /// Create or replace one instance's entry (idempotent).
    fn publish(&mut self, instance: &Instance) -> impl Future<Output = Result<(), AnnounceError>> + Send;

    /// Remove one instance's entry (idempotent: absent is success).
    fn withdraw(&mut self, id: &InstanceId) -> impl Future<Output = Result<(), AnnounceError>> + Send;

    /// Keep this host's entries alive (lease keep-alive, TTL check pass, session heartbeat).
    fn keepalive(&mut self) -> impl Future<Output = Result<(), AnnounceError>> + Send;

    /// How often `keepalive` must run.
    fn keepalive_every(&self) -> Duration;

    /// How long other hosts keep seeing this host's entries after myelin dies without
    /// withdrawing them (lease TTL, check TTL plus deregistration, session timeout).
    fn expiry(&self) -> Duration;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_owned_by_their_owner_only() {
        let a = Owner::new("host-a").unwrap();
        let ab = Owner::new("host-a.b").unwrap();
        let id = InstanceId::new(&a, "web_1", 8080).unwrap();
        assert_eq!(id.as_str(), "host-a_web_1_8080");
        assert!(id.is_owned_by(&a));
        assert!(!id.is_owned_by(&ab));
        assert!(!id.is_owned_by(&Owner::new("host").unwrap()));
        assert!(!InstanceId::parse("host-a").unwrap().is_owned_by(&a));
    }

    #[test]
    fn ids_refuse_what_a_key_or_path_cannot_hold() {
        assert_eq!(Owner::new("a_b"), Err(IdError::BadOwnerChar('_')));
        assert_eq!(Owner::new(""), Err(IdError::Empty));
        assert_eq!(InstanceId::parse("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(InstanceId::parse("a\nb"), Err(IdError::BadChar('\n')));
        assert_eq!(InstanceId::parse(&"x".repeat(MAX_ID_LEN + 1)), Err(IdError::TooLong(MAX_ID_LEN + 1)));
        let owner = Owner::new("h").unwrap();
        assert!(InstanceId::new(&owner, "../etc", 1).is_err());
    }
}
