//! `myelin run`: one task owns the store. Watchers send events over a channel; the loop applies
//! them to the store and hands each new desired state to the HAProxy driver, which decides how
//! it reaches HAProxy (runtime API or a validated reload) and when.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use myelin_config::Loaded;
use myelin_core::{Backend, DesiredState, Scope, ServiceName, Store};
use myelin_haproxy::Driver;
use myelin_watch::{Event, EventKind};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use myelin_watch_consul::catalog::Catalog;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::announcers::Announcers;
use crate::observe::Observer;
use crate::watchers::Watchers;
use crate::{commands, statefile};

/// How long the first apply waits for every source to sync before it goes ahead with what is known.
const STARTUP_SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// myelin's state file (a cache for restarts) is written at most this often.
const STATE_FILE_EVERY: Duration = Duration::from_secs(1);
/// At SIGTERM/SIGINT, withdrawing what this host announces may take this long at the most; the
/// registries expire whatever is left (lease, TTL, session).
const WITHDRAW_BOUND: Duration = Duration::from_secs(5);
/// A change that comes this soon after the last apply ended waits for the timer (up to a
/// millisecond), so that a burst of changes shares applies; one on its own is applied at once.
const BURST_GAP: Duration = Duration::from_millis(2);

struct Daemon {
    path: PathBuf,
    loaded: Loaded,
    store: Store,
    driver: Driver,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    watchers: Watchers,
    /// What this host announces (services with `announce`).
    announcers: Announcers,
    /// The desired state, kept up to date service by service.
    desired: DesiredState,
    /// What changed in the store since the last apply.
    changed: Scope,
    started: bool,
    /// When the last apply ended.
    applied_at: Option<Instant>,
    start_deadline: Instant,
    /// The state file's last written text.
    state_written: Option<String>,
    /// The state file is behind the store and is written then.
    state_due: Option<Instant>,
    /// Status, metrics, systemd notifications and file_output.
    obs: Observer,
    /// A configuration load running on the blocking pool (SIGHUP, or the tagged Consul services
    /// changed), and one more asked for meanwhile: it runs once this one is done, so that it
    /// reads what asked for it.
    loading: Option<Loading>,
    load_again: Option<Why>,
    /// `consul_services`: the last set of tagged Consul services, and the task following them.
    catalog: Option<Catalog>,
    catalog_task: Option<JoinHandle<()>>,
    catalog_tx: mpsc::Sender<Catalog>,
}

/// Why the configuration is loaded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Sighup,
    /// The tagged Consul services changed (`consul_services`).
    Catalog,
}

struct Loading {
    why: Why,
    task: JoinHandle<anyhow::Result<Loaded>>,
}

/// Load the configuration on the blocking pool: it reads and parses every file of
/// `service_conf_dir` (one per service: at 10,000 services about a second), so the loop goes on
/// meanwhile.
fn spawn_load(path: &Path, catalog: Option<Catalog>) -> JoinHandle<anyhow::Result<Loaded>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || commands::load_with(&path, catalog.as_ref()))
}

pub async fn run(path: &Path) -> anyhow::Result<()> {
    let loaded = spawn_load(path, None).await.context("loading the configuration")??;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let (tx, rx) = mpsc::channel(1024);
    let (catalog_tx, mut catalog_rx) = mpsc::channel(16);
    let obs = Observer::start(&loaded)?;
    let mut d = Daemon {
        path: path.to_path_buf(),
        store: Store::new(loaded.services.iter().map(|(n, s)| (n.clone(), s.store))),
        driver: Driver::new(commands::driver_settings(&loaded)),
        loaded,
        tx,
        rx,
        watchers: Watchers::default(),
        announcers: Announcers::default(),
        desired: DesiredState::default(),
        changed: Scope::All,
        started: false,
        applied_at: None,
        start_deadline: Instant::now() + STARTUP_SYNC_TIMEOUT,
        state_written: None,
        state_due: None,
        obs,
        loading: None,
        load_again: None,
        catalog: None,
        catalog_task: None,
        catalog_tx,
    };
    d.follow_catalog();
    d.seed_from_haproxy_cfg();
    d.seed_from_state_file();
    let services: Vec<_> = d.loaded.services.keys().cloned().collect();
    for name in services {
        for ev in d.watchers.start(&d.loaded, &name, &d.tx) {
            d.handle(ev);
        }
    }
    d.announcers.start_all(&d.loaded);
    d.obs.announcing(d.announcers.statuses());
    info!(
        services = d.loaded.services.len(),
        config = %d.loaded.haproxy.config_file_path.display(),
        "myelin {} started.",
        env!("CARGO_PKG_VERSION")
    );

    loop {
        d.obs.flush();
        let wake = d.next_apply();
        // A change due now, not in a burst, is applied on this turn. A timer set for now would
        // first wait for the timer's next millisecond: up to 1 ms more per change, and a
        // wake-up of the thread. (Only for changes: an apply the driver owes keeps the timer,
        // so none can spin.)
        let now = Instant::now();
        let now_due = !d.changed.is_empty() && wake.is_some_and(|at| at <= now) && d.applied_at.is_none_or(|t| now >= t + BURST_GAP);
        let tick = d.driver.next_wake();
        let state_due = d.state_due;
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping; HAProxy keeps running with the last installed config."); break }
            _ = int.recv() => { info!("SIGINT: stopping; HAProxy keeps running with the last installed config."); break }
            _ = hup.recv() => {
                info!(config = %d.path.display(), "SIGHUP: reloading the configuration.");
                d.obs.config_reloading();
                d.load(Why::Sighup);
            }
            Some(done) = async { match d.loading.as_mut() { Some(l) => Some((&mut l.task).await), None => None } } => d.load_done(done),
            Some(ev) = d.rx.recv() => {
                d.handle(ev);
                while let Ok(ev) = d.rx.try_recv() {
                    d.handle(ev);
                }
            }
            Some(catalog) = catalog_rx.recv() => d.catalog_changed(catalog),
            _ = sleep_until(wake.filter(|_| !now_due)), if wake.is_some() => d.apply().await,
            _ = sleep_until(tick), if tick.is_some() => {
                let report = d.driver.tick().await;
                d.obs.runtime_commands(report.runtime_commands, false);
                d.obs.runtime_api(&report);
                if let Some(outcome) = &report.outcome {
                    d.obs.file_written(outcome);
                }
            }
            Some(result) = async { match d.driver.verifying() { Some(h) => Some(h.await), None => None } } => {
                let report = d.driver.verified(result).await;
                d.obs.runtime_commands(report.runtime_commands, false);
                d.obs.runtime_api(&report);
            }
            _ = sleep_until(state_due), if state_due.is_some() => d.write_state_file(),
            _ = d.obs.tick() => {}
            () = d.announcers.changed() => d.obs.announcing(d.announcers.statuses()),
        }
    }
    d.obs.stopping();
    // Other hosts drain this host's instances while they still serve.
    d.announcers.stop_all(WITHDRAW_BOUND).await;
    d.watchers.stop_all();
    if let Some(t) = d.catalog_task.take() {
        t.abort();
    }
    d.driver.flush().await;
    if d.state_due.is_some() {
        d.write_state_file();
    }
    Ok(())
}

/// Until `at`; at once for `None`.
async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

impl Daemon {
    /// Every source synced, no configuration load in flight (its result decides what the first
    /// apply installs), and with `consul_services` the tagged services are known (so a restart
    /// does not drop their frontends for a moment).
    fn all_synced(&self) -> bool {
        self.loading.is_none()
            && self.watchers.with_sources().all(|name| self.store.is_synced(name))
            && (self.loaded.consul_services.is_none() || self.catalog.is_some())
    }

    /// When to apply next: at start-up once every source synced (or the start-up timeout
    /// passed), then whenever the store changed or the driver needs it, as soon as the driver
    /// allows.
    fn next_apply(&self) -> Option<Instant> {
        let now = Instant::now();
        let at = if !self.started {
            if self.all_synced() {
                now
            } else {
                self.start_deadline
            }
        } else if !self.changed.is_empty() || self.driver.wants_apply() {
            now
        } else {
            return None;
        };
        Some(self.driver.earliest_apply(at))
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
                    warn!(%service, server = %r.key, reason = %r.error, "Rejected a discovery record.");
                }
                if applied.kept_previous {
                    warn!(%service, "Discovery reports no backends; keeping the previous ones (use_previous_backends).");
                }
                if applied.changed {
                    self.changed.add(service);
                }
            }
            EventKind::Problem(e) if e.is_entry() => {
                self.obs.problem(service, &e);
                warn!(%service, "{}", e.report());
            }
            EventKind::Problem(e) => {
                self.obs.problem(service, &e);
                warn!(%service, "{}; the service keeps its current backends.", e.report());
            }
            // The supervisor logs state changes itself.
            EventKind::Disconnected { .. } => self.obs.disconnected(service),
        }
    }

    /// Until its source syncs, a service keeps the servers the haproxy.cfg on disk gives it
    /// (what HAProxy runs): a source that cannot sync (a registry down, a directory that cannot
    /// be watched) never empties a backend, even after the start-up timeout.
    fn seed_from_haproxy_cfg(&mut self) {
        let Ok(disk) = std::fs::read_to_string(&self.loaded.haproxy.config_file_path) else { return };
        let by_backend = myelin_haproxy::servers_by_backend(&disk);
        for (name, spec) in &self.loaded.spec.services {
            let Some(servers) = by_backend.get(spec.backend_name.as_str()) else { continue };
            let backends = servers
                .iter()
                .map(|s| Backend { name: s.name.clone(), host: s.host.clone(), port: s.port, weight: s.weight, labels: Default::default() })
                .collect();
            self.store.seed(name, backends);
        }
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
        self.state_due = None;
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

    async fn apply(&mut self) {
        let scope = std::mem::replace(&mut self.changed, Scope::none());
        self.desired.update(&self.loaded.spec, &self.store, &scope);
        self.started = true;
        let report = self.driver.apply(&self.desired, &scope).await;
        self.obs.applied(&self.desired, &self.store, &scope, &report);
        if report.in_force() && self.loaded.haproxy.state_file_path.is_some() {
            self.state_due.get_or_insert(Instant::now() + STATE_FILE_EVERY);
        }
        self.applied_at = Some(Instant::now());
    }

    /// Load the configuration again (off the loop, see [`spawn_load`]), or once more after the
    /// load running now.
    fn load(&mut self, why: Why) {
        if self.loading.is_some() {
            // A SIGHUP waiting is reported as one; its load reads the catalog too.
            self.load_again = Some(if why == Why::Sighup || self.load_again == Some(Why::Sighup) { Why::Sighup } else { Why::Catalog });
            return;
        }
        self.loading = Some(Loading { why, task: spawn_load(&self.path, self.catalog.clone()) });
    }

    /// A load finished: only a valid configuration replaces the running one.
    fn load_done(&mut self, done: Result<anyhow::Result<Loaded>, tokio::task::JoinError>) {
        let Some(Loading { why, .. }) = self.loading.take() else { return };
        let result = done.unwrap_or_else(|e| Err(anyhow::anyhow!("loading the configuration stopped: {e}")));
        match (why, result) {
            (Why::Sighup, Ok(new)) => {
                let (added, removed, restarted) = self.swap(new);
                self.obs.config_reloaded(Ok(()));
                info!(added, removed, restarted, "Configuration reloaded.");
            }
            (Why::Sighup, Err(e)) => {
                error!("The new configuration is invalid; keeping the running one:\n{e:#}");
                self.obs.config_reloaded(Err(format!("{e:#}")));
            }
            (Why::Catalog, Ok(new)) => {
                let (added, removed, restarted) = self.swap(new);
                info!(added, removed, restarted, "Services follow the tagged Consul services.");
            }
            (Why::Catalog, Err(e)) => error!("The configuration is invalid; keeping the running one:\n{e:#}"),
        }
        if let Some(why) = self.load_again.take() {
            self.load(why);
        }
    }

    /// `consul_services`: start, restart or stop the task following the tagged services as
    /// the configuration says.
    fn follow_catalog(&mut self) {
        if let Some(t) = self.catalog_task.take() {
            t.abort();
        }
        match &self.loaded.consul_services {
            Some(t) => self.catalog_task = Some(crate::watchers::watch_catalog(t, self.catalog_tx.clone())),
            None => self.catalog = None,
        }
    }

    /// The tagged Consul services changed: the configuration is loaded again with them (a
    /// configuration file that is now invalid keeps the running one).
    fn catalog_changed(&mut self, catalog: Catalog) {
        if self.catalog.as_ref() == Some(&catalog) {
            return;
        }
        info!(tagged = catalog.len(), "The tagged Consul services changed.");
        self.catalog = Some(catalog);
        self.load(Why::Catalog);
    }

    /// Replace the running configuration with `new` (valid): watchers whose discovery did not
    /// change keep running. (added, removed, restarted) services.
    fn swap(&mut self, new: Loaded) -> (usize, usize, usize) {
        let follow = new.consul_services != self.loaded.consul_services;
        let old_services: BTreeSet<_> = self.loaded.services.keys().cloned().collect();
        let stale = self.watchers.changed_in(&new);
        for name in &stale {
            self.watchers.stop(name);
        }
        // Events sent before the SIGHUP by watchers that keep running.
        while let Ok(ev) = self.rx.try_recv() {
            self.handle(ev);
        }
        self.store.retain_services(new.services.iter().map(|(n, s)| (n.clone(), s.store)));
        let mut restarted: Vec<ServiceName> = Vec::new();
        for name in &stale {
            if new.services.contains_key(name) {
                self.store.restart_service(name);
                restarted.push(name.clone());
            }
        }
        let added: Vec<_> = new.services.keys().filter(|n| !old_services.contains(*n)).cloned().collect();
        let removed = old_services.iter().filter(|n| !new.services.contains_key(*n)).count();
        self.driver.reconfigure(commands::driver_settings(&new));
        self.loaded = new;
        let mut fixed = Vec::new();
        for name in restarted.iter().chain(&added) {
            fixed.extend(self.watchers.start(&self.loaded, name, &self.tx));
        }
        self.changed = Scope::All;
        self.announcers.reconfigure(&self.loaded);
        self.obs.configure(&self.loaded, &restarted);
        // After the status knows the new services.
        for ev in fixed {
            self.handle(ev);
        }
        self.obs.announcing(self.announcers.statuses());
        if follow {
            self.follow_catalog();
        }
        (added.len(), removed, restarted.len())
    }
}
