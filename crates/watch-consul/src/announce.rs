//! Announcing to Consul (`announce.to: {method: consul, ...}`): this host's instances as
//! services of its local Consul agent, each with a TTL check that myelin keeps passing.
//!
//! - `publish` is `PUT /v1/agent/service/register` with `ID` = the instance id, `Name` = the
//!   service's name in Consul, `Address`/`Port`, `Tags`, `Meta` (the instance's labels that
//!   Consul accepts, `weight`, and `myelin_owner` = this host's owner), `Weights`, and one TTL
//!   check (`CheckID` `service:<id>`, `TTL`, `DeregisterCriticalServiceAfter`) that starts
//!   passing. Registering the same ID again replaces it (idempotent).
//! - `keepalive` passes every published instance's check (`PUT /v1/agent/check/pass/<id>`).
//!   A check the agent no longer knows (404: the agent lost the service, or reaped it) is an
//!   error, so the reconcile loop connects again and registers it anew.
//! - `withdraw` is `PUT /v1/agent/service/deregister/<id>` (absent is success).
//! - `connect` makes a client (token and TLS read now) and lists the agent's services
//!   (`GET /v1/agent/services`) of this service name whose `Meta.myelin_owner` is this owner.
//!
//! If myelin dies without withdrawing, the check turns critical after `ttl`, and other hosts'
//! watchers (which route passing instances only, or warning ones, never critical) drop the
//! instances then: `ttl` is the bound. The agent removes the registration itself after
//! `deregister_critical_after` (Consul raises it to at least one minute, and reaps every 30 s).
//!
//! Consul's limits on `Meta` (64 pairs, keys of ASCII letters, digits, `_` and `-` up to 128
//! characters and not starting with `consul-`, values up to 512 characters) would make the
//! agent refuse the whole registration: labels that do not fit are left out of `Meta` (and
//! logged once per label key); the instance is still published. Consul's weights must be at
//! least 1: an instance of weight 0 (drained) is registered with `Weights {Passing: 1,
//! Warning: 0}` and its check kept at `warning`, so watchers routing only passing instances
//! leave it out and the others route it with weight 0.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use myelin_announce::{AnnounceError, Cause, Instance, InstanceId, Owner, Registry};
use myelin_source::{Context, Seconds, SettingsProblem, SourceError};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::client::Agent;
use crate::settings::{parse_address, ConsulConfig, Endpoint, Env, Token};

/// The default TTL of the check, in seconds: other hosts drop a killed host's instances
/// within it.
pub const DEFAULT_TTL: f64 = 10.0;
/// The default `DeregisterCriticalServiceAfter`, in seconds (Consul's minimum).
pub const DEFAULT_DEREGISTER_AFTER: f64 = 60.0;
/// The `Meta` key holding the owner of a registration.
pub const OWNER_KEY: &str = "myelin_owner";
/// The `Meta` key holding the instance's weight.
pub const WEIGHT_KEY: &str = "weight";
/// Each agent call is given up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Check passes in flight at once.
const PASSES_IN_FLIGHT: usize = 8;
/// Consul's limits on service metadata.
const META_MAX_PAIRS: usize = 64;
const META_KEY_MAX: usize = 128;
const META_VALUE_MAX: usize = 512;
/// How much of an error body is shown.
const BODY_SHOWN: usize = 200;
/// Bounds of `ttl` and `deregister_critical_after`, in seconds.
const TTL_MIN: f64 = 1.0;
const TTL_MAX: f64 = 86_400.0;

/// `announce.to` with `method: consul`: the local agent to register with, and the check.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulAnnounce {
    /// The service's name in Consul (default: the myelin service's name).
    #[serde(default)]
    pub service: Option<String>,
    /// Tags on every registration (with the discovery's defaults: the tags it selects on).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The local agent's HTTP(S) address (default: `CONSUL_HTTP_ADDR`, else
    /// `http://127.0.0.1:8500`). Registrations belong to the agent they are made with: give
    /// this host's own agent.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
    /// The ACL token (needs `service:write` on the service); default as for the watcher.
    #[serde(default)]
    pub token: Option<Token>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The TTL check's TTL (default 10 s): other hosts stop routing a killed host's instances
    /// within it. Passed every `ttl`/3.
    #[serde(default)]
    pub ttl: Option<Seconds>,
    /// The check's `DeregisterCriticalServiceAfter` (default 60 s; Consul raises anything
    /// shorter to one minute): the agent removes a registration whose check stayed critical
    /// this long.
    #[serde(default)]
    pub deregister_critical_after: Option<Seconds>,
}

impl ConsulAnnounce {
    /// The default when `to` is absent: the same agent, credentials and TLS as the service's
    /// Consul discovery, the same service name, and the tags it selects on (so its watchers
    /// see what is announced).
    pub fn from_discovery(d: &ConsulConfig) -> Self {
        Self {
            service: d.service.clone(),
            tags: d.selection().tags,
            address: d.address.clone(),
            ca_file: d.ca_file.clone(),
            cert_file: d.cert_file.clone(),
            key_file: d.key_file.clone(),
            server_name: d.server_name.clone(),
            token: d.token.clone(),
            token_file: d.token_file.clone(),
            ttl: None,
            deregister_critical_after: None,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl.map_or(Duration::from_secs_f64(DEFAULT_TTL), Seconds::duration)
    }

    pub fn deregister_critical_after(&self) -> Duration {
        self.deregister_critical_after.map_or(Duration::from_secs_f64(DEFAULT_DEREGISTER_AFTER), Seconds::duration)
    }

    /// The connection settings, as the watcher's.
    fn as_discovery(&self) -> ConsulConfig {
        ConsulConfig {
            address: self.address.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            server_name: self.server_name.clone(),
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            ..ConsulConfig::default()
        }
    }

    /// Problems serde cannot see, with their key paths below `to`.
    pub fn check(&self) -> Vec<SettingsProblem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, m: String| out.push(SettingsProblem::new(key, m));
        if self.service.as_deref().is_some_and(|s| s.trim().is_empty()) {
            bad("service", "must not be empty".into());
        }
        for (i, t) in self.tags.iter().enumerate() {
            if t.is_empty() {
                bad(&format!("tags[{i}]"), "must not be empty".into());
            }
        }
        if let Some(a) = &self.address {
            if let Err(e) = parse_address(a, false) {
                bad("address", e);
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            bad(if self.cert_file.is_some() { "key_file" } else { "cert_file" }, "`cert_file` and `key_file` go together".into());
        }
        if self.token.is_some() && self.token_file.is_some() {
            bad("token_file", "give either `token` or `token_file`".into());
        }
        for (key, v) in [("ttl", self.ttl), ("deregister_critical_after", self.deregister_critical_after)] {
            if v.is_some_and(|s| !(TTL_MIN..=TTL_MAX).contains(&s.get())) {
                bad(key, format!("must be {TTL_MIN} to {TTL_MAX} seconds"));
            }
        }
        out
    }

    /// The registry for `owner`'s instances of the service `cx.service` (paths taken from the
    /// config file's directory; the agent's address and token from the environment where the
    /// settings leave them out).
    pub fn registry(&self, owner: Owner, cx: &Context) -> Result<ConsulRegistry, Vec<SettingsProblem>> {
        let problems = self.check();
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut conn = self.as_discovery();
        for p in [&mut conn.ca_file, &mut conn.cert_file, &mut conn.key_file, &mut conn.token_file].into_iter().flatten() {
            *p = cx.resolve(p);
        }
        let endpoint = conn.endpoint(&Env::from_process()).map_err(|e| vec![SettingsProblem::new("address", e)])?;
        let service = self.service.clone().unwrap_or_else(|| cx.service.to_string());
        let target = format!("consul {} service {service:?}", endpoint.base.as_str().trim_end_matches('/'));
        let mut tags = self.tags.clone();
        tags.sort();
        tags.dedup();
        Ok(ConsulRegistry {
            owner,
            service,
            tags,
            endpoint,
            ttl: self.ttl(),
            deregister_after: self.deregister_critical_after(),
            target,
            agent: None,
            published: BTreeMap::new(),
            warned: BTreeSet::new(),
        })
    }
}

/// The state a published instance's TTL check is kept at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Weight 0: `warning`, whose weight is 0.
    Warn,
}

impl Verdict {
    fn path(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
        }
    }

    fn status(self) -> &'static str {
        match self {
            Self::Pass => "passing",
            Self::Warn => "warning",
        }
    }
}

/// The check's id of an instance: Consul's own default for a service's single check.
pub fn check_id(id: &InstanceId) -> String {
    format!("service:{id}")
}

/// Why a label is left out of `Meta`, if it is.
fn meta_refusal(key: &str, value: &str) -> Option<&'static str> {
    if key == OWNER_KEY || key == WEIGHT_KEY {
        Some("the key is myelin's own")
    } else if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Some("Consul's meta keys hold only ASCII letters, digits, '_' and '-'")
    } else if key.len() > META_KEY_MAX {
        Some("the key is longer than Consul's 128 characters")
    } else if key.starts_with("consul-") {
        Some("Consul reserves the `consul-` prefix")
    } else if value.len() > META_VALUE_MAX {
        Some("the value is longer than Consul's 512 characters")
    } else {
        None
    }
}

/// A Go duration as Consul takes it, in milliseconds (`10000ms`).
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The registration body of an instance (pure), the verdict its check is kept at, and the
/// labels left out of `Meta` with why.
pub fn registration(instance: &Instance, service: &str, tags: &[String], owner: &Owner, ttl: Duration, deregister_after: Duration) -> (Value, Verdict, Vec<(String, &'static str)>) {
    let mut meta = BTreeMap::new();
    meta.insert(OWNER_KEY.to_owned(), owner.to_string());
    if let Some(w) = instance.weight {
        meta.insert(WEIGHT_KEY.to_owned(), w.to_string());
    }
    let mut skipped = Vec::new();
    for (k, v) in &instance.labels {
        match meta_refusal(k, v) {
            Some(why) => skipped.push((k.clone(), why)),
            None if meta.len() >= META_MAX_PAIRS => skipped.push((k.clone(), "Consul takes at most 64 meta pairs")),
            None => {
                meta.insert(k.clone(), v.clone());
            }
        }
    }
    let (weights, verdict) = match instance.weight {
        Some(0) => (json!({"Passing": 1, "Warning": 0}), Verdict::Warn),
        Some(w) => (json!({"Passing": w, "Warning": w}), Verdict::Pass),
        None => (json!({"Passing": 1, "Warning": 1}), Verdict::Pass),
    };
    let body = json!({
        "ID": instance.id.as_str(),
        "Name": service,
        "Tags": tags,
        "Address": instance.host.to_string(),
        "Port": instance.port,
        "Meta": meta,
        "Weights": weights,
        "Check": {
            "CheckID": check_id(&instance.id),
            "Name": format!("myelin announces {}", instance.id),
            "TTL": go_duration(ttl),
            "DeregisterCriticalServiceAfter": go_duration(deregister_after),
            "Status": verdict.status(),
        },
    });
    (body, verdict, skipped)
}

/// One entry of `GET /v1/agent/services` (only the fields used).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AgentService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

/// The ids of `owner`'s registrations of `service` in an answer of `GET /v1/agent/services`
/// (pure).
pub fn owned_ids(body: &[u8], service: &str, owner: &Owner) -> Result<BTreeSet<InstanceId>, serde_json::Error> {
    let all: BTreeMap<String, Value> = serde_json::from_slice(body)?;
    Ok(all
        .into_values()
        .filter_map(|v| serde_json::from_value::<AgentService>(v).ok())
        .filter(|s| s.service == service && s.meta.as_ref().and_then(|m| m.get(OWNER_KEY)).is_some_and(|o| o == owner.as_str()))
        .filter_map(|s| InstanceId::parse(&s.id).ok())
        .filter(|id| id.is_owned_by(owner))
        .collect())
}

/// Up to [`BODY_SHOWN`] characters of an error body, on one line, printable only.
fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).take(BODY_SHOWN).collect();
    if out.is_empty() {
        out.push_str("(no message)");
    }
    out
}

/// The backend of one service's announcements to one Consul agent.
pub struct ConsulRegistry {
    owner: Owner,
    service: String,
    tags: Vec<String>,
    endpoint: Endpoint,
    ttl: Duration,
    deregister_after: Duration,
    target: String,
    agent: Option<Agent>,
    /// What this connection registered, with the verdict each check is kept at.
    published: BTreeMap<InstanceId, Verdict>,
    /// Label keys already reported as left out of `Meta`.
    warned: BTreeSet<String>,
}

impl ConsulRegistry {
    fn source_error(&self, e: SourceError) -> AnnounceError {
        match e {
            SourceError::Unreachable { cause, .. } => AnnounceError::Unreachable { target: self.target.clone(), cause },
            SourceError::Failed { what, cause, .. } => AnnounceError::Failed { target: self.target.clone(), what, cause },
            SourceError::Entry { entry, cause, .. } => AnnounceError::Failed { target: self.target.clone(), what: entry, cause: Some(cause) },
        }
    }

    fn failed(&self, what: impl Into<String>) -> AnnounceError {
        AnnounceError::Failed { target: self.target.clone(), what: what.into(), cause: None }
    }

    /// One agent call: (status, body). A connection failure is `Unreachable`; a 403 names the
    /// token's origin; other statuses are the caller's to judge.
    async fn call(&self, method: reqwest::Method, path: &[&str], body: Option<&Value>) -> Result<(reqwest::StatusCode, Vec<u8>), AnnounceError> {
        let agent = self.agent.as_ref().ok_or_else(|| self.failed("not connected"))?;
        let url = agent.url(path).map_err(|e| self.failed(e))?;
        let mut req = agent.client.request(method, url).headers(agent.headers.clone()).timeout(REQUEST_TIMEOUT);
        if let Some(b) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.to_string());
        }
        let timed_out = || self.failed(format!("no answer within {:.0} s", REQUEST_TIMEOUT.as_secs_f64()));
        let resp = req.send().await.map_err(|e| if e.is_timeout() { timed_out() } else { AnnounceError::Unreachable { target: self.target.clone(), cause: Cause::new(e.without_url()) } })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| if e.is_timeout() { timed_out() } else { AnnounceError::Unreachable { target: self.target.clone(), cause: Cause::new(e.without_url()) } })?;
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(self.failed(format!("Consul refused {} (HTTP 403): {}", agent.token_from, shown(&bytes))));
        }
        Ok((status, bytes.to_vec()))
    }

    async fn pass(&self, id: &InstanceId, verdict: Verdict) -> Result<(), AnnounceError> {
        let check = check_id(id);
        let (status, body) = self.call(reqwest::Method::PUT, &["v1", "agent", "check", verdict.path(), &check], None).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(self.failed(format!("the agent no longer has the check {check:?} (HTTP 404: {}): registering again", shown(&body))));
        }
        if !status.is_success() {
            return Err(self.failed(format!("passing the check {check:?}: HTTP {status}: {}", shown(&body))));
        }
        Ok(())
    }
}

impl Registry for ConsulRegistry {
    fn target(&self) -> String {
        self.target.clone()
    }

    async fn connect(&mut self) -> Result<BTreeSet<InstanceId>, AnnounceError> {
        self.agent = None;
        self.published.clear();
        let agent = Agent::connect(&self.endpoint, &self.target).await.map_err(|e| self.source_error(e))?;
        self.agent = Some(agent);
        let (status, body) = self.call(reqwest::Method::GET, &["v1", "agent", "services"], None).await?;
        if !status.is_success() {
            return Err(self.failed(format!("listing the agent's services: HTTP {status}: {}", shown(&body))));
        }
        let ids = owned_ids(&body, &self.service, &self.owner).map_err(|e| AnnounceError::Failed { target: self.target.clone(), what: "malformed list of the agent's services".into(), cause: Some(Cause::new(e)) })?;
        debug!(target = %self.target, owned = ids.len(), "Connected to the Consul agent.");
        Ok(ids)
    }

    async fn publish(&mut self, instance: &Instance) -> Result<(), AnnounceError> {
        let (body, verdict, skipped) = registration(instance, &self.service, &self.tags, &self.owner, self.ttl, self.deregister_after);
        for (key, why) in skipped {
            if self.warned.insert(key.clone()) {
                warn!(target = %self.target, label = ?key, why, "Label left out of the Consul registration.");
            }
        }
        let (status, resp) = self.call(reqwest::Method::PUT, &["v1", "agent", "service", "register"], Some(&body)).await?;
        if !status.is_success() {
            return Err(self.failed(format!("registering {}: HTTP {status}: {}", instance.id, shown(&resp))));
        }
        self.published.insert(instance.id.clone(), verdict);
        Ok(())
    }

    async fn withdraw(&mut self, id: &InstanceId) -> Result<(), AnnounceError> {
        let (status, resp) = self.call(reqwest::Method::PUT, &["v1", "agent", "service", "deregister", id.as_str()], None).await?;
        // 404: the agent has no such service (already withdrawn, or reaped).
        if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
            return Err(self.failed(format!("deregistering {id}: HTTP {status}: {}", shown(&resp))));
        }
        self.published.remove(id);
        Ok(())
    }

    async fn keepalive(&mut self) -> Result<(), AnnounceError> {
        let all: Vec<(InstanceId, Verdict)> = self.published.iter().map(|(id, v)| (id.clone(), *v)).collect();
        let this = &*self;
        let results: Vec<Result<(), AnnounceError>> = futures::stream::iter(all).map(|(id, v)| async move { this.pass(&id, v).await }).buffer_unordered(PASSES_IN_FLIGHT).collect().await;
        results.into_iter().collect()
    }

    fn keepalive_every(&self) -> Duration {
        self.ttl / 3
    }

    fn expiry(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ConsulAnnounce, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    fn instance(weight: Option<u16>, labels: &[(&str, &str)]) -> Instance {
        let owner = Owner::new("host-a").unwrap();
        Instance {
            id: InstanceId::new(&owner, "web_1", 8080).unwrap(),
            host: "192.0.2.7".parse().unwrap(),
            port: 32768,
            name: "host-a_web_1_8080".into(),
            weight,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn settings_defaults_checks_and_the_default_from_discovery() {
        let a = parse("{}").unwrap();
        assert!(a.check().is_empty());
        assert_eq!((a.ttl(), a.deregister_critical_after()), (Duration::from_secs(10), Duration::from_secs(60)));
        assert!(parse("{ttl: 5, wait: 3}").unwrap_err().contains("unknown field"));
        assert!(parse("{ttl: .inf}").is_err());
        let keys = |yaml: &str| parse(yaml).unwrap().check().into_iter().map(|p| p.key).collect::<Vec<_>>();
        assert_eq!(keys("{service: ' ', tags: [a, ''], address: 'ftp://x', cert_file: c, token: t, token_file: f, ttl: 0.5, deregister_critical_after: 100000}"), ["service", "tags[1]", "address", "key_file", "token_file", "ttl", "deregister_critical_after"]);
        let d: ConsulConfig = serde_yaml_ng::from_str("{service: web-prod, tag: blue, tags: [a], address: 'https://127.0.0.1:8501', token: s3cr3t, ca_file: ca.pem, only_passing: false}").unwrap();
        let a = ConsulAnnounce::from_discovery(&d);
        assert_eq!(a.service.as_deref(), Some("web-prod"));
        assert_eq!(a.tags, ["a", "blue"]);
        assert_eq!(a.address.as_deref(), Some("https://127.0.0.1:8501"));
        assert_eq!(a.token.as_ref().map(Token::secret), Some("s3cr3t"));
        assert!(a.check().is_empty());
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }

    #[test]
    fn the_registry_takes_its_name_and_paths_from_the_service() {
        let cx = Context { service: "web".parse().unwrap(), config_file: "/etc/myelin/myelin.yaml".into() };
        let r = parse("{address: 'http://127.0.0.1:8500', token_file: tok}").unwrap().registry(Owner::new("h").unwrap(), &cx).ok().unwrap();
        assert_eq!(r.target(), "consul http://127.0.0.1:8500 service \"web\"");
        assert_eq!(r.endpoint.token, crate::TokenFrom::File("/etc/myelin/tok".into()));
        assert_eq!((r.keepalive_every(), r.expiry()), (Duration::from_secs_f64(10.0 / 3.0), Duration::from_secs(10)));
    }

    #[test]
    fn registration_body() {
        let owner = Owner::new("host-a").unwrap();
        let i = instance(Some(5), &[("az", "a"), ("com.docker.compose.project", "x"), ("consul-x", "y"), ("myelin_owner", "evil"), ("big", &"v".repeat(513))]);
        let (body, verdict, skipped) = registration(&i, "web", &["blue".to_owned()], &owner, Duration::from_secs(10), Duration::from_secs(90));
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(
            body,
            json!({
                "ID": "host-a_web_1_8080", "Name": "web", "Tags": ["blue"], "Address": "192.0.2.7", "Port": 32768,
                "Meta": {"myelin_owner": "host-a", "weight": "5", "az": "a"},
                "Weights": {"Passing": 5, "Warning": 5},
                "Check": {"CheckID": "service:host-a_web_1_8080", "Name": "myelin announces host-a_web_1_8080", "TTL": "10000ms",
                          "DeregisterCriticalServiceAfter": "90000ms", "Status": "passing"},
            })
        );
        assert_eq!(skipped.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["big", "com.docker.compose.project", "consul-x", "myelin_owner"]);
        // No weight: Consul's default weights, no `weight` meta.
        let (body, verdict, _) = registration(&instance(None, &[]), "web", &[], &owner, Duration::from_millis(1500), Duration::from_secs(60));
        assert_eq!((body["Weights"].clone(), body["Meta"].clone(), verdict), (json!({"Passing": 1, "Warning": 1}), json!({"myelin_owner": "host-a"}), Verdict::Pass));
        assert_eq!(body["Check"]["TTL"], "1500ms");
        // Weight 0: kept at `warning`, whose weight is 0.
        let (body, verdict, _) = registration(&instance(Some(0), &[]), "web", &[], &owner, Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!((body["Weights"].clone(), body["Check"]["Status"].clone(), verdict), (json!({"Passing": 1, "Warning": 0}), json!("warning"), Verdict::Warn));
        // At most 64 meta pairs, the owner first.
        let many: Vec<(String, String)> = (0..100).map(|n| (format!("k{n:03}"), "v".to_owned())).collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (body, _, skipped) = registration(&instance(Some(1), &refs), "web", &[], &owner, Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(body["Meta"].as_object().unwrap().len(), 64);
        assert_eq!(body["Meta"]["myelin_owner"], "host-a");
        assert_eq!(skipped.len(), 38);
    }

    #[test]
    fn owned_ids_of_an_agent_listing() {
        let owner = Owner::new("host-a").unwrap();
        // Shaped as Consul's documentation shows `GET /v1/agent/services`.
        let body = br#"{
          "host-a_web_1_8080": {"ID": "host-a_web_1_8080", "Service": "web", "Tags": [], "Meta": {"myelin_owner": "host-a"}, "Port": 32768, "Address": "192.0.2.7", "Weights": {"Passing": 1, "Warning": 1}},
          "host-a_api_1_80": {"ID": "host-a_api_1_80", "Service": "api", "Meta": {"myelin_owner": "host-a"}, "Port": 1, "Address": ""},
          "host-b_web_1_8080": {"ID": "host-b_web_1_8080", "Service": "web", "Meta": {"myelin_owner": "host-b"}, "Port": 1, "Address": ""},
          "host-a_web_2_8080": {"ID": "host-a_web_2_8080", "Service": "web", "Meta": null, "Port": 1, "Address": ""},
          "host-a.evil_web_1_1": {"ID": "host-a.evil_web_1_1", "Service": "web", "Meta": {"myelin_owner": "host-a"}, "Port": 1},
          "redis": {"ID": "redis", "Service": "web", "Meta": {"myelin_owner": "host-a"}, "Port": 8000},
          "odd": 3
        }"#;
        let ids = owned_ids(body, "web", &owner).unwrap();
        assert_eq!(ids.iter().map(InstanceId::as_str).collect::<Vec<_>>(), ["host-a_web_1_8080"]);
        assert!(owned_ids(b"[]", "web", &owner).is_err());
        assert!(owned_ids(b"{}", "web", &owner).unwrap().is_empty());
    }
}
