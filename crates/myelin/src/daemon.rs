//! `myelin run`: one task owns the store. Watchers send events over a channel; the loop applies
//! them, and at most once per `restart_interval` renders, installs and reloads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use myelin_config::Loaded;
use myelin_core::{diff, BackendName, DesiredState, ServerName, ServiceName, Store};
use myelin_haproxy::{run_command, runtime_ops, InstallOutcome, Master, Op, ReloadGate, Runtime, Writer};
use myelin_watch::{Event, EventKind};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::observe::{ApplyOutcome, Observer};
use crate::watchers::Watchers;
use crate::{commands, statefile};

/// How long the first apply waits for every source to sync before it goes ahead with what is known.
const STARTUP_SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest wait before an apply that failed is tried again.
const MIN_RETRY: Duration = Duration::from_secs(1);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How often servers being drained are checked for remaining sessions.
const DRAIN_TICK: Duration = Duration::from_millis(250);
/// How long after its drain timeout a server that cannot be deleted is given up on (it stays in
/// maintenance, taking no traffic, until the next reload drops it).
const DELETE_GRACE: Duration = Duration::from_secs(10);

struct Daemon {
    path: PathBuf,
    loaded: Loaded,
    store: Store,
    writer: Writer,
    gate: ReloadGate,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    watchers: Watchers,
    /// The store changed since the last apply.
    dirty: bool,
    /// haproxy.cfg changed on disk but HAProxy has not been reloaded onto it yet.
    reload_pending: bool,
    started: bool,
    start_deadline: Instant,
    retry_at: Option<Instant>,
    /// What HAProxy runs, as far as myelin knows; `None` until the first apply.
    applied: Option<DesiredState>,
    /// The last desired state HAProxy refused: not tried again until something changes.
    refused: Option<DesiredState>,
    runtime: Option<Runtime>,
    master: Option<Master>,
    /// Servers removed through the runtime API and draining, with their deadlines.
    draining: BTreeMap<(BackendName, ServerName), Instant>,
    drain_check_at: Option<Instant>,
    verify_at: Option<Instant>,
    /// The state file's last written text.
    state_written: Option<String>,
    counts: Counts,
    /// Status, metrics, systemd notifications and file_output.
    obs: Observer,
}

/// Running totals, logged with each apply.
#[derive(Debug, Default)]
struct Counts {
    rejected: u64,
    reloads: u64,
    runtime_commands: u64,
}

pub async fn run(path: &Path) -> anyhow::Result<()> {
    let loaded = commands::load(path)?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let (tx, rx) = mpsc::channel(1024);
    let obs = Observer::start(&loaded)?;
    let mut d = Daemon {
        path: path.to_path_buf(),
        store: Store::new(loaded.services.iter().map(|(n, s)| (n.clone(), s.store))),
        writer: commands::writer(&loaded),
        gate: ReloadGate::new(loaded.haproxy.restart_interval, loaded.haproxy.restart_jitter),
        loaded,
        tx,
        rx,
        watchers: Watchers::default(),
        dirty: true,
        reload_pending: false,
        started: false,
        start_deadline: Instant::now() + STARTUP_SYNC_TIMEOUT,
        retry_at: None,
        applied: None,
        refused: None,
        runtime: None,
        master: None,
        draining: BTreeMap::new(),
        drain_check_at: None,
        verify_at: None,
        state_written: None,
        counts: Counts::default(),
        obs,
    };
    d.set_haproxy_clients();
    d.seed_from_state_file();
    let services: Vec<_> = d.loaded.services.keys().cloned().collect();
    for name in services {
        d.start_watcher(&name);
    }
    info!(
        services = d.loaded.services.len(),
        config = %d.loaded.haproxy.config_file_path.display(),
        "myelin {} started.",
        env!("CARGO_PKG_VERSION")
    );

    loop {
        let wake = d.next_apply();
        let (drain_at, verify_at) = (d.drain_check_at, d.verify_at);
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping; HAProxy keeps running with the last installed config."); break }
            _ = int.recv() => { info!("SIGINT: stopping; HAProxy keeps running with the last installed config."); break }
            _ = hup.recv() => d.reload_config(),
            Some(ev) = d.rx.recv() => {
                d.handle(ev);
                while let Ok(ev) = d.rx.try_recv() {
                    d.handle(ev);
                }
            }
            _ = sleep_until(wake), if wake.is_some() => d.apply().await,
            _ = sleep_until(drain_at), if drain_at.is_some() => d.finish_drains().await,
            _ = sleep_until(verify_at), if verify_at.is_some() => d.verify().await,
            _ = d.obs.tick() => {}
        }
    }
    d.obs.stopping();
    d.watchers.stop_all();
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

impl Daemon {
    fn start_watcher(&mut self, name: &ServiceName) {
        self.watchers.start(&self.loaded, name, &self.tx);
    }

    fn all_synced(&self) -> bool {
        self.watchers.with_sources().all(|name| self.store.is_synced(name))
    }

    fn next_apply(&self) -> Option<Instant> {
        let now = Instant::now();
        let at = if !self.started {
            if self.all_synced() {
                now
            } else {
                self.start_deadline
            }
        } else if self.dirty || self.reload_pending {
            self.gate.next_allowed(now)
        } else {
            return None;
        };
        Some(self.retry_at.map_or(at, |r| r.max(at)))
    }

    fn handle(&mut self, ev: Event) {
        let service = &ev.service;
        if !self.watchers.accepts(&ev) {
            debug!(%service, generation = ev.generation, "Dropping an event from a replaced watcher.");
            return;
        }
        match ev.kind {
            EventKind::Update(update) => {
                let applied = self.store.apply(service, &ev.partition, update);
                self.obs.update(service, &applied);
                for r in &applied.rejected {
                    self.counts.rejected += 1;
                    warn!(%service, server = %r.key, reason = %r.error, rejected_total = self.counts.rejected, "Rejected a discovery record.");
                }
                if applied.kept_previous {
                    warn!(%service, "Discovery reports no backends; keeping the previous ones (use_previous_backends).");
                }
                self.dirty |= applied.changed;
            }
            EventKind::Problem(e) if e.is_entry() => {
                self.obs.problem(service, &e);
                self.counts.rejected += 1;
                warn!(%service, rejected_total = self.counts.rejected, "{}", e.report());
            }
            EventKind::Problem(e) => {
                self.obs.problem(service, &e);
                warn!(%service, "{}; the service keeps its current backends.", e.report());
            }
            // The supervisor logs state changes itself.
            EventKind::Disconnected { .. } => self.obs.disconnected(service),
        }
    }

    fn set_haproxy_clients(&mut self) {
        let h = &self.loaded.haproxy;
        self.runtime = h.socket_file_path.clone().filter(|_| h.do_socket).map(Runtime::new);
        self.master = h.master_socket_path.clone().map(Master::new);
    }

    fn seed_from_state_file(&mut self) {
        let Some(path) = self.loaded.haproxy.state_file_path.clone() else { return };
        match statefile::read(&path, self.loaded.haproxy.state_file_ttl) {
            Ok(services) => {
                for (name, backends) in services {
                    info!(service = %name, backends = backends.len(), "Using the backends from the state file until the source syncs.");
                    self.store.seed(&name, backends);
                }
            }
            Err(e) if path.exists() => warn!("Not using the state file: {e:#}"),
            Err(_) => {}
        }
    }

    fn write_state_file(&mut self) {
        let Some(path) = self.loaded.haproxy.state_file_path.clone() else { return };
        let text = statefile::snapshot(&self.store);
        if self.state_written.as_ref() == Some(&text) {
            return;
        }
        match statefile::write(&path, &text) {
            Ok(()) => self.state_written = Some(text),
            Err(e) => warn!("Writing the state file failed: {e:#}"),
        }
    }

    /// Schedule the next check of draining servers, while there are any.
    fn schedule_drain_check(&mut self) {
        self.drain_check_at = (!self.draining.is_empty()).then(|| Instant::now() + DRAIN_TICK);
    }

    fn retry_later(&mut self) {
        self.retry_at = Some(Instant::now() + MIN_RETRY.max(self.loaded.haproxy.restart_interval));
    }

    /// What HAProxy runs now: known from the last apply, or at start-up read back from the
    /// haproxy.cfg on disk when only its servers differ from `desired`.
    fn current(&self, desired: &DesiredState) -> Option<DesiredState> {
        if let Some(a) = &self.applied {
            return Some(a.clone());
        }
        let disk = std::fs::read_to_string(&self.loaded.haproxy.config_file_path).ok()?;
        myelin_haproxy::servers_on_disk(&disk, desired)
    }

    async fn apply(&mut self) {
        let desired = DesiredState::build(&self.loaded.spec, &self.store);
        let first = !self.started;
        self.started = true;
        self.dirty = false;
        self.retry_at = None;
        if self.refused.as_ref() == Some(&desired) {
            return;
        }
        let current = self.current(&desired);
        let plan = current.as_ref().map(|c| diff(c, &desired));
        let (added, removed, changed) = plan.as_ref().map_or((0, 0, 0), |p| p.server_counts());
        let ops = match (&self.runtime, &plan) {
            (Some(_), Some(p)) if !self.reload_pending => runtime_ops(p, &desired),
            _ => None,
        };
        let text = myelin_haproxy::render(&desired);
        // Membership changes go to HAProxy first (milliseconds), the file right after: its
        // structure was validated before, and HAProxy itself accepted the servers.
        let mut fell_back = false;
        if let Some(ops) = ops.filter(|o| !o.is_empty()) {
            match self.run_ops(&ops).await {
                Ok(commands) => {
                    // HAProxy has just accepted these servers: the file needs no `haproxy -c`.
                    let outcome = match self.writer.install_accepted(&text).await {
                        Ok(_) => ApplyOutcome::Installed,
                        Err(e) => {
                            error!("HAProxy runs the change, but writing haproxy.cfg failed: {e}. Retrying.");
                            self.dirty = true;
                            self.retry_later();
                            ApplyOutcome::Failed(e.to_string())
                        }
                    };
                    self.observe_apply(&desired, &outcome);
                    info!(added, removed, changed, commands, reloads_total = self.counts.reloads, runtime_commands_total = self.counts.runtime_commands, "Applied through the runtime API; no reload.");
                    self.applied = Some(desired);
                    self.write_state_file();
                    return;
                }
                Err(e) => {
                    warn!("The runtime API failed ({e}); falling back to a reload.");
                    fell_back = true;
                }
            }
        }
        let outcome = match self.writer.install(&text).await {
            Ok(o) => o,
            Err(e @ myelin_haproxy::Error::Rejected { .. }) => {
                error!("{e}. The config in force is unchanged.");
                self.observe_apply(&desired, &ApplyOutcome::Rejected(e.to_string()));
                self.refused = Some(desired);
                return;
            }
            Err(e) => {
                error!("Writing haproxy.cfg failed: {e}. Retrying.");
                self.observe_apply(&desired, &ApplyOutcome::Failed(e.to_string()));
                self.dirty = true;
                self.retry_later();
                return;
            }
        };
        self.observe_apply(
            &desired,
            &match outcome {
                InstallOutcome::Installed => ApplyOutcome::Installed,
                InstallOutcome::Unchanged => ApplyOutcome::Unchanged,
                InstallOutcome::NotWritten => ApplyOutcome::NotWritten,
            },
        );
        self.refused = None;
        if outcome == InstallOutcome::Unchanged && first {
            info!(servers = desired.server_count(), "haproxy.cfg is already up to date; no reload needed.");
        }
        let unknown = current.is_none() || plan.as_ref().is_some_and(|p| p.reload_required());
        if fell_back || (outcome == InstallOutcome::Installed && unknown) || (outcome == InstallOutcome::Installed && self.runtime.is_none()) {
            self.reload_pending = self.loaded.haproxy.do_reloads;
        } else if outcome == InstallOutcome::NotWritten {
            info!(added, removed, changed, "Changes computed; not written (do_writes is off).");
        }
        if outcome == InstallOutcome::Installed {
            info!(added, removed, changed, structural = plan.as_ref().is_none_or(|p| p.reload_required()), servers = desired.server_count(), "Installed a new haproxy.cfg.");
        }
        if self.reload_pending {
            if !self.reload(&desired).await {
                return;
            }
        }
        self.applied = Some(desired);
        self.write_state_file();
        if self.runtime.is_some() && self.verify_at.is_none() {
            self.verify_at = Some(Instant::now() + Duration::from_secs(1));
        }
    }

    fn observe_apply(&mut self, desired: &DesiredState, outcome: &ApplyOutcome) {
        let before = self.applied.clone().unwrap_or_default();
        self.obs.applied(&before, desired, &self.store, outcome);
    }

    /// Carry out runtime operations; the number of commands sent.
    async fn run_ops(&mut self, ops: &[Op]) -> Result<u64, myelin_haproxy::Error> {
        let Some(rt) = self.runtime.clone() else { return Ok(0) };
        let mut sent = 0u64;
        let result = async {
            for op in ops {
                match op {
                    // Back before its drain finished: the server is still there.
                    Op::Add { backend, server } if self.draining.contains_key(&(backend.clone(), server.name.clone())) => {
                        rt.update(backend, server).await?;
                        rt.set_state(backend, &server.name, "ready").await?;
                        self.draining.remove(&(backend.clone(), server.name.clone()));
                        sent += 3;
                    }
                    Op::Drain { backend, name } => {
                        sent += rt.apply(op).await? as u64;
                        self.draining.insert((backend.clone(), name.clone()), Instant::now() + self.loaded.haproxy.drain_timeout);
                    }
                    op => sent += rt.apply(op).await? as u64,
                }
            }
            Ok(())
        }
        .await;
        self.counts.runtime_commands += sent;
        self.obs.runtime_commands(sent, result.is_err());
        if self.drain_check_at.is_none() {
            self.schedule_drain_check();
        }
        result.map(|()| sent)
    }

    /// Delete drained servers whose sessions reached zero or whose drain timeout passed.
    async fn finish_drains(&mut self) {
        let Some(rt) = self.runtime.clone() else {
            self.draining.clear();
            self.schedule_drain_check();
            return;
        };
        let sessions = match rt.sessions().await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("Cannot read sessions of draining servers: {e}");
                None
            }
        };
        let now = Instant::now();
        let due: Vec<_> = self
            .draining
            .iter()
            .filter(|((b, n), deadline)| {
                now >= **deadline || sessions.as_ref().is_some_and(|s| s.get(&(b.to_string(), n.to_string())).copied().unwrap_or(0) == 0)
            })
            .map(|(k, d)| (k.clone(), *d))
            .collect();
        for ((backend, name), deadline) in due {
            match rt.remove(&backend, &name).await {
                Ok(n) => {
                    self.counts.runtime_commands += n as u64;
                    self.obs.runtime_commands(n as u64, false);
                    self.draining.remove(&(backend.clone(), name.clone()));
                    info!(backend = %backend, server = %name, timed_out = now >= deadline, "Drained and deleted a server.");
                }
                Err(e) if now >= deadline + DELETE_GRACE => {
                    self.draining.remove(&(backend.clone(), name.clone()));
                    warn!(backend = %backend, server = %name, "Cannot delete a drained server ({e}); it stays in maintenance until the next reload.");
                }
                Err(_) => {}
            }
        }
        self.schedule_drain_check();
    }

    /// Compare what HAProxy runs with what it should run; repair a difference with a reload.
    async fn verify(&mut self) {
        self.verify_at = Some(Instant::now() + self.loaded.haproxy.verify_interval);
        let (Some(rt), Some(applied)) = (&self.runtime, &self.applied) else { return };
        if self.reload_pending {
            return;
        }
        match rt.servers_state().await {
            Ok(observed) => {
                let draining: Vec<_> = self.draining.keys().cloned().collect();
                let drift = myelin_haproxy::drift(applied, &observed, &draining);
                if !drift.is_empty() {
                    warn!(drift = ?drift, "HAProxy's servers differ from the desired state; repairing with a reload.");
                    self.reload_pending = self.loaded.haproxy.do_reloads;
                    self.dirty = true;
                }
            }
            Err(e) => warn!("Cannot check HAProxy's servers: {e}"),
        }
    }

    /// Save the server state, then reload (master CLI, verified; or `reload_command`). Whether
    /// it succeeded.
    async fn reload(&mut self, desired: &DesiredState) -> bool {
        let now = Instant::now();
        self.gate.record(now);
        if let (Some(rt), Some(path)) = (&self.runtime, &self.loaded.haproxy.server_state_file) {
            match rt.servers_state_text().await {
                Ok(text) => {
                    if let Err(e) = statefile::write(path, &myelin_haproxy::filter_state_file(&text, desired)) {
                        warn!("Cannot save the server state before the reload: {e:#}");
                    }
                }
                Err(e) => {
                    warn!("Cannot save the server state before the reload: {e}");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let result = match (&self.master, &self.loaded.haproxy.reload_command) {
            (Some(m), _) => m.reload().await,
            (None, Some(cmd)) => run_command(&cmd.argv(), &[], RELOAD_TIMEOUT).await.map(|_| ()),
            (None, None) => {
                self.reload_pending = false;
                return true;
            }
        };
        match result {
            Ok(()) => {
                self.reload_pending = false;
                self.counts.reloads += 1;
                // Servers that were draining are gone from the new workers.
                self.draining.clear();
                self.schedule_drain_check();
                info!(took_ms = now.elapsed().as_millis() as u64, reloads_total = self.counts.reloads, "Reloaded HAProxy.");
                self.obs.reloaded(Ok(()));
                true
            }
            Err(e) => {
                error!("Reloading HAProxy failed: {e}. Retrying.");
                self.obs.reloaded(Err(e.to_string()));
                self.retry_later();
                false
            }
        }
    }

    /// SIGHUP: load the configuration again; only a valid one replaces the running one.
    fn reload_config(&mut self) {
        info!(config = %self.path.display(), "SIGHUP: reloading the configuration.");
        self.obs.config_reloading();
        let new = match commands::load(&self.path) {
            Ok(n) => n,
            Err(e) => {
                error!("The new configuration is invalid; keeping the running one:\n{e:#}");
                self.obs.config_reloaded(Err(format!("{e:#}")));
                return;
            }
        };
        let old_services: BTreeSet<_> = self.loaded.services.keys().cloned().collect();
        let mut restarted = Vec::new();
        let stale = self.watchers.changed_in(&new);
        for name in &stale {
            self.watchers.stop(name);
        }
        // Events the stopped watchers sent before they stopped.
        while let Ok(ev) = self.rx.try_recv() {
            self.handle(ev);
        }
        self.store.retain_services(new.services.iter().map(|(n, s)| (n.clone(), s.store)));
        for name in &stale {
            if new.services.contains_key(name) {
                self.store.restart_service(name);
                restarted.push(name.clone());
            }
        }
        let added: Vec<_> = new.services.keys().filter(|n| !old_services.contains(*n)).cloned().collect();
        let removed = old_services.iter().filter(|n| !new.services.contains_key(*n)).count();
        if new.haproxy.restart_interval != self.loaded.haproxy.restart_interval || new.haproxy.restart_jitter != self.loaded.haproxy.restart_jitter {
            self.gate = ReloadGate::new(new.haproxy.restart_interval, new.haproxy.restart_jitter);
        }
        self.writer = commands::writer(&new);
        self.loaded = new;
        self.set_haproxy_clients();
        for name in restarted.iter().chain(&added) {
            self.start_watcher(name);
        }
        self.dirty = true;
        self.obs.configure(&self.loaded, &restarted);
        self.obs.config_reloaded(Ok(()));
        info!(added = added.len(), removed, restarted = restarted.len(), "Configuration reloaded.");
    }
}
