//! What the daemon tells the world about itself: the status snapshot (published through a
//! `watch` channel to the admin listener), the Prometheus metrics, systemd's notifications
//! (`READY=1`, `RELOADING=1`, `STATUS=`, `WATCHDOG=1`) and Synapse's `file_output`.
//!
//! The daemon task owns an [`Observer`] and calls one hook per thing that happened; nothing
//! here is shared with another task but the published snapshot and the metrics' atomics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use myelin_admin::{
    timestamp, ConfigStatus, FileOutputStatus, HaproxyStatus, Metrics, Outcome, ServiceMap, ServiceStatus, Snapshot, WatcherState,
};
use myelin_config::Loaded;
use myelin_core::{Applied, DesiredState, RoutedList, Scope, ServiceName, Store};
use myelin_haproxy::{Outcome as HaOutcome, Report};
use myelin_output::FileOutput;
use myelin_source::SourceError;
use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::notify::Notifier;

/// If no apply has succeeded by then, systemd is told `READY=1` anyway (with a `STATUS=` that
/// says why), so that a broken HAProxy does not turn into a start-up timeout and a restart loop.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The metric and status word of an outcome.
fn word(o: &HaOutcome) -> &'static str {
    match o {
        HaOutcome::Installed => "installed",
        HaOutcome::Unchanged => "unchanged",
        HaOutcome::NotWritten => "not_written",
        HaOutcome::Rejected(_) => "rejected",
        HaOutcome::Failed(_) => "failed",
    }
}

fn error_of(o: &HaOutcome) -> Option<String> {
    match o {
        HaOutcome::Rejected(e) | HaOutcome::Failed(e) => Some(e.clone()),
        HaOutcome::Installed | HaOutcome::Unchanged | HaOutcome::NotWritten => None,
    }
}

/// A service as the status shows it: its published entry itself, changed in place
/// (`Arc::make_mut`: copied first when the last snapshot still shares it).
struct Track {
    status: Arc<ServiceStatus>,
    /// Its servers in the desired state last applied (counted in `Observer::servers`).
    servers: usize,
}

impl Track {
    fn new(loaded: &Loaded, name: &ServiceName) -> Self {
        Self { status: Arc::new(Self::fresh(loaded, name)), servers: 0 }
    }

    /// The status of a service whose watcher was just started.
    fn fresh(loaded: &Loaded, name: &ServiceName) -> ServiceStatus {
        let discovery = &loaded.services[name].discovery;
        let supported = discovery.supported();
        ServiceStatus {
            method: discovery.method().into(),
            watcher: if supported { WatcherState::Starting } else { WatcherState::Unsupported },
            synced: !supported,
            backends: RoutedList::default(),
            last_update: None,
            last_error: None,
            last_apply: None,
            rejected: 0,
            reconnects: 0,
        }
    }

    fn edit(&mut self) -> &mut ServiceStatus {
        Arc::make_mut(&mut self.status)
    }
}

pub struct Observer {
    metrics: Arc<Metrics>,
    tx: watch::Sender<Arc<Snapshot>>,
    services: BTreeMap<ServiceName, Track>,
    /// The services' statuses as last published (shared with the snapshots), and the services
    /// changed since: a snapshot costs what changed, not the fleet.
    published: ServiceMap,
    dirty: BTreeSet<ServiceName>,
    /// Services that never delivered a complete set.
    unsynced: BTreeSet<ServiceName>,
    config_path: String,
    config_last_reload: Option<Outcome>,
    haproxy_path: String,
    last_apply: Option<Outcome>,
    last_reload: Option<Outcome>,
    runtime_api: Option<Outcome>,
    /// Services whose last apply failed: they show the next outcome whatever it touches.
    failed: std::collections::BTreeSet<ServiceName>,
    /// Servers in the desired state last applied, over every service (kept up to date service
    /// by service, for systemd's status line).
    servers: usize,
    started_at: String,
    /// The first discovery change not yet carried by an installed haproxy.cfg.
    first_change: Option<Instant>,
    notifier: Notifier,
    ready_sent: bool,
    ready_deadline: Instant,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    /// A change not published yet.
    unpublished: bool,
    file_output: Option<FileOutput>,
    file_output_last: Option<Outcome>,
    /// What this host announces (`announce_as`, and each service's loop).
    announce_as: Option<String>,
    announce: BTreeMap<String, myelin_admin::AnnounceStatus>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.admin {
            task.abort();
        }
    }
}

impl Observer {
    /// Set up for the first configuration; binds the admin listener if it is configured (a port
    /// that cannot be had is an error: the operator asked for it).
    pub fn start(loaded: &Loaded) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        let mut o = Self {
            metrics,
            tx,
            services: BTreeMap::new(),
            published: ServiceMap::new(),
            dirty: BTreeSet::new(),
            unsynced: BTreeSet::new(),
            config_path: loaded.file.display().to_string(),
            config_last_reload: None,
            haproxy_path: String::new(),
            last_apply: None,
            last_reload: None,
            runtime_api: None,
            failed: Default::default(),
            servers: 0,
            started_at: timestamp(SystemTime::now()),
            first_change: None,
            notifier: Notifier::from_env(),
            ready_sent: false,
            ready_deadline: Instant::now() + READY_TIMEOUT,
            admin: None,
            unpublished: true,
            file_output: None,
            file_output_last: None,
            announce_as: None,
            announce: BTreeMap::new(),
        };
        if let Some(addr) = loaded.admin {
            o.start_admin(addr).context("starting the admin listener (`admin.bind`)")?;
        }
        o.configure(loaded, &[]);
        Ok(o)
    }

    fn start_admin(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let listener = myelin_admin::bind(addr)?;
        let bound = listener.local_addr().unwrap_or(addr);
        let (rx, metrics) = (self.tx.subscribe(), self.metrics.clone());
        let task = tokio::spawn(myelin_admin::serve(listener, rx, metrics));
        if let Some((_, old)) = self.admin.replace((addr, task)) {
            old.abort();
        }
        info!(address = %bound, "Admin listener on http://{bound}/ (/health, /ready, /status, /metrics).");
        Ok(())
    }

    /// A configuration is in force (at start, or after a SIGHUP): follow its services; those in
    /// `restarted` got a new watcher.
    pub fn configure(&mut self, loaded: &Loaded, restarted: &[ServiceName]) {
        self.services.retain(|name, t| {
            let keep = loaded.services.contains_key(name);
            if !keep {
                self.servers -= t.servers;
                self.metrics.service_removed(name.as_str());
                self.dirty.insert(name.clone());
            }
            keep
        });
        for name in loaded.services.keys() {
            if !self.services.contains_key(name) {
                self.metrics.service_added(name.as_str());
                self.services.insert(name.clone(), Track::new(loaded, name));
                self.dirty.insert(name.clone());
            } else if restarted.contains(name) {
                let t = self.services.get_mut(name).expect("present").edit();
                self.dirty.insert(name.clone());
                let fresh = Track::fresh(loaded, name);
                t.method = fresh.method;
                t.watcher = fresh.watcher;
                t.synced |= fresh.synced;
                t.last_error = None;
            }
        }
        self.announce_as = loaded.owner.as_ref().map(ToString::to_string);
        self.config_path = loaded.file.display().to_string();
        self.haproxy_path = loaded.haproxy.config_file_path.display().to_string();
        if self.file_output.as_ref().map(|f| &f.dir) != loaded.file_output.as_ref() {
            self.file_output = loaded.file_output.clone().map(FileOutput::new);
            self.file_output_last = None;
        }
        if let Some(addr) = loaded.admin {
            if self.admin.as_ref().map(|(a, _)| *a) != Some(addr) {
                if let Err(e) = self.start_admin(addr) {
                    error!("{e:#}; the admin listener stays where it was.");
                }
            }
        } else if let Some((_, task)) = self.admin.take() {
            task.abort();
            info!("Admin listener stopped (no `admin` in the configuration).");
        }
        self.publish();
    }

    /// A discovery update reached the store.
    pub fn update(&mut self, service: &ServiceName, applied: &Applied) {
        let Some(t) = self.services.get_mut(service) else { return };
        let t = t.edit();
        self.dirty.insert(service.clone());
        t.watcher = WatcherState::Synced;
        let first_sync = !t.synced;
        t.synced = true;
        if !applied.rejected.is_empty() {
            t.rejected += applied.rejected.len() as u64;
            self.metrics.rejected(service.as_str(), applied.rejected.len() as u64);
        }
        if applied.changed {
            t.last_update = Some(timestamp(SystemTime::now()));
            self.first_change.get_or_insert_with(Instant::now);
        }
        if first_sync || applied.changed || !applied.rejected.is_empty() {
            self.publish();
        }
    }

    /// A discovery source reported a problem.
    pub fn problem(&mut self, service: &ServiceName, e: &SourceError) {
        let Some(t) = self.services.get_mut(service) else { return };
        let t = t.edit();
        self.dirty.insert(service.clone());
        if e.is_entry() {
            t.rejected += 1;
            self.metrics.rejected(service.as_str(), 1);
        } else {
            self.metrics.watcher_error(service.as_str());
            // It delivered a set before, but is blind now: not shown as synced meanwhile.
            if t.watcher == WatcherState::Synced {
                t.watcher = WatcherState::Failing;
            }
        }
        t.last_error = Some(e.report());
        self.publish();
    }

    pub fn disconnected(&mut self, service: &ServiceName) {
        let Some(t) = self.services.get_mut(service) else { return };
        let t = t.edit();
        self.dirty.insert(service.clone());
        t.watcher = if matches!(t.watcher, WatcherState::Synced | WatcherState::Failing) { WatcherState::Disconnected } else { t.watcher };
        t.reconnects += 1;
        self.metrics.watcher_reconnect(service.as_str());
        self.publish();
    }

    /// The driver was handed `desired` and did what `report` says. `file_output` follows the
    /// desired state whatever HAProxy made of it, as Synapse's does: it tells other consumers
    /// what discovery found, and a config HAProxy refused (e.g. for an `errorfile` missing)
    /// says nothing about the backends. `READY=1` is sent once HAProxy runs the config
    /// (verified through the master CLI when there is one).
    pub fn applied(&mut self, desired: &DesiredState, store: &Store, scope: &Scope, report: &Report) {
        self.runtime_commands(report.runtime_commands, report.runtime_error.is_some());
        self.runtime_api(report);
        if let Some(result) = &report.reload {
            self.reloaded(result.clone());
        }
        self.count_servers(desired, scope);
        let Some(outcome) = &report.outcome else { return };
        // One outcome, shared by every service this apply touched.
        let o = Arc::new(Outcome::now(word(outcome), error_of(outcome)));
        self.metrics.apply(word(outcome));
        let first = self.last_apply.is_none();
        // Only the services this apply changed (or that still show a failed apply) are
        // touched: the cost follows the change.
        let touched: Vec<ServiceName> = match scope {
            Scope::Services(names) if !first => names.union(&self.failed).cloned().collect(),
            Scope::All | Scope::Services(_) => self.services.keys().cloned().collect(),
        };
        let mut routed = BTreeMap::new();
        for name in touched {
            let Some(t) = self.services.get_mut(&name) else { continue };
            let Some(svc) = desired.services.get(&name) else { continue };
            let known = store.backends(&name);
            if self.file_output.is_some() {
                routed.insert(name.clone(), svc.routed(&known));
            }
            let t = t.edit();
            t.backends = RoutedList::new(svc.clone(), &known);
            self.dirty.insert(name.clone());
            self.metrics.set_backends(name.as_str(), t.backends.len());
            t.last_apply = Some(Arc::clone(&o));
            if o.is_ok() {
                self.failed.remove(&name);
            } else {
                self.failed.insert(name);
            }
        }
        let ok = o.is_ok();
        self.last_apply = Some(Arc::unwrap_or_clone(o));
        if ok {
            if let Some(t0) = self.first_change.take() {
                self.metrics.update_to_apply(t0.elapsed().as_secs_f64());
            }
        }
        if let Some(out) = &self.file_output {
            let result = if first || *scope == Scope::All { out.write(&routed) } else { out.update(&routed) };
            self.file_output_last = Some(match result {
                Ok(w) => {
                    if !w.written.is_empty() || !w.removed.is_empty() {
                        info!(written = ?w.written, removed = ?w.removed, dir = %out.dir.display(), "file_output updated.");
                    }
                    Outcome::now("ok", None)
                }
                Err(e) => {
                    error!("file_output: {e}; tried again at the next change.");
                    Outcome::now("failed", Some(e.to_string()))
                }
            });
        }
        if !self.ready_sent && report.in_force() {
            self.ready_sent = true;
            self.notifier.send(&[NotifyState::Ready]);
        }
        self.publish();
        let servers = self.servers;
        // The count is kept service by service; debug builds (every test) check it whole.
        debug_assert_eq!(servers, desired.server_count(), "the observer's server count drifted");
        if self.notifier.on() {
            let status = match error_of(outcome).or_else(|| report.reload.clone().and_then(Result::err)) {
                None => format!("{} services, {servers} servers; last apply: {}", desired.services.len(), word(outcome)),
                Some(e) => format!("{} services; last apply {}: {}", desired.services.len(), word(outcome), first_line(&e)),
            };
            self.notifier.status(&status);
        }
    }

    /// Follow the desired state's server count through what `scope` changed in it.
    fn count_servers(&mut self, desired: &DesiredState, scope: &Scope) {
        let mut count = |name: &ServiceName, t: &mut Track| {
            let now = desired.services.get(name).map_or(0, |s| s.servers.len());
            self.servers = self.servers - t.servers + now;
            t.servers = now;
        };
        match scope {
            Scope::All => self.services.iter_mut().for_each(|(name, t)| count(name, t)),
            Scope::Services(names) => {
                for name in names {
                    if let Some(t) = self.services.get_mut(name) {
                        count(name, t);
                    }
                }
            }
        }
    }

    /// What a driver report says of HAProxy's runtime API: shown when that changes (failing,
    /// failing differently, answering again).
    pub fn runtime_api(&mut self, report: &Report) {
        let now = match (&report.runtime_error, report.runtime_ok || report.runtime_commands > 0) {
            (Some(e), _) => Outcome::now("failed", Some(e.clone())),
            (None, true) => Outcome::now("ok", None),
            (None, false) => return,
        };
        if self.runtime_api.as_ref().is_some_and(|o| o.outcome == now.outcome && o.error == now.error) {
            return;
        }
        self.runtime_api = Some(now);
        self.publish();
    }

    /// haproxy.cfg was brought in step with what the runtime API made HAProxy run, or could
    /// not be: shown as the last apply when it failed, and when it works again.
    pub fn file_written(&mut self, outcome: &HaOutcome) {
        let was_failed = self.last_apply.as_ref().is_some_and(|o| !o.is_ok());
        if outcome.is_ok() && !was_failed {
            return;
        }
        self.last_apply = Some(Outcome::now(word(outcome), error_of(outcome)));
        self.publish();
    }

    /// Commands went to HAProxy's runtime API: `ok` of them succeeded, and one more failed when
    /// `failed`.
    pub fn runtime_commands(&mut self, ok: u64, failed: bool) {
        for _ in 0..ok {
            self.metrics.runtime_command(true);
        }
        if failed {
            self.metrics.runtime_command(false);
        }
    }

    /// HAProxy was reloaded (master CLI or `reload_command`), or failed to.
    fn reloaded(&mut self, result: Result<(), String>) {
        self.metrics.reload(result.is_ok());
        self.last_reload = Some(match result {
            Ok(()) => Outcome::now("ok", None),
            Err(e) => Outcome::now("failed", Some(e)),
        });
        self.publish();
    }

    /// SIGHUP: a configuration reload begins.
    pub fn config_reloading(&mut self) {
        let mut states = vec![NotifyState::Reloading, NotifyState::Status("Reloading the configuration")];
        // systemd 253+ wants the time of the reload request with RELOADING=1.
        if let Ok(t) = NotifyState::monotonic_usec_now() {
            states.push(t);
        }
        self.notifier.send(&states);
    }

    /// The configuration reload ended: swapped in, or refused (and the old one kept).
    pub fn config_reloaded(&mut self, result: Result<(), String>) {
        self.metrics.config_reload(result.is_ok());
        let status = match &result {
            Ok(()) => "Configuration reloaded".to_owned(),
            Err(e) => format!("Configuration reload refused, the running one is kept: {}", first_line(e)),
        };
        self.config_last_reload = Some(match result {
            Ok(()) => Outcome::now("ok", None),
            Err(e) => Outcome::now("invalid", Some(e)),
        });
        self.notifier.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.publish();
    }

    /// Time-driven duties (the watchdog, the `READY=1` deadline): select on this in the loop.
    pub async fn tick(&mut self) {
        let ready_at = (!self.ready_sent).then_some(self.ready_deadline);
        let next = match (self.notifier.next_ping, ready_at) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return std::future::pending().await,
        };
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        if let (Some(at), Some(every)) = (self.notifier.next_ping, self.notifier.watchdog) {
            if at <= now {
                self.notifier.send(&[NotifyState::Watchdog]);
                self.notifier.next_ping = Some(now + every);
            }
        }
        if !self.ready_sent && self.ready_deadline <= now {
            self.ready_sent = true;
            let why = match &self.last_apply {
                Some(o) => format!("started, but no apply has succeeded yet: {}", o.error.as_deref().map(first_line).unwrap_or_default()),
                None => "started, still waiting for discovery before the first apply".to_owned(),
            };
            warn!("{why}");
            self.notifier.send(&[NotifyState::Ready, NotifyState::Status(&why)]);
        }
    }

    /// The announcers' statuses changed.
    pub fn announcing(&mut self, statuses: BTreeMap<String, myelin_admin::AnnounceStatus>) {
        if statuses != self.announce {
            let counts: Vec<(&str, usize, bool)> = statuses.iter().map(|(n, a)| (n.as_str(), a.published.len(), a.state == "failing")).collect();
            self.metrics.set_announce(&counts);
            self.announce = statuses;
            self.publish();
        }
    }

    pub fn stopping(&mut self) {
        self.notifier.send(&[NotifyState::Stopping, NotifyState::Status("Stopping; HAProxy keeps the last installed config")]);
    }

    /// Something to show changed: published at the next [`Observer::flush`].
    fn publish(&mut self) {
        self.unpublished = true;
    }

    /// Publish the status snapshot if anything changed since the last one. The daemon calls it
    /// once per turn of its loop, so a burst of events is one snapshot, and a snapshot re-uses
    /// the entries of the services that did not change.
    pub fn flush(&mut self) {
        if !self.unpublished {
            return;
        }
        self.unpublished = false;
        for name in std::mem::take(&mut self.dirty) {
            match self.services.get_mut(&name) {
                Some(t) => {
                    let status = Arc::clone(&t.status);
                    if status.synced {
                        self.unsynced.remove(&name);
                    } else {
                        self.unsynced.insert(name.clone());
                    }
                    self.published.insert(name.to_string(), status);
                }
                None => {
                    self.unsynced.remove(&name);
                    self.published.remove(name.as_str());
                }
            }
        }
        let services = self.published.clone();
        let ready = self.unsynced.is_empty();
        self.metrics.set_ready(ready);
        let snap = Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            at: timestamp(SystemTime::now()),
            started_at: self.started_at.clone(),
            ready,
            config: ConfigStatus { path: self.config_path.clone(), last_reload: self.config_last_reload.clone() },
            haproxy: HaproxyStatus {
                config_file_path: self.haproxy_path.clone(),
                last_apply: self.last_apply.clone(),
                last_reload: self.last_reload.clone(),
                runtime_api: self.runtime_api.clone(),
            },
            file_output: self
                .file_output
                .as_ref()
                .map(|f| FileOutputStatus { directory: f.dir.display().to_string(), last_write: self.file_output_last.clone() }),
            services,
            announce_as: self.announce_as.clone(),
            announce: self.announce.clone(),
        };
        self.tx.send_replace(Arc::new(snap));
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_outcomes_have_the_metric_words() {
        let all = [HaOutcome::Installed, HaOutcome::Unchanged, HaOutcome::NotWritten, HaOutcome::Rejected("x".into()), HaOutcome::Failed("y".into())];
        let words: Vec<_> = all.iter().map(word).collect();
        assert_eq!(words, myelin_admin::APPLY_OUTCOMES);
        assert_eq!(error_of(&all[3]).as_deref(), Some("x"));
        assert_eq!(error_of(&all[0]), None);
    }
}
