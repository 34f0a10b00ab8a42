//! Announcing to etcd (`announce.to: {method: etcd, ...}`): one key per instance,
//! `<path>/<instance id>`, holding the Nerve JSON the etcd watcher reads
//! ([`Registration::to_json`]), attached to a lease this host keeps alive. If myelin dies, the
//! lease expires after `ttl` seconds and etcd deletes the keys: that is the bound after which
//! other hosts stop routing to a dead host's instances.
//!
//! Each connection (the reconcile loop's `connect`) grants a new lease and lists this owner's
//! keys (`<path>/<owner>_*`); the loop re-puts the ones still desired on the new lease (same
//! keys: no gap, no duplicates) and deletes the rest. One member at a time, moving to the next
//! after a failure, like the watcher.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{Client, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use myelin_announce::{AnnounceError, Instance, InstanceId, Owner, Registry};
use myelin_source::{Context, Number, Seconds, SettingsProblem, SourceError};
use serde::Deserialize;
use tracing::debug;

use crate::source::{classify, connect_options, TimedOut};
use crate::{EtcdConfig, Registration, Secret, Settings, TlsSettings};

/// The lease TTL when `ttl` is not set, in seconds.
pub const DEFAULT_TTL: u64 = 10;
/// The bounds of `ttl`, in seconds (etcd's own minimum is about 2 s with its default timing).
const TTL_RANGE: (u64, u64) = (2, 86400);

/// `announce.to: {method: etcd, ...}`: the etcd discovery's connection keys and `path`, plus the
/// lease's `ttl`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdAnnounce {
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub host: Option<String>,
    pub port: Option<Number>,
    /// The key prefix: each instance is `<path>/<instance id>`.
    pub path: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub tls: Option<TlsSettings>,
    /// Seconds to connect to a member and for each request (default 5).
    pub timeout: Option<Seconds>,
    /// The lease's time to live in seconds (default 10): how long other hosts keep this host's
    /// instances after myelin is killed without withdrawing them. Kept alive every third of it.
    pub ttl: Option<Number>,
}

impl EtcdAnnounce {
    /// The default: announce where the service discovers from (same members, credentials, TLS
    /// and path).
    pub fn from_discovery(d: &EtcdConfig) -> Self {
        Self {
            endpoints: d.endpoints.clone(),
            host: d.host.clone(),
            port: d.port,
            path: d.path.clone(),
            user: d.user.clone(),
            password: d.password.clone(),
            tls: d.tls.clone(),
            timeout: d.timeout,
            ttl: None,
        }
    }

    fn as_discovery(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints.clone(),
            host: self.host.clone(),
            port: self.port,
            path: self.path.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            tls: self.tls.clone(),
            timeout: self.timeout,
            label_filters: Vec::new(),
        }
    }

    pub fn ttl(&self) -> u64 {
        self.ttl.map_or(DEFAULT_TTL, |t| t.0)
    }

    /// What serde cannot check, with each key below `to`.
    pub fn check(&self) -> Vec<SettingsProblem> {
        let mut out = self.as_discovery().settings().err().unwrap_or_default();
        if !(TTL_RANGE.0..=TTL_RANGE.1).contains(&self.ttl()) {
            out.push(SettingsProblem::new("ttl", format!("{} is not from {} to {} seconds", self.ttl(), TTL_RANGE.0, TTL_RANGE.1)));
        }
        out
    }

    /// The registry backend for `owner` (`check` passed); relative TLS paths are taken from the
    /// config file's directory.
    pub fn registry(&self, owner: Owner, cx: &Context) -> Result<EtcdRegistry, Vec<SettingsProblem>> {
        let mut settings = self.as_discovery().settings()?;
        if let Some(t) = &mut settings.tls {
            t.ca_file = cx.resolve(&t.ca_file);
            for p in [&mut t.cert_file, &mut t.key_file].into_iter().flatten() {
                *p = cx.resolve(p);
            }
        }
        Ok(EtcdRegistry { settings, owner, ttl: self.ttl(), next: 0, conn: None })
    }
}

/// The etcd backend of the reconcile loop.
pub struct EtcdRegistry {
    settings: Settings,
    owner: Owner,
    ttl: u64,
    /// The member to try first.
    next: usize,
    conn: Option<Conn>,
}

struct Conn {
    client: Client,
    member: usize,
    lease: i64,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

fn announce_error(e: SourceError) -> AnnounceError {
    match e {
        SourceError::Unreachable { origin, cause } => AnnounceError::Unreachable { target: origin, cause },
        SourceError::Failed { origin, what, cause } => AnnounceError::Failed { target: origin, what, cause },
        SourceError::Entry { origin, entry, cause } => AnnounceError::Failed { target: origin, what: entry, cause: Some(cause) },
    }
}

impl EtcdRegistry {
    fn key(&self, id: &InstanceId) -> String {
        format!("{}{id}", self.settings.prefix)
    }

    /// Run one request on the current connection, bounded by `timeout`; a failure drops the
    /// connection and moves to the next member for the next `connect`.
    async fn request<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl for<'c> FnOnce(&'c mut Conn) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'c>>,
    ) -> Result<T, AnnounceError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(AnnounceError::Failed { target: self.target(), what: "not connected".into(), cause: None });
        };
        let ep = self.settings.endpoints[conn.member].clone();
        let result = match tokio::time::timeout(timeout, f(conn)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => classify(&ep, what, e),
            Err(_) => SourceError::unreachable(crate::source::origin(&ep), TimedOut(timeout)),
        };
        self.lost();
        Err(announce_error(result))
    }

    fn lost(&mut self) {
        if let Some(c) = self.conn.take() {
            self.next = (c.member + 1) % self.settings.endpoints.len();
        }
    }

    /// Connect to one member: a client, a new lease and its keep-alive stream, and the ids of
    /// this owner under the prefix. The whole attempt is bounded by a third of the TTL (or
    /// `timeout` when shorter): a member that does not answer (a leader election, a partition)
    /// is left while the previous lease still keeps this host's keys, so that the next member
    /// can re-put them on a new lease before they expire.
    async fn connect_to(&self, i: usize) -> Result<(Conn, BTreeSet<InstanceId>), SourceError> {
        let ep = &self.settings.endpoints[i];
        let bound = self.settings.timeout.min(self.keepalive_every());
        tokio::time::timeout(bound, self.connect_steps(i))
            .await
            .map_err(|_| SourceError::unreachable(crate::source::origin(ep), TimedOut(bound)))?
    }

    async fn connect_steps(&self, i: usize) -> Result<(Conn, BTreeSet<InstanceId>), SourceError> {
        let ep = &self.settings.endpoints[i];
        let options = connect_options(&self.settings)?;
        let timeout = self.settings.timeout;
        let bounded = |e| SourceError::unreachable(crate::source::origin(ep), TimedOut(e));
        let mut client = Client::connect([ep.url()], Some(options)).await.map_err(|e| classify(ep, "connecting", e))?;
        let ttl = i64::try_from(self.ttl).unwrap_or(i64::MAX);
        let lease = tokio::time::timeout(timeout, client.lease_grant(ttl, None)).await.map_err(|_| bounded(timeout))?.map_err(|e| classify(ep, "granting a lease", e))?;
        let lease = lease.id();
        let (keeper, responses) =
            tokio::time::timeout(timeout, client.lease_keep_alive(lease)).await.map_err(|_| bounded(timeout))?.map_err(|e| classify(ep, "keeping the lease alive", e))?;
        let mine = format!("{}{}_", self.settings.prefix, self.owner);
        let listed = tokio::time::timeout(timeout, client.get(mine.as_bytes(), Some(GetOptions::new().with_prefix().with_keys_only())))
            .await
            .map_err(|_| bounded(timeout))?
            .map_err(|e| classify(ep, "listing this host's keys", e))?;
        let ids = owned_ids(&self.settings.prefix, &self.owner, listed.kvs().iter().map(|kv| kv.key()));
        Ok((Conn { client, member: i, lease, keeper, responses }, ids))
    }
}

/// The ids of `owner` among keys under `prefix` (one segment below it, owned, valid).
fn owned_ids<'k>(prefix: &str, owner: &Owner, keys: impl Iterator<Item = &'k [u8]>) -> BTreeSet<InstanceId> {
    keys.filter_map(|k| std::str::from_utf8(k).ok()?.strip_prefix(prefix).map(str::to_owned))
        .filter(|rest| !rest.contains('/'))
        .filter_map(|rest| InstanceId::parse(&rest).ok())
        .filter(|id| id.is_owned_by(owner))
        .collect()
}

/// The Nerve registration an instance is published as.
pub fn registration(i: &Instance) -> Registration {
    Registration { host: i.host.to_string(), port: i.port, name: Some(i.name.clone()), weight: i.weight, labels: i.labels.clone() }
}

impl Registry for EtcdRegistry {
    fn target(&self) -> String {
        let members: Vec<String> = self.settings.endpoints.iter().map(ToString::to_string).collect();
        format!("etcd {} {}", members.join(","), self.settings.prefix.trim_end_matches('/'))
    }

    async fn connect(&mut self) -> Result<BTreeSet<InstanceId>, AnnounceError> {
        self.conn = None;
        let n = self.settings.endpoints.len();
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (self.next + k) % n) {
            match self.connect_to(i).await {
                Ok((conn, ids)) => {
                    debug!(endpoint = %self.settings.endpoints[i], lease = conn.lease, owned = ids.len(), "Connected to etcd for announcing.");
                    self.next = i;
                    self.conn = Some(conn);
                    return Ok(ids);
                }
                Err(e) => {
                    debug!(endpoint = %self.settings.endpoints[i], problem = ?e.report(), "etcd member unavailable.");
                    failures.push(e);
                }
            }
        }
        let pick = failures.iter().position(|e| matches!(e, SourceError::Failed { .. })).unwrap_or(failures.len() - 1);
        let e = failures.swap_remove(pick);
        Err(announce_error(if n > 1 && !matches!(e, SourceError::Failed { .. }) {
            SourceError::failed_with(format!("etcd ({n} members)"), "no member answered", e)
        } else {
            e
        }))
    }

    async fn publish(&mut self, instance: &Instance) -> Result<(), AnnounceError> {
        let key = self.key(&instance.id);
        let value = registration(instance).to_json();
        self.request("publishing", self.settings.timeout, move |c| {
            let opts = PutOptions::new().with_lease(c.lease);
            Box::pin(async move { c.client.put(key, value, Some(opts)).await.map(|_| ()) })
        })
        .await
    }

    async fn withdraw(&mut self, id: &InstanceId) -> Result<(), AnnounceError> {
        let key = self.key(id);
        self.request("withdrawing", self.settings.timeout, move |c| Box::pin(async move { c.client.delete(key, None).await.map(|_| ()) })).await
    }

    async fn keepalive(&mut self) -> Result<(), AnnounceError> {
        // A member that stopped answering is left in time to move to another before the lease
        // expires: a keep-alive waits a third of the TTL at most.
        let bound = self.settings.timeout.min(self.keepalive_every());
        let ttl = self
            .request("keeping the lease alive", bound, |c| {
                Box::pin(async move {
                    c.keeper.keep_alive().await?;
                    Ok(c.responses.message().await?.map(|r| r.ttl()))
                })
            })
            .await?;
        match ttl {
            Some(t) if t > 0 => Ok(()),
            _ => {
                let target = self.target();
                self.lost();
                Err(AnnounceError::Failed { target, what: "the lease expired (etcd deleted this host's keys); publishing again".into(), cause: None })
            }
        }
    }

    fn keepalive_every(&self) -> Duration {
        Duration::from_millis(self.ttl * 1000 / 3)
    }

    fn expiry(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn parse(yaml: &str) -> EtcdAnnounce {
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn settings_and_defaults() {
        let d: EtcdConfig = serde_yaml_ng::from_str("{endpoints: ['127.0.0.1:2379'], path: /services/web, user: u, password: p, timeout: 2}").unwrap();
        let a = EtcdAnnounce::from_discovery(&d);
        assert_eq!((a.path.as_str(), a.ttl(), a.user.as_deref()), ("/services/web", DEFAULT_TTL, Some("u")));
        assert!(a.check().is_empty());
        let problems: Vec<String> = parse("{endpoints: [], path: /, ttl: 1}").check().into_iter().map(|p| p.key).collect();
        assert_eq!(problems, ["endpoints", "path", "ttl"]);
        assert!(serde_yaml_ng::from_str::<EtcdAnnounce>("{endpoints: [a], path: /s, label_filters: []}").is_err());
        let cx = Context { service: myelin_source::ServiceName::parse("web").unwrap(), config_file: "/etc/myelin/myelin.yaml".into() };
        let r = parse("{endpoints: ['127.0.0.1:2379', 'http://127.0.0.2:2379'], path: /services/web/, ttl: 9}").registry(Owner::new("h").unwrap(), &cx).unwrap();
        assert_eq!(r.target(), "etcd http://127.0.0.1:2379,http://127.0.0.2:2379 /services/web");
        assert_eq!((r.keepalive_every(), r.expiry()), (Duration::from_secs(3), Duration::from_secs(9)));
    }

    #[test]
    fn only_this_owners_keys_are_adopted() {
        let owner = Owner::new("host-a").unwrap();
        let keys: Vec<&[u8]> = vec![b"/s/host-a_web_8000", b"/s/host-a_web_8000/x", b"/s/host-a.b_web_8000", b"/s/host-b_web_8000", b"/s/host-a_bad key", b"/t/host-a_x_1"];
        let ids: Vec<String> = owned_ids("/s/", &owner, keys.into_iter()).into_iter().map(|i| i.to_string()).collect();
        assert_eq!(ids, ["host-a_web_8000"]);
    }

    #[test]
    fn the_value_is_what_the_watcher_reads() {
        let i = Instance {
            id: InstanceId::parse("h_web_8000").unwrap(),
            host: "192.0.2.10".parse().unwrap(),
            port: 32768,
            name: "web".into(),
            weight: Some(3),
            labels: BTreeMap::from([("az".to_owned(), "a".to_owned())]),
        };
        let json = registration(&i).to_json();
        assert_eq!(json, r#"{"host":"192.0.2.10","port":32768,"name":"web","weight":3,"labels":{"az":"a"}}"#);
        let d = crate::registration::parse(json.as_bytes()).unwrap();
        assert_eq!((d.host.as_str(), d.port.as_str(), d.name.as_deref(), d.weight.as_deref()), ("192.0.2.10", "32768", Some("web"), Some("3")));
    }
}
