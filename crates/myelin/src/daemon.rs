//! `myelin run`: one task owns the store. Watchers send events over a channel; the loop applies
//! them, and at most once per `restart_interval` renders, installs and reloads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use myelin_config::{Discovery, Loaded};
use myelin_core::{diff, DesiredState, ServiceName, Store};
use myelin_haproxy::{run_command, InstallOutcome, ReloadGate, Writer};
use myelin_watch::{Event, EventKind};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::commands;
use crate::observe::{ApplyOutcome, Observer};

/// How long the first apply waits for every source to sync before it goes ahead with what is known.
const STARTUP_SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest wait before an apply that failed is tried again.
const MIN_RETRY: Duration = Duration::from_secs(1);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

struct Watcher {
    discovery: Discovery,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Daemon {
    path: PathBuf,
    loaded: Loaded,
    store: Store,
    writer: Writer,
    gate: ReloadGate,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    watchers: BTreeMap<ServiceName, Watcher>,
    /// The store changed since the last apply.
    dirty: bool,
    /// haproxy.cfg changed on disk but HAProxy has not been reloaded onto it yet.
    reload_pending: bool,
    started: bool,
    start_deadline: Instant,
    retry_at: Option<Instant>,
    applied: DesiredState,
    rejected_total: u64,
    /// Status, metrics, systemd notifications and file_output.
    obs: Observer,
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
        watchers: BTreeMap::new(),
        dirty: true,
        reload_pending: false,
        started: false,
        start_deadline: Instant::now() + STARTUP_SYNC_TIMEOUT,
        retry_at: None,
        applied: DesiredState::default(),
        rejected_total: 0,
        obs,
    };
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
            _ = d.obs.tick() => {}
        }
    }
    d.obs.stopping();
    d.watchers.clear();
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

impl Daemon {
    fn start_watcher(&mut self, name: &ServiceName) {
        let Some(svc) = self.loaded.services.get(name) else { return };
        let mut tasks = Vec::new();
        // A method that is not supported yet has no watcher (`load` warned about it): the
        // service is written with its default_servers.
        if let Ok(sources) = myelin_watch::sources(&svc.discovery) {
            for (partition, open) in sources {
                let filters = svc.discovery.label_filters().to_vec();
                tasks.push(tokio::spawn(myelin_watch::supervise(name.clone(), partition, open, filters, self.tx.clone())));
            }
        }
        self.watchers.insert(name.clone(), Watcher { discovery: svc.discovery.clone(), tasks });
    }

    fn all_synced(&self) -> bool {
        self.watchers.iter().all(|(name, w)| w.tasks.is_empty() || self.store.is_synced(name))
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
        match ev.kind {
            EventKind::Update(update) => {
                let applied = self.store.apply(service, &ev.partition, update);
                self.obs.update(service, &applied);
                for r in &applied.rejected {
                    self.rejected_total += 1;
                    warn!(%service, server = %r.key, reason = %r.error, rejected_total = self.rejected_total, "Rejected a discovery record.");
                }
                if applied.kept_previous {
                    warn!(%service, "Discovery reports no backends; keeping the previous ones (use_previous_backends).");
                }
                self.dirty |= applied.changed;
            }
            EventKind::Problem(e @ myelin_watch::WatchError::Entry { .. }) => {
                self.obs.problem(service, &e);
                self.rejected_total += 1;
                warn!(%service, rejected_total = self.rejected_total, "{e}");
            }
            EventKind::Problem(e) => {
                self.obs.problem(service, &e);
                warn!(%service, "{e}; the service keeps its current backends.");
            }
            // The supervisor logs state changes itself.
            EventKind::Disconnected { .. } => self.obs.disconnected(service),
        }
    }

    async fn apply(&mut self) {
        let desired = DesiredState::build(&self.loaded.spec, &self.store);
        let plan = diff(&self.applied, &desired);
        let (added, removed, changed) = plan.server_counts();
        let text = myelin_haproxy::render(&desired);
        let first = !self.started;
        self.started = true;
        self.dirty = false;
        self.retry_at = None;
        let result = self.writer.install(&text).await;
        let outcome = match &result {
            Ok(InstallOutcome::Unchanged) => ApplyOutcome::Unchanged,
            Ok(InstallOutcome::NotWritten) => ApplyOutcome::NotWritten,
            Ok(InstallOutcome::Installed) => ApplyOutcome::Installed,
            Err(e @ myelin_haproxy::Error::Rejected { .. }) => ApplyOutcome::Rejected(e.to_string()),
            Err(e) => ApplyOutcome::Failed(e.to_string()),
        };
        self.obs.applied(&self.applied, &desired, &self.store, &outcome);
        match result {
            Ok(InstallOutcome::Unchanged) => {
                if first {
                    info!(servers = desired.server_count(), "haproxy.cfg is already up to date; no reload needed.");
                }
            }
            Ok(InstallOutcome::NotWritten) => {
                info!(added, removed, changed, "Changes computed; not written (do_writes is off).");
            }
            Ok(InstallOutcome::Installed) => {
                info!(added, removed, changed, structural = plan.reload_required(), servers = desired.server_count(), "Installed a new haproxy.cfg.");
                self.reload_pending = self.loaded.haproxy.do_reloads;
            }
            Err(e @ myelin_haproxy::Error::Rejected { .. }) => {
                error!("{e}. The config in force is unchanged.");
                // Nothing is retried until discovery or the configuration changes.
                self.applied = desired;
                return;
            }
            Err(e) => {
                error!("Writing haproxy.cfg failed: {e}. Retrying.");
                self.dirty = true;
                self.retry_at = Some(Instant::now() + MIN_RETRY.max(self.loaded.haproxy.restart_interval));
                return;
            }
        }
        self.applied = desired;
        if self.reload_pending {
            self.reload().await;
        }
    }

    async fn reload(&mut self) {
        let Some(cmd) = &self.loaded.haproxy.reload_command else {
            self.reload_pending = false;
            return;
        };
        let argv = cmd.argv();
        let now = Instant::now();
        self.gate.record(now);
        match run_command(&argv, &[], RELOAD_TIMEOUT).await {
            Ok(_) => {
                self.reload_pending = false;
                self.obs.reloaded(Ok(()));
                info!(took_ms = now.elapsed().as_millis() as u64, "Reloaded HAProxy.");
            }
            Err(e) => {
                self.obs.reloaded(Err(e.to_string()));
                error!("Reloading HAProxy failed: {e}. Retrying.");
                self.retry_at = Some(Instant::now() + MIN_RETRY.max(self.loaded.haproxy.restart_interval));
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
        let stale: Vec<ServiceName> = self
            .watchers
            .iter()
            .filter(|(name, w)| new.services.get(*name).map(|s| &s.discovery) != Some(&w.discovery))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &stale {
            self.watchers.remove(name);
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
        for name in restarted.iter().chain(&added) {
            self.start_watcher(name);
        }
        self.dirty = true;
        self.obs.configure(&self.loaded, &restarted);
        self.obs.config_reloaded(Ok(()));
        info!(added = added.len(), removed, restarted = restarted.len(), "Configuration reloaded.");
    }
}
