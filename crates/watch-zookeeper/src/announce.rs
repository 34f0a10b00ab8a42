//! Announcing to ZooKeeper (`announce.to: {method: zookeeper, ...}`): this host's instances as
//! ephemeral nodes `<path>/<instance id>` holding Nerve's JSON ([`Registration`], the one
//! definition of what myelin writes; the watcher of [`crate::payload`] reads it), as Nerve does.
//!
//! - `connect` opens a session of its own (one per connection: ephemeral nodes belong to it),
//!   creates `<path>` (persistent, with its parents) if missing, and lists the children whose
//!   name is one of this owner's instance ids. A session that is still connected is kept
//!   rather than replaced, so an error elsewhere never drops this host's nodes.
//! - `publish` creates the node; if it exists and belongs to this session, its data is set
//!   (when it differs). If it belongs to another session (this host's previous run, which
//!   ZooKeeper keeps until that session times out), it is **replaced in one transaction**
//!   (`multi`: delete at the version read, create the new ephemeral node): the node never
//!   disappears, so other hosts see no gap; their watchers see the node's data change (or
//!   nothing, when it is the same), and the node now lives as long as this session.
//! - `withdraw` deletes the node (absent is success). `keepalive` checks that the session is
//!   still connected (the client sends ZooKeeper's heartbeats itself).
//!
//! If myelin dies, ZooKeeper deletes its nodes when its session expires: the negotiated
//! session timeout is the bound (`session_timeout`, default 10 s; the server keeps it within
//! 2 to 20 times its `tickTime`). Sessions are detached: dropping a client (a reconnection)
//! does not close the old session, whose nodes are replaced by the new one; a clean stop
//! withdraws every node first.

use std::collections::BTreeSet;
use std::time::Duration;

use myelin_announce::{AnnounceError, Cause, Instance, InstanceId, Owner, Registration, Registry};
use myelin_source::{Context, Seconds, SettingsProblem};
use serde::Deserialize;
use tracing::{debug, info};
use zookeeper_client::{Acls, Client, CreateMode, SessionState};

use crate::config::{check_zk_path, connect_string, DecodeConfig, DecodeMethod, ZookeeperConfig, ZookeeperPollConfig};

/// The default session timeout asked, in seconds.
pub const DEFAULT_SESSION_TIMEOUT: f64 = 10.0;
/// Bounds of `session_timeout` (ZooKeeper narrows it further to its own tickTime bounds).
const TIMEOUT_MIN: f64 = 1.0;
const TIMEOUT_MAX: f64 = 600.0;
/// How long a connection waits for a session.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long each operation waits for an answer.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at replacing a node that changes under us.
const REPLACE_ATTEMPTS: usize = 3;

/// `announce.to` with `method: zookeeper`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperAnnounce {
    /// The ensemble, as for the watcher (`host:port`, a chroot after one of them).
    pub hosts: Vec<String>,
    /// The registration path: one ephemeral child node per instance.
    pub path: String,
    /// The session timeout asked (default 10 s): ZooKeeper deletes a killed host's nodes
    /// when its session expires, so other hosts drop them within it.
    #[serde(default)]
    pub session_timeout: Option<Seconds>,
}

/// Why a ZooKeeper discovery does not make a default for announcing.
pub const NOT_NERVE: &str = "this service's ZooKeeper discovery decodes `serverset` nodes, and myelin announces Nerve's JSON";

impl ZookeeperAnnounce {
    fn from_parts(hosts: &[String], path: &str, decode: Option<&DecodeConfig>) -> Result<Self, &'static str> {
        if decode.is_some_and(|d| d.method == DecodeMethod::Serverset) {
            return Err(NOT_NERVE);
        }
        Ok(Self { hosts: hosts.to_vec(), path: path.to_owned(), session_timeout: None })
    }

    /// The default when `to` is absent: the discovery's ensemble and path (Nerve nodes only).
    pub fn from_discovery(d: &ZookeeperConfig) -> Result<Self, &'static str> {
        Self::from_parts(&d.hosts, &d.path, d.decode.as_ref())
    }

    /// The same, from `method: zookeeper_poll`.
    pub fn from_poll_discovery(d: &ZookeeperPollConfig) -> Result<Self, &'static str> {
        Self::from_parts(&d.hosts, &d.path, d.decode.as_ref())
    }

    pub fn session_timeout(&self) -> Duration {
        self.session_timeout.map_or(Duration::from_secs_f64(DEFAULT_SESSION_TIMEOUT), Seconds::duration)
    }

    /// Problems serde cannot see, with their key paths below `to`.
    pub fn check(&self) -> Vec<SettingsProblem> {
        let mut out = connect_string(&self.hosts).err().unwrap_or_default();
        if let Err(why) = check_zk_path(&self.path) {
            out.push(SettingsProblem::new("path", format!("{:?} {why}", self.path)));
        }
        if self.session_timeout.is_some_and(|s| !(TIMEOUT_MIN..=TIMEOUT_MAX).contains(&s.get())) {
            out.push(SettingsProblem::new("session_timeout", format!("must be {TIMEOUT_MIN} to {TIMEOUT_MAX} seconds")));
        }
        out
    }

    /// The registry for `owner`'s instances.
    pub fn registry(&self, owner: Owner, _cx: &Context) -> Result<ZookeeperRegistry, Vec<SettingsProblem>> {
        let problems = self.check();
        if !problems.is_empty() {
            return Err(problems);
        }
        let connect = connect_string(&self.hosts)?;
        let target = format!("zookeeper {connect} {}", self.path);
        Ok(ZookeeperRegistry { owner, connect, path: self.path.clone(), session_timeout: self.session_timeout(), target, client: None })
    }
}

/// The backend of one service's announcements to one ZooKeeper ensemble.
pub struct ZookeeperRegistry {
    owner: Owner,
    connect: String,
    path: String,
    session_timeout: Duration,
    target: String,
    client: Option<Client>,
}

/// The node of `id` under `path`.
pub fn node_path(path: &str, id: &InstanceId) -> String {
    if path == "/" {
        format!("/{id}")
    } else {
        format!("{path}/{id}")
    }
}

/// `owner`'s instance ids among a path's children (pure).
pub fn owned_children<'a>(children: impl IntoIterator<Item = &'a String>, owner: &Owner) -> BTreeSet<InstanceId> {
    children.into_iter().filter_map(|c| InstanceId::parse(c).ok()).filter(|id| id.is_owned_by(owner)).collect()
}

impl ZookeeperRegistry {
    fn error(&self, what: &str, e: zookeeper_client::Error) -> AnnounceError {
        use zookeeper_client::Error as E;
        match e {
            E::ConnectionLoss | E::SessionExpired | E::Timeout | E::NoHosts | E::ClientClosed | E::SessionMoved => AnnounceError::Unreachable { target: self.target.clone(), cause: Cause::new(e) },
            other => AnnounceError::Failed { target: self.target.clone(), what: what.to_owned(), cause: Some(Cause::new(other)) },
        }
    }

    fn timed_out(&self, what: &str) -> AnnounceError {
        AnnounceError::Unreachable { target: self.target.clone(), cause: Cause::msg(format!("{what}: no answer within {OP_TIMEOUT:?}")) }
    }

    fn client(&self) -> Result<&Client, AnnounceError> {
        self.client.as_ref().ok_or_else(|| AnnounceError::Failed { target: self.target.clone(), what: "not connected".into(), cause: None })
    }

    /// An operation bounded by [`OP_TIMEOUT`], its errors described by `what`.
    async fn op<T, E>(&self, what: &str, f: impl std::future::Future<Output = Result<T, E>>) -> Result<Result<T, E>, AnnounceError> {
        tokio::time::timeout(OP_TIMEOUT, f).await.map_err(|_| self.timed_out(what))
    }

    /// The current client if its session is connected and answers.
    async fn live(&self) -> bool {
        let Some(c) = &self.client else { return false };
        c.state() == SessionState::SyncConnected && matches!(tokio::time::timeout(Duration::from_secs(2), c.check_stat("/")).await, Ok(Ok(_)))
    }
}

impl Registry for ZookeeperRegistry {
    fn target(&self) -> String {
        self.target.clone()
    }

    async fn connect(&mut self) -> Result<BTreeSet<InstanceId>, AnnounceError> {
        if !self.live().await {
            // Detached: dropping the old client does not close its session (its nodes, if any,
            // are replaced by this session's when published).
            self.client = None;
            let connecting = Client::connector().with_session_timeout(self.session_timeout).with_fail_eagerly().with_detached().connect(&self.connect);
            let client = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(AnnounceError::Unreachable { target: self.target.clone(), cause: Cause::new(e) }),
                Err(_) => return Err(AnnounceError::Unreachable { target: self.target.clone(), cause: Cause::msg(format!("no session within {CONNECT_TIMEOUT:?}")) }),
            };
            info!(target = %self.target, session = %client.session_id(), timeout_ms = client.session_timeout().as_millis() as u64, "ZooKeeper session for announcing.");
            self.client = Some(client);
        }
        let c = self.client()?;
        if self.path != "/" {
            let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
            self.op("creating the path", c.mkdir(&self.path, &options)).await?.map_err(|e| self.error("creating the path", e))?;
        }
        let children = self.op("listing the path", c.list_children(&self.path)).await?.map_err(|e| self.error("listing the path", e))?;
        let owned = owned_children(&children, &self.owner);
        debug!(target = %self.target, owned = owned.len(), "Listed this host's nodes.");
        Ok(owned)
    }

    async fn publish(&mut self, instance: &Instance) -> Result<(), AnnounceError> {
        let c = self.client()?;
        let node = node_path(&self.path, &instance.id);
        let data = Registration::from(instance).to_json().into_bytes();
        let options = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
        let mine = c.session_id().0;
        for _ in 0..REPLACE_ATTEMPTS {
            match self.op("creating a node", c.create(&node, &data, &options)).await? {
                Ok(_) => return Ok(()),
                Err(zookeeper_client::Error::NodeExists) => {}
                Err(e) => return Err(self.error("creating a node", e)),
            }
            let (old, stat) = match self.op("reading a node", c.get_data(&node)).await? {
                Ok(found) => found,
                // Deleted in between: create it again.
                Err(zookeeper_client::Error::NoNode) => continue,
                Err(e) => return Err(self.error("reading a node", e)),
            };
            if stat.ephemeral_owner == mine {
                if old == data {
                    return Ok(());
                }
                match self.op("updating a node", c.set_data(&node, &data, Some(stat.version))).await? {
                    Ok(_) => return Ok(()),
                    Err(zookeeper_client::Error::BadVersion | zookeeper_client::Error::NoNode) => continue,
                    Err(e) => return Err(self.error("updating a node", e)),
                }
            }
            // Another session's node (this host's previous run): replace it in one transaction.
            let mut multi = c.new_multi_writer();
            multi.add_delete(&node, Some(stat.version)).map_err(|e| self.error("replacing a node", e))?;
            multi.add_create(&node, &data, &options).map_err(|e| self.error("replacing a node", e))?;
            match self.op("replacing a node", multi.commit()).await? {
                Ok(_) => {
                    debug!(target = %self.target, node = %node, previous_session = stat.ephemeral_owner, "Took over a node of a previous session.");
                    return Ok(());
                }
                Err(zookeeper_client::MultiWriteError::OperationFailed { source: zookeeper_client::Error::BadVersion | zookeeper_client::Error::NoNode | zookeeper_client::Error::NodeExists, .. }) => continue,
                Err(e) => return Err(self.error("replacing a node", e.into())),
            }
        }
        Err(AnnounceError::Failed { target: self.target.clone(), what: format!("the node {node:?} kept changing while it was replaced"), cause: None })
    }

    async fn withdraw(&mut self, id: &InstanceId) -> Result<(), AnnounceError> {
        let c = self.client()?;
        let node = node_path(&self.path, id);
        match self.op("deleting a node", c.delete(&node, None)).await? {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
            Err(e) => Err(self.error("deleting a node", e)),
        }
    }

    async fn keepalive(&mut self) -> Result<(), AnnounceError> {
        let c = self.client()?;
        match c.state() {
            SessionState::SyncConnected => Ok(()),
            state => Err(AnnounceError::Unreachable { target: self.target.clone(), cause: Cause::msg(format!("the session is {state}")) }),
        }
    }

    fn keepalive_every(&self) -> Duration {
        self.expiry() / 3
    }

    /// The negotiated session timeout once connected (ZooKeeper may change what was asked).
    fn expiry(&self) -> Duration {
        self.client.as_ref().map_or(self.session_timeout, Client::session_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ZookeeperAnnounce, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_checks_and_the_default_from_discovery() {
        let a = parse("{hosts: ['zk1:2181', 'zk2:2181/chroot'], path: /services/web}").unwrap();
        assert!(a.check().is_empty());
        assert_eq!(a.session_timeout(), Duration::from_secs(10));
        let cx = Context { service: "web".parse().unwrap(), config_file: "/etc/myelin/myelin.yaml".into() };
        let r = a.registry(Owner::new("host-a").unwrap(), &cx).ok().unwrap();
        assert_eq!(r.target(), "zookeeper zk1:2181,zk2:2181/chroot /services/web");
        assert_eq!((r.expiry(), r.keepalive_every()), (Duration::from_secs(10), Duration::from_secs(10) / 3));
        assert!(parse("{hosts: [zk:1], path: /x, ttl: 3}").unwrap_err().contains("unknown field"));
        assert!(parse("{hosts: [zk:1], path: /x, session_timeout: .nan}").is_err());
        let keys = |yaml: &str| parse(yaml).unwrap().check().into_iter().map(|p| p.key).collect::<Vec<_>>();
        assert_eq!(keys("{hosts: [], path: x/, session_timeout: 0.5}"), ["hosts", "path", "session_timeout"]);
        assert_eq!(keys("{hosts: ['zk:0'], path: /x, session_timeout: 601}"), ["hosts[0]", "session_timeout"]);
        assert!(a.registry(Owner::new("h").unwrap(), &cx).is_ok());
        assert!(parse("{hosts: [], path: /x}").unwrap().registry(Owner::new("h").unwrap(), &cx).is_err());

        let d: ZookeeperConfig = serde_yaml_ng::from_str("{hosts: ['zk:2181'], path: /nerve/web, discovery_jitter: 1}").unwrap();
        assert_eq!(ZookeeperAnnounce::from_discovery(&d).unwrap(), parse("{hosts: ['zk:2181'], path: /nerve/web}").unwrap());
        let d: ZookeeperConfig = serde_yaml_ng::from_str("{hosts: ['zk:2181'], path: /x, decode: {method: serverset}}").unwrap();
        assert_eq!(ZookeeperAnnounce::from_discovery(&d), Err(NOT_NERVE));
        let p: ZookeeperPollConfig = serde_yaml_ng::from_str("{hosts: ['zk:2181'], path: /x, decode: {method: nerve}}").unwrap();
        assert_eq!(ZookeeperAnnounce::from_poll_discovery(&p).unwrap().path, "/x");
    }

    #[test]
    fn nodes_and_owned_children() {
        let owner = Owner::new("host-a").unwrap();
        let id = InstanceId::new(&owner, "web_1", 80).unwrap();
        assert_eq!(node_path("/services/web", &id), "/services/web/host-a_web_1_80");
        assert_eq!(node_path("/", &id), "/host-a_web_1_80");
        let children: Vec<String> = ["host-a_web_1_80", "host-a_web_2_80", "host-b_web_1_80", "host-a", "host-a.b_x_1", "member_0000000001", "bad name"].iter().map(|s| s.to_string()).collect();
        assert_eq!(owned_children(&children, &owner).iter().map(InstanceId::as_str).collect::<Vec<_>>(), ["host-a_web_1_80", "host-a_web_2_80"]);
    }

    #[test]
    fn what_is_written_the_watcher_reads() {
        let owner = Owner::new("host-a").unwrap();
        let i = Instance {
            id: InstanceId::new(&owner, "web_1", 8080).unwrap(),
            host: "192.0.2.7".parse().unwrap(),
            port: 32768,
            name: "host-a_web_1_8080".into(),
            weight: Some(4),
            labels: [("az".to_owned(), "a".to_owned())].into(),
        };
        let data = Registration::from(&i).to_json();
        let got = crate::payload::decode(&crate::Format::Nerve, data.as_bytes()).unwrap();
        let crate::Instance::Up(d) = got else { panic!("{got:?}") };
        // The server name is Synapse's for Nerve nodes: `<name>_<host>:<port>`.
        assert_eq!((d.host.as_str(), d.port.as_str(), d.name.as_deref(), d.weight.as_deref()), ("192.0.2.7", "32768", Some("host-a_web_1_8080_192.0.2.7:32768"), Some("4")));
        assert_eq!(d.labels.get("az").map(String::as_str), Some("a"));
    }
}
