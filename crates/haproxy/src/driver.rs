//! The driver: everything that brings HAProxy to a desired state and keeps it there. It owns
//! the writer, the reload gate, the runtime API and master CLI clients, what HAProxy runs, the
//! refused state, and the servers being drained with their deadlines. Its surface is small:
//! [`Driver::apply`] a desired state and get a [`Report`]; ask [`Driver::next_wake`] when it
//! has timed work (drains, drift checks) and call [`Driver::tick`] then; ask
//! [`Driver::wants_apply`] / [`Driver::earliest_apply`] whether and when it needs an apply.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use myelin_core::{diff, diff_scoped, BackendName, DesiredState, Scope, ServerName};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::route::{fallback, route, Reload, Route, Situation};
use crate::{check, commands_of, filter_state_file, remove_commands, run_command, servers_on_disk, state_command, update_commands, write_atomic, Error, InstallOutcome, Master, Op, ReloadGate, Rendered, Renderer, Runtime, Findings, Writer};

/// The shortest wait before an apply that failed is tried again.
const MIN_RETRY: Duration = Duration::from_secs(1);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How often servers being drained are checked for remaining sessions.
const DRAIN_TICK: Duration = Duration::from_millis(250);
/// How long after its drain timeout a server that cannot be deleted is given up on (it stays in
/// maintenance, taking no traffic, until the next reload drops it).
const DELETE_GRACE: Duration = Duration::from_secs(10);
/// The first drift check after an apply.
const FIRST_VERIFY: Duration = Duration::from_secs(1);
/// A refused candidate is checked again after this, then after twice as long each time it is
/// refused again, up to [`REFUSED_RETRY_MAX`]: what the check depends on (an `errorfile`, a
/// certificate, the operator's `check_command`) may be fixed without a SIGHUP.
const REFUSED_RETRY_FIRST: Duration = Duration::from_secs(2);
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(60);
/// After changes the runtime API carried, haproxy.cfg is brought in step once they have paused
/// for this long, and never later than [`file_lag_max`] after the first of them: 1 s for a file
/// up to 1 MiB (changes meanwhile share one write: at 100,000 servers the file is ~4 MB, and
/// writing it for every change would make each change cost the fleet). It is always written
/// before a reload and at exit; after a crash, the next start repairs the lag (see
/// docs/architecture.md).
const FILE_COALESCE: Duration = Duration::from_secs(1);
/// The bytes of haproxy.cfg per second of lag allowed under steady changes.
const FILE_PACE: usize = 1 << 20;
const FILE_LAG_MAX: Duration = Duration::from_secs(5);

/// How long haproxy.cfg may lag the first change not in it when it is `len` bytes long and
/// changes keep coming: a second per [`FILE_PACE`] bytes, at least [`FILE_COALESCE`] and at most
/// [`FILE_LAG_MAX`]. Steady changes then write it at most about [`FILE_PACE`] bytes a second
/// (4 MB a second at 100,000 servers otherwise: a quarter to a third of myelin's CPU under a
/// change every 60 ms, and wear on the disk).
fn file_lag_max(len: usize) -> Duration {
    Duration::from_secs_f64(len as f64 / FILE_PACE as f64).clamp(FILE_COALESCE, FILE_LAG_MAX)
}

/// When haproxy.cfg, `len` bytes long, is written after runtime changes: [`FILE_COALESCE`] after
/// the last (`now`), and no later than [`file_lag_max`] after the first not in it (`since`).
fn file_due(since: Instant, now: Instant, len: usize) -> Instant {
    (now + FILE_COALESCE).min(since + file_lag_max(len))
}

/// What changed in HAProxy while a drift check read it.
#[derive(Debug)]
enum Overlap {
    /// These backends, through the runtime API.
    Backends(BTreeSet<BackendName>),
    /// Everything: HAProxy was reloaded.
    Reloaded,
}

impl Default for Overlap {
    fn default() -> Self {
        Self::Backends(BTreeSet::new())
    }
}

/// How the driver drives HAProxy (from the `haproxy` section of the configuration).
#[derive(Debug, Clone)]
pub struct DriverSettings {
    pub writer: Writer,
    pub do_reloads: bool,
    /// Run when there is no master CLI (argv).
    pub reload_command: Option<Vec<String>>,
    pub restart_interval: Duration,
    pub restart_jitter: f64,
    /// The stats socket, when the runtime API is on.
    pub socket: Option<PathBuf>,
    /// The master CLI: reloads go through it and are verified.
    pub master_socket: Option<PathBuf>,
    pub drain_timeout: Duration,
    /// HAProxy's `server-state-file`, saved before each reload (with the runtime API).
    pub server_state_file: Option<PathBuf>,
    pub verify_interval: Duration,
}

/// What became of a desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// haproxy.cfg was replaced (and HAProxy runs it: through the runtime API, or reloaded).
    Installed,
    /// haproxy.cfg already had these bytes.
    Unchanged,
    /// `do_writes` is off.
    NotWritten,
    /// The check refused the candidate; the config in force is unchanged.
    Rejected(String),
    /// Writing or reloading failed; it is tried again.
    Failed(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Installed | Self::Unchanged | Self::NotWritten)
    }
}

/// What a call to the driver did: for the status, the metrics and systemd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// What became of the desired state; `None` when nothing was attempted (the same state as
    /// the one refused last).
    pub outcome: Option<Outcome>,
    /// Runtime API commands that succeeded.
    pub runtime_commands: u64,
    /// The runtime API failed (a change then fell back to a reload; a drift check is tried
    /// again at the next interval).
    pub runtime_error: Option<String>,
    /// The runtime API answered (commands ran, or a drift check read the servers).
    pub runtime_ok: bool,
    /// A reload was attempted: `Ok` when HAProxy runs the new config (verified through the
    /// master CLI when there is one).
    pub reload: Option<Result<(), String>>,
    /// Servers added, removed and changed by the plan.
    pub servers: (usize, usize, usize),
}

impl Report {
    /// Whether HAProxy runs the desired state as far as myelin can tell: applied, and any
    /// reload it needed done.
    pub fn in_force(&self) -> bool {
        self.outcome.as_ref().is_some_and(Outcome::is_ok) && !matches!(self.reload, Some(Err(_)))
    }
}

pub struct Driver {
    s: DriverSettings,
    gate: ReloadGate,
    runtime: Option<Runtime>,
    master: Option<Master>,
    /// What HAProxy runs, as far as myelin knows; `None` until the first apply.
    applied: Option<DesiredState>,
    /// The last desired state HAProxy refused: checked again at `refused_retry` (with backoff),
    /// or at once when the desired state changes or the configuration is reloaded.
    refused: Option<DesiredState>,
    refused_retry: Option<Instant>,
    refused_backoff: Duration,
    /// The runtime API failed and has not answered since: changes go straight to a reload and
    /// the server state is not read before it (each command would wait for its timeout and
    /// hold the loop), until a drift check, which runs beside the loop, reads it again.
    runtime_failing: bool,
    /// The failures already logged, by kind: a retry failing the same way is logged at debug
    /// level only, and the recovery once.
    said: BTreeMap<&'static str, String>,
    /// haproxy.cfg changed (or HAProxy drifted) and a reload is owed.
    reload_pending: bool,
    /// An apply failed and is to be tried again, not before this.
    retry_at: Option<Instant>,
    /// Servers removed through the runtime API and draining, with their deadlines.
    draining: BTreeMap<(BackendName, ServerName), Instant>,
    drain_check_at: Option<Instant>,
    verify_at: Option<Instant>,
    /// A drift check (`show servers state` read and compared with `applied` as it was then),
    /// running beside the loop.
    verifying: Option<JoinHandle<Result<Findings, Error>>>,
    /// What HAProxy was changed in while the check read it: what it finds there is a mix of
    /// before and after, and is left out.
    overlap: Overlap,
    /// haproxy.cfg lags what HAProxy runs (runtime API changes) and is to be written by then.
    file_due: Option<Instant>,
    /// The first runtime change not in haproxy.cfg; `None` while the file is in step, or while a
    /// write that failed waits for its retry (`file_due`).
    file_since: Option<Instant>,
    /// The length of the last haproxy.cfg rendered, which sets how long the file may lag.
    file_len: usize,
    /// Services changed since `applied` was last brought up to date.
    unapplied: Scope,
    /// Services changed since the last render.
    unrendered: Scope,
    renderer: Renderer,
}

impl Driver {
    pub fn new(s: DriverSettings) -> Self {
        let gate = ReloadGate::new(s.restart_interval, s.restart_jitter);
        let mut d = Self {
            gate,
            runtime: None,
            master: None,
            applied: None,
            refused: None,
            refused_retry: None,
            refused_backoff: REFUSED_RETRY_FIRST,
            said: BTreeMap::new(),
            runtime_failing: false,
            reload_pending: false,
            retry_at: None,
            draining: BTreeMap::new(),
            drain_check_at: None,
            verify_at: None,
            verifying: None,
            overlap: Overlap::default(),
            file_due: None,
            file_since: None,
            file_len: 0,
            unapplied: Scope::All,
            unrendered: Scope::All,
            renderer: Renderer::default(),
            s,
        };
        d.set_clients();
        d
    }

    /// New settings (SIGHUP). What runs and what drains is kept; a refused state is tried again,
    /// since what the check depends on may have changed.
    pub fn reconfigure(&mut self, s: DriverSettings) {
        if s.restart_interval != self.s.restart_interval || s.restart_jitter != self.s.restart_jitter {
            self.gate = ReloadGate::new(s.restart_interval, s.restart_jitter);
        }
        self.s = s;
        self.refused = None;
        self.refused_retry = None;
        self.unapplied = Scope::All;
        self.unrendered = Scope::All;
        self.set_clients();
    }

    fn set_clients(&mut self) {
        self.runtime = self.s.socket.clone().map(Runtime::new);
        self.master = self.s.master_socket.clone().map(Master::new);
        if self.runtime.is_none() {
            self.draining.clear();
            self.drain_check_at = None;
            self.verify_at = None;
        }
    }

    /// Whether the driver needs an apply even if nothing changed (a reload is owed, an apply
    /// failed and is to be retried, or a refused candidate is to be checked again).
    pub fn wants_apply(&self) -> bool {
        self.reload_pending || self.retry_at.is_some() || self.refused_retry.is_some()
    }

    /// The earliest moment the next apply may run: reloads are spaced by `restart_interval`,
    /// a failed apply waits a little, a refused candidate waits for its backoff.
    pub fn earliest_apply(&self, now: Instant) -> Instant {
        let at = self.gate.next_allowed(now);
        [self.retry_at, self.refused_retry].into_iter().flatten().fold(at, Instant::max)
    }

    /// When [`Driver::tick`] has work: a drain check, a drift check, or haproxy.cfg to bring in
    /// step.
    pub fn next_wake(&self) -> Option<Instant> {
        [self.drain_check_at, if self.verifying.is_some() { None } else { self.verify_at }, self.file_due].into_iter().flatten().min()
    }

    /// The drift check's read, while one runs: select on it and hand the result to
    /// [`Driver::verified`].
    pub fn verifying(&mut self) -> Option<&mut JoinHandle<Result<Findings, Error>>> {
        self.verifying.as_mut()
    }

    /// Bring HAProxy to `desired`, of which only the services in `scope` changed since the
    /// last call (`Scope::All` when anything may have): through the runtime API when only
    /// servers changed, otherwise a validated haproxy.cfg and a reload (see [`route`]). The
    /// work follows the change, not the fleet.
    pub async fn apply(&mut self, desired: &DesiredState, scope: &Scope) -> Report {
        self.retry_at = None;
        self.unapplied.extend(scope.clone());
        self.unrendered.extend(scope.clone());
        let mut report = Report::default();
        let first = self.applied.is_none();
        let (plan, known) = match &self.applied {
            Some(a) => (Some(diff_scoped(a, desired, &self.unapplied)), true),
            None => match self.current_on_disk(desired) {
                Some(c) => {
                    let c = self.running_servers(c, desired).await;
                    (Some(diff(&c, desired)), false)
                }
                None => (None, false),
            },
        };
        let current_known = known || plan.is_some();
        report.servers = plan.as_ref().map_or((0, 0, 0), |p| p.server_counts());
        let (added, removed, changed) = report.servers;
        let situation = Situation {
            runtime: self.runtime.is_some() && !self.runtime_failing,
            reload_pending: self.reload_pending,
            refused: self.refused.as_ref() == Some(desired) && self.refused_retry.is_some_and(|at| Instant::now() < at),
            plan: plan.as_ref(),
            desired,
        };
        let mut how = route(situation);
        if how == Route::Skip {
            return report;
        }
        let gated = matches!(how, Route::Runtime(_)) && self.s.writer.check_command.is_some();
        let mut text = None;
        if gated {
            let t = self.text(desired);
            if let Err(e) = self.s.writer.gate(&t).await {
                return self.not_installed(desired, e, report);
            }
            text = Some(t);
        }
        if let Route::Runtime(ops) = &how {
            // Membership changes go to HAProxy first (milliseconds); the file follows
            // (file_due()): its structure was validated before, and HAProxy itself accepted
            // the servers.
            match self.run_ops(ops, &mut report).await {
                Ok(()) => {
                    report.runtime_ok = true;
                    self.recovered("runtime");
                    let outcome = match text {
                        Some(t) => self.write_accepted(t).await,
                        None => {
                            self.file_lags();
                            Outcome::Installed
                        }
                    };
                    info!(added, removed, changed, commands = report.runtime_commands, "Applied through the runtime API; no reload.");
                    report.outcome = Some(outcome);
                    self.set_applied(desired);
                    self.arm_verify();
                    return report;
                }
                Err(e) => {
                    self.runtime_failing |= unreachable(&e);
                    if self.first_time("runtime", &e.to_string()) {
                        warn!("The runtime API failed ({e}); falling back to a reload.");
                    } else {
                        debug!("The runtime API failed again ({e}); falling back to a reload.");
                    }
                    report.runtime_error = Some(e.to_string());
                    how = fallback();
                }
            }
        }
        let Route::File(reload) = how else { return report };
        let text = match text {
            Some(t) => t,
            None => self.text(desired),
        };
        let outcome = match self.s.writer.install(text).await {
            Ok(o) => o,
            Err(e) => return self.not_installed(desired, e, report),
        };
        self.refused = None;
        self.refused_retry = None;
        // Whatever lagged behind the runtime API is in this file.
        self.file_in_step();
        report.outcome = Some(match outcome {
            InstallOutcome::Installed => Outcome::Installed,
            InstallOutcome::Unchanged => Outcome::Unchanged,
            InstallOutcome::NotWritten => Outcome::NotWritten,
        });
        match outcome {
            InstallOutcome::Installed => {
                let structural = !current_known || plan.as_ref().is_none_or(|p| p.reload_required());
                info!(added, removed, changed, structural, servers = desired.server_count(), "Installed a new haproxy.cfg.");
            }
            InstallOutcome::Unchanged if first => {
                info!(servers = desired.server_count(), "haproxy.cfg is already up to date; no reload needed.");
            }
            InstallOutcome::NotWritten => info!(added, removed, changed, "Changes computed; not written (do_writes is off)."),
            InstallOutcome::Unchanged => {}
        }
        let owed = match reload {
            Reload::Always => true,
            Reload::IfWritten => outcome == InstallOutcome::Installed,
            Reload::Never => false,
        };
        if owed {
            self.reload_pending = self.s.do_reloads;
        }
        if self.reload_pending {
            let result = self.reload(desired).await;
            let ok = result.is_ok();
            report.reload = Some(result);
            if !ok {
                return report;
            }
        }
        self.set_applied(desired);
        self.arm_verify();
        report
    }

    /// Write haproxy.cfg now if it lags what HAProxy runs (at exit; a reload writes the whole
    /// file itself).
    pub async fn flush(&mut self) {
        if self.file_due.is_some() {
            self.write_lagging().await;
        }
    }

    /// A drift check finished: set ready what it found stuck in a drain; a difference owes a
    /// reload ([`Driver::wants_apply`]). What it found in a backend the runtime API changed
    /// while it read HAProxy is left out (the next check looks again); a reload meanwhile
    /// leaves all of it out, and the check runs again soon.
    pub async fn verified(&mut self, result: Result<Result<Findings, Error>, tokio::task::JoinError>) -> Report {
        self.verifying = None;
        let mut report = Report::default();
        let found = match result {
            Ok(Ok(found)) => {
                report.runtime_ok = true;
                self.runtime_failing = false;
                if self.recovered("verify") {
                    info!("HAProxy's runtime API answers again.");
                }
                found
            }
            Ok(Err(e)) => {
                self.runtime_failing |= unreachable(&e);
                if self.first_time("verify", &e.to_string()) {
                    warn!("Cannot check HAProxy's servers: {e}. Checked again every verify_interval; said once.");
                } else {
                    debug!("Still cannot check HAProxy's servers: {e}");
                }
                report.runtime_error = Some(e.to_string());
                return report;
            }
            Err(e) => {
                warn!("Cannot check HAProxy's servers: {e}");
                return report;
            }
        };
        let (Some(_), Some(rt)) = (&self.applied, self.runtime.clone()) else { return report };
        if self.reload_pending {
            return report;
        }
        let mut found = found;
        match std::mem::take(&mut self.overlap) {
            Overlap::Reloaded => {
                // HAProxy was reloaded while it was read: check again soon rather than act on
                // a mix.
                self.verify_at = Some(Instant::now() + FIRST_VERIFY);
                return report;
            }
            // Backends the runtime API changed meanwhile (each reply checked) are looked at
            // again by the next check; the others' findings stand. So a steady stream of
            // changes does not keep the check from concluding, nor repeat it every second.
            Overlap::Backends(changed) => {
                found.stuck.retain(|(b, _)| !changed.contains(b));
                found.drift.retain(|(b, _)| !changed.contains(b));
            }
        }
        // A server the data wants, held in a drain nobody is running (myelin killed while it
        // drained, or a drain by hand): back to ready through the runtime API (a reload would
        // restore the drain from the server-state file).
        for (backend, name) in found.stuck {
            match rt.set_state(&backend, &name, "ready").await {
                Ok(()) => {
                    report.runtime_commands += 1;
                    warn!(backend = %backend, server = %name, "A server myelin routes to was left draining; set ready again.");
                }
                Err(e) => warn!(backend = %backend, server = %name, "A server left draining could not be set ready: {e}"),
            }
        }
        if !found.drift.is_empty() {
            let shown: Vec<&String> = found.drift.iter().map(|(_, d)| d).take(10).collect();
            warn!(differences = found.drift.len(), first = ?shown, "HAProxy's servers differ from the desired state; repairing with a reload.");
            self.reload_pending = self.s.do_reloads;
        }
        report
    }

    /// `applied` follows `desired` for what changed since it was last brought up to date.
    fn set_applied(&mut self, desired: &DesiredState) {
        self.refused = None;
        self.refused_retry = None;
        if self.recovered("apply") {
            info!("Applying works again; the earlier failure is over.");
        }
        match (&mut self.applied, std::mem::replace(&mut self.unapplied, Scope::none())) {
            (Some(a), Scope::Services(names)) => {
                for name in names {
                    match desired.services.get(&name) {
                        Some(svc) => {
                            a.services.insert(name, svc.clone());
                        }
                        None => {
                            a.services.remove(&name);
                        }
                    }
                }
            }
            (applied, _) => *applied = Some(desired.clone()),
        }
    }

    /// haproxy.cfg for `desired`, re-rendering only what changed since the last time.
    fn text(&mut self, desired: &DesiredState) -> Rendered {
        let scope = std::mem::replace(&mut self.unrendered, Scope::none());
        let text = self.renderer.render(desired, &scope);
        self.file_len = text.len();
        text
    }

    async fn write_accepted(&mut self, text: Rendered) -> Outcome {
        match self.s.writer.install_accepted(text).await {
            Ok(_) => {
                self.file_in_step();
                if self.recovered("file") {
                    info!("haproxy.cfg is written again and matches what HAProxy runs.");
                }
                Outcome::Installed
            }
            Err(e) => {
                if self.first_time("file", &e.to_string()) {
                    error!("HAProxy runs the change, but writing haproxy.cfg failed: {e}. Retrying.");
                } else {
                    debug!("Writing haproxy.cfg still fails: {e}");
                }
                self.file_since = None;
                self.file_due = Some(self.after_retry_pause());
                Outcome::Failed(e.to_string())
            }
        }
    }

    /// The runtime API made HAProxy run what haproxy.cfg does not say yet: the file is to be
    /// written when changes pause, or when it has lagged long enough ([`file_due`]). A write
    /// that failed is retried when its pause is over, neither sooner nor later.
    fn file_lags(&mut self) {
        if self.file_due.is_some() && self.file_since.is_none() {
            return;
        }
        let now = Instant::now();
        let since = *self.file_since.get_or_insert(now);
        self.file_due = Some(file_due(since, now, self.file_len));
    }

    fn file_in_step(&mut self) {
        self.file_due = None;
        self.file_since = None;
    }

    /// Bring haproxy.cfg in step with what the runtime API made HAProxy run.
    async fn write_lagging(&mut self) -> Option<Outcome> {
        let Some(applied) = self.applied.take() else {
            self.file_in_step();
            return None;
        };
        // Where a later state was rendered but not applied (the check refused it, or writing it
        // failed), the renderer holds that state's text: `applied`'s is rendered there now, and
        // the later state's again next time.
        let stale = self.unapplied.clone();
        self.unrendered.extend(stale.clone());
        let text = self.text(&applied);
        self.unrendered.extend(stale);
        self.applied = Some(applied);
        Some(self.write_accepted(text).await)
    }

    /// The check refused `desired` (checked again after a backoff, or at once when it
    /// changes), or writing failed (tried again after a pause). A retry failing the same way is
    /// not logged again.
    fn not_installed(&mut self, desired: &DesiredState, e: Error, mut report: Report) -> Report {
        let text = e.to_string();
        if let Error::Rejected { .. } = e {
            self.refused_backoff =
                if self.refused.as_ref() == Some(desired) { (self.refused_backoff * 2).min(REFUSED_RETRY_MAX) } else { REFUSED_RETRY_FIRST };
            self.refused_retry = Some(Instant::now() + self.refused_backoff);
            let next_s = self.refused_backoff.as_secs();
            if self.first_time("apply", &text) {
                error!(next_s, "{e}. The config in force is unchanged; the candidate is checked again with backoff (up to {} s) and at every change.", REFUSED_RETRY_MAX.as_secs());
            } else {
                debug!(next_s, "The candidate is still refused.");
            }
            report.outcome = Some(Outcome::Rejected(text));
            self.refused = Some(desired.clone());
        } else {
            if self.first_time("apply", &text) {
                error!("Writing haproxy.cfg failed: {e}. Retrying.");
            } else {
                debug!("Writing haproxy.cfg still fails.");
            }
            report.outcome = Some(Outcome::Failed(text));
            self.retry_later();
        }
        report
    }

    /// Whether the failure `text` of kind `what` is new (to be logged): a retry failing the
    /// same way is not. Process ids in HAProxy's messages (`[ALERT] (1234)`) do not count.
    fn first_time(&mut self, what: &'static str, text: &str) -> bool {
        let shape = without_pids(text);
        if self.said.get(what) == Some(&shape) {
            return false;
        }
        self.said.insert(what, shape);
        true
    }

    /// The failure of kind `what` is over: whether one had been logged (then the recovery is).
    fn recovered(&mut self, what: &'static str) -> bool {
        self.said.remove(what).is_some()
    }

    /// Timed work: delete drained servers, check HAProxy for drift, bring haproxy.cfg in step
    /// (the report's outcome is that write's). A drift makes [`Driver::wants_apply`] true (it
    /// is repaired with a reload).
    pub async fn tick(&mut self) -> Report {
        let now = Instant::now();
        let mut report = Report::default();
        if self.drain_check_at.is_some_and(|at| at <= now) {
            self.finish_drains(&mut report).await;
        }
        if self.verify_at.is_some_and(|at| at <= now) && self.verifying.is_none() {
            self.verify();
        }
        if self.file_due.is_some_and(|at| at <= now) {
            report.outcome = self.write_lagging().await;
        }
        report
    }

    /// At start-up, what HAProxy runs: read back from the haproxy.cfg on disk when only its
    /// servers differ from `desired`.
    fn current_on_disk(&self, desired: &DesiredState) -> Option<DesiredState> {
        let disk = std::fs::read_to_string(&self.s.writer.path).ok()?;
        servers_on_disk(&disk, desired)
    }

    /// At start-up with the runtime API: the servers HAProxy runs rather than the file's,
    /// which lag them by up to file_lag_max() (a SIGKILL in that window left the file behind).
    /// When HAProxy cannot be read, the file's.
    async fn running_servers(&mut self, from_disk: DesiredState, desired: &DesiredState) -> DesiredState {
        let Some(rt) = self.runtime.clone() else { return from_disk };
        match rt.servers_state().await {
            Ok(observed) => crate::servers_running(from_disk, desired, &observed),
            Err(e) => {
                self.runtime_failing |= unreachable(&e);
                debug!("Cannot read HAProxy's servers at start-up ({e}); planning from haproxy.cfg.");
                from_disk
            }
        }
    }

    fn retry_later(&mut self) {
        self.retry_at = Some(self.after_retry_pause());
    }

    /// When something that failed (an apply, a write of the file) is tried again: after
    /// `restart_interval`, and at least [`MIN_RETRY`].
    fn after_retry_pause(&self) -> Instant {
        Instant::now() + MIN_RETRY.max(self.s.restart_interval)
    }

    /// Drift checks run every `verify_interval` after any successful apply, whichever path it
    /// took.
    fn arm_verify(&mut self) {
        if self.runtime.is_some() && self.verify_at.is_none() {
            self.verify_at = Some(Instant::now() + FIRST_VERIFY.min(self.s.verify_interval));
        }
    }

    /// The runtime API is changing `backends`: noted while a drift check reads HAProxy.
    fn changed<'a>(&mut self, backends: impl IntoIterator<Item = &'a BackendName>) {
        if let (Some(_), Overlap::Backends(changed)) = (&self.verifying, &mut self.overlap) {
            changed.extend(backends.into_iter().cloned());
        }
    }

    fn schedule_drain_check(&mut self) {
        self.drain_check_at = (!self.draining.is_empty()).then(|| Instant::now() + DRAIN_TICK);
    }

    /// Carry out runtime operations, counting the commands sent: all of them pipelined on one
    /// connection of the stats socket.
    async fn run_ops(&mut self, ops: &[Op], report: &mut Report) -> Result<(), Error> {
        let Some(rt) = self.runtime.clone() else { return Ok(()) };
        self.changed(ops.iter().map(Op::backend));
        let mut commands = Vec::new();
        for op in ops {
            match op {
                // Back before its drain finished: the server is still there.
                Op::Add { backend, server } if self.draining.contains_key(&(backend.clone(), server.name.clone())) => {
                    commands.extend(update_commands(backend, server));
                    commands.push(state_command(backend, &server.name, "ready"));
                }
                op => commands.extend(commands_of(op)),
            }
        }
        report.runtime_commands += rt.run(&commands).await? as u64;
        for op in ops {
            match op {
                Op::Add { backend, server } => {
                    self.draining.remove(&(backend.clone(), server.name.clone()));
                }
                Op::Drain { backend, name } => {
                    self.draining.insert((backend.clone(), name.clone()), Instant::now() + self.s.drain_timeout);
                }
                Op::Update { .. } => {}
            }
        }
        if self.drain_check_at.is_none() {
            self.schedule_drain_check();
        }
        Ok(())
    }

    /// Delete drained servers whose sessions reached zero or whose drain timeout passed.
    async fn finish_drains(&mut self, report: &mut Report) {
        let Some(rt) = self.runtime.clone() else {
            self.draining.clear();
            self.schedule_drain_check();
            return;
        };
        if self.runtime_failing {
            // Each command would wait for its timeout; the next reload ends the drains.
            self.schedule_drain_check();
            return;
        }
        // Only the backends with servers draining are asked about.
        let backends: std::collections::BTreeSet<&BackendName> = self.draining.keys().map(|(b, _)| b).collect();
        let mut sessions = Some(BTreeMap::new());
        for b in backends {
            match rt.sessions_of(b).await {
                Ok(s) => sessions.iter_mut().for_each(|all| all.extend(s.clone())),
                Err(e) => {
                    warn!("Cannot read sessions of draining servers: {e}");
                    sessions = None;
                    break;
                }
            }
        }
        let now = Instant::now();
        let due: Vec<_> = self
            .draining
            .iter()
            .filter(|((b, n), deadline)| {
                now >= **deadline || sessions.as_ref().is_some_and(|s| s.get(&(b.to_string(), n.to_string())).copied().unwrap_or(0) == 0)
            })
            .map(|(k, d)| (k.clone(), *d))
            .collect();
        if due.is_empty() {
            return self.schedule_drain_check();
        }
        self.changed(due.iter().map(|((b, _), _)| b));
        // All of them on one connection; when one fails, each on its own, to know which.
        let batch: Vec<_> = due.iter().flat_map(|((b, n), _)| remove_commands(b, n)).collect();
        if let Ok(n) = rt.run(&batch).await {
            report.runtime_commands += n as u64;
            for ((backend, name), deadline) in due {
                self.draining.remove(&(backend.clone(), name.clone()));
                info!(backend = %backend, server = %name, timed_out = now >= deadline, "Drained and deleted a server.");
            }
            return self.schedule_drain_check();
        }
        for ((backend, name), deadline) in due {
            match rt.remove(&backend, &name).await {
                Ok(n) => {
                    report.runtime_commands += n as u64;
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

    /// Start a drift check: `show servers state` is read, parsed and compared with `applied`
    /// (a copy of its map: the services themselves are shared) on the blocking pool, so that
    /// neither the fleet-sized reply nor the comparison holds the loop; [`Driver::verified`]
    /// gets the findings.
    fn verify(&mut self) {
        self.verify_at = Some(Instant::now() + self.s.verify_interval);
        let (Some(rt), Some(applied)) = (&self.runtime, &self.applied) else { return };
        if self.reload_pending {
            return;
        }
        let (rt, applied) = (rt.clone(), applied.clone());
        let draining: BTreeSet<(BackendName, ServerName)> = self.draining.keys().cloned().collect();
        self.overlap = Overlap::default();
        self.verifying = Some(tokio::spawn(async move { rt.servers_state_then(move |observed| check(&applied, &observed, &draining)).await }));
    }

    /// Save the server state, then reload: through the master CLI (verified: a new worker must
    /// appear), or `reload_command`.
    async fn reload(&mut self, desired: &DesiredState) -> Result<(), String> {
        let now = Instant::now();
        if self.verifying.is_some() {
            self.overlap = Overlap::Reloaded;
        }
        self.gate.record(now);
        if let (Some(path), true) = (&self.s.server_state_file, self.runtime_failing) {
            // A stale state file could bring back old weights or drains: none is better.
            let _ = std::fs::remove_file(path);
        } else if let (Some(rt), Some(path)) = (&self.runtime, &self.s.server_state_file) {
            match rt.servers_state_text().await {
                Ok(text) => {
                    if let Err(e) = write_atomic(path, filter_state_file(&text, desired).as_bytes()) {
                        warn!("Cannot save the server state before the reload: {e}");
                    }
                }
                Err(e) => {
                    warn!("Cannot save the server state before the reload: {e}");
                    let _ = std::fs::remove_file(path);
                    self.runtime_failing |= unreachable(&e);
                }
            }
        }
        let result = match (&self.master, &self.s.reload_command) {
            (Some(m), _) => m.reload().await,
            (None, Some(argv)) => run_command(argv, &[], RELOAD_TIMEOUT).await.map(|_| ()),
            (None, None) => {
                self.reload_pending = false;
                return Ok(());
            }
        };
        match result {
            Ok(()) => {
                self.reload_pending = false;
                // Servers that were draining are gone from the new workers.
                self.draining.clear();
                self.schedule_drain_check();
                let how = if self.master.is_some() { "master CLI" } else { "reload_command" };
                self.recovered("reload");
                info!(took_ms = now.elapsed().as_millis() as u64, how, "Reloaded HAProxy.");
                Ok(())
            }
            Err(e) => {
                if self.first_time("reload", &e.to_string()) {
                    error!("Reloading HAProxy failed: {e}. Retrying.");
                } else {
                    debug!("Reloading HAProxy still fails: {e}");
                }
                self.retry_later();
                Err(e.to_string())
            }
        }
    }
}

/// Whether a runtime API error means the socket cannot be talked to (cannot connect, no reply
/// in time), rather than HAProxy answering a command with an error.
fn unreachable(e: &Error) -> bool {
    matches!(e, Error::Socket { .. })
}

/// `text` without the process ids HAProxy puts in its messages (`[ALERT]    (1234) : ...`).
fn without_pids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('(') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str("(pid)");
            rest = &after[digits + 1..];
        } else {
            out.push('(');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_core::{BackendOrder, DesiredService, Host, Port, Server, ServiceName, ServiceShape};
    use crate::render;

    fn state(ports: &[u16]) -> DesiredState {
        let shape = ServiceShape { frontend: None, backend_name: BackendName::parse("web").unwrap(), backend_lines: vec![], order: BackendOrder::Asc };
        let servers = ports
            .iter()
            .map(|p| Server { name: ServerName::parse(&format!("s{p}")).unwrap(), host: Host::parse("127.0.0.1").unwrap(), port: Port::new(*p).unwrap(), weight: None, options: None })
            .map(|s| (s.name.clone(), s))
            .collect();
        DesiredState { services: [(ServiceName::parse("web").unwrap(), std::sync::Arc::new(DesiredService { shape, servers }))].into(), ..DesiredState::default() }
    }

    fn sh(s: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), s.into()]
    }

    /// A driver on a temporary directory: `check` and `reload` are shell commands; reloads are
    /// counted in the file `reloads`.
    fn driver(dir: &std::path::Path, check: &str, reload: &str, socket: Option<PathBuf>) -> Driver {
        Driver::new(DriverSettings {
            writer: Writer {
                path: dir.join("haproxy.cfg"),
                do_writes: true,
                do_checks: true,
                check_command: Some(sh(check)),
                haproxy_bin: "haproxy".into(),
                timeout: Duration::from_secs(5),
                written: Default::default(),
            },
            do_reloads: true,
            reload_command: Some(sh(&format!("echo x >> {}; {reload}", dir.join("reloads").display()))),
            restart_interval: Duration::ZERO,
            restart_jitter: 0.0,
            socket,
            master_socket: None,
            drain_timeout: Duration::from_secs(1),
            server_state_file: None,
            verify_interval: Duration::from_secs(30),
        })
    }

    impl Driver {
        async fn apply_all(&mut self, desired: &DesiredState) -> Report {
            self.apply(desired, &Scope::All).await
        }
    }

    fn reloads(dir: &std::path::Path) -> usize {
        std::fs::read_to_string(dir.join("reloads")).map_or(0, |s| s.lines().count())
    }

    #[tokio::test]
    async fn installs_reloads_once_and_then_leaves_an_unchanged_state_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(dir.path(), "true", "true", None);
        let r = d.apply_all(&state(&[1])).await;
        assert!(r.in_force());
        assert_eq!((r.outcome, r.reload), (Some(Outcome::Installed), Some(Ok(()))));
        assert_eq!(reloads(dir.path()), 1);
        let r = d.apply_all(&state(&[1])).await;
        assert_eq!((r.outcome, r.reload), (Some(Outcome::Unchanged), None));
        // Without the runtime API, a server change is a file and a reload.
        let r = d.apply_all(&state(&[1, 2])).await;
        assert_eq!((r.outcome, r.reload, r.servers), (Some(Outcome::Installed), Some(Ok(())), (1, 0, 0)));
        assert_eq!(reloads(dir.path()), 2);
        assert!(!d.wants_apply());
    }

    #[tokio::test]
    async fn a_refused_state_is_skipped_until_it_changes_or_the_config_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(dir.path(), "echo 'line 3: unknown keyword' >&2; exit 1", "true", None);
        let r = d.apply_all(&state(&[1])).await;
        assert!(matches!(&r.outcome, Some(Outcome::Rejected(e)) if e.contains("unknown keyword")), "{r:?}");
        assert!(!r.in_force());
        assert!(!dir.path().join("haproxy.cfg").exists());
        assert_eq!(d.apply_all(&state(&[1])).await.outcome, None);
        assert!(matches!(d.apply_all(&state(&[2])).await.outcome, Some(Outcome::Rejected(_))));
        // SIGHUP: the check may have changed (here it now passes), so the state is tried again.
        let fixed = driver(dir.path(), "true", "true", None).s;
        d.reconfigure(fixed);
        assert_eq!(d.apply_all(&state(&[2])).await.outcome, Some(Outcome::Installed));
        assert_eq!(reloads(dir.path()), 1);
    }

    #[tokio::test]
    async fn a_refused_state_is_checked_again_with_backoff_until_the_check_accepts_it() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("errorfile");
        let mut d = driver(dir.path(), &format!("test -e {}", flag.display()), "true", None);
        let r = d.apply_all(&state(&[1])).await;
        assert!(matches!(r.outcome, Some(Outcome::Rejected(_))), "{r:?}");
        // Not at once: after the first backoff.
        assert!(d.wants_apply());
        let now = Instant::now();
        let at = d.earliest_apply(now);
        assert!(at > now + Duration::from_millis(1900) && at <= now + REFUSED_RETRY_FIRST, "{:?}", at - now);
        assert_eq!(d.apply_all(&state(&[1])).await.outcome, None, "not before its time");
        // Due, and refused again: the wait doubles, up to its cap.
        let mut waits = vec![];
        for _ in 0..7 {
            d.refused_retry = Some(Instant::now());
            assert!(matches!(d.apply_all(&state(&[1])).await.outcome, Some(Outcome::Rejected(_))));
            waits.push(d.refused_backoff.as_secs());
        }
        assert_eq!(waits, [4, 8, 16, 32, 60, 60, 60]);
        // What the check depends on is fixed (no SIGHUP, no discovery change): the next try
        // installs it, and nothing more is owed.
        std::fs::write(&flag, "").unwrap();
        d.refused_retry = Some(Instant::now());
        let r = d.apply_all(&state(&[1])).await;
        assert_eq!((r.outcome, r.reload), (Some(Outcome::Installed), Some(Ok(()))));
        assert!(!d.wants_apply());
        // A new refusal starts from the first backoff again.
        std::fs::remove_file(&flag).unwrap();
        assert!(matches!(d.apply_all(&state(&[1, 2])).await.outcome, Some(Outcome::Rejected(_))));
        assert_eq!(d.refused_backoff, REFUSED_RETRY_FIRST);
    }

    #[test]
    fn pids_do_not_make_a_failure_new() {
        let a = "[ALERT]    (8446) : config : parsing [x:9] : errorfile : error opening file '/e (1).http'.";
        let b = "[ALERT]    (9001) : config : parsing [x:9] : errorfile : error opening file '/e (1).http'.";
        assert_eq!(without_pids(a), without_pids(b));
        assert_eq!(without_pids(a), "[ALERT]    (pid) : config : parsing [x:9] : errorfile : error opening file '/e (pid).http'.");
        assert_eq!(without_pids("no (parens) here ("), "no (parens) here (");
    }

    #[tokio::test]
    async fn a_failed_reload_is_owed_and_retried_after_a_pause() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(dir.path(), "true", "exit 1", None);
        let r = d.apply_all(&state(&[1])).await;
        assert_eq!(r.outcome, Some(Outcome::Installed));
        assert!(matches!(r.reload, Some(Err(_))));
        assert!(!r.in_force());
        assert!(d.wants_apply());
        let now = Instant::now();
        assert!(d.earliest_apply(now) >= now + Duration::from_millis(900));
        // The file is already in place: the retry reloads all the same.
        let r = d.apply_all(&state(&[1])).await;
        assert_eq!(r.outcome, Some(Outcome::Unchanged));
        assert!(matches!(r.reload, Some(Err(_))));
        assert_eq!(reloads(dir.path()), 2);
    }

    #[tokio::test]
    async fn a_runtime_api_failure_falls_back_to_a_reload_and_drift_checks_are_armed() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(dir.path(), "true", "true", Some(dir.path().join("no-such.sock")));
        // What runs is unknown at first: the file and a reload.
        let r = d.apply_all(&state(&[1])).await;
        assert_eq!((r.outcome, r.runtime_error), (Some(Outcome::Installed), None));
        assert!(d.next_wake().is_some(), "drift checks run after any apply");
        // A server added: the runtime API is tried, fails, and a reload carries the change.
        let r = d.apply_all(&state(&[1, 2])).await;
        assert!(r.runtime_error.is_some(), "{r:?}");
        assert_eq!((r.outcome, r.reload), (Some(Outcome::Installed), Some(Ok(()))));
        assert_eq!(reloads(dir.path()), 2);
        // Known to fail: the next change is not tried on it (a socket that hangs would hold
        // the loop for its timeout at every change) until a drift check reads it again.
        let r = d.apply_all(&state(&[1, 2, 3])).await;
        assert_eq!((r.runtime_error, r.outcome, r.reload), (None, Some(Outcome::Installed), Some(Ok(()))));
        assert_eq!(reloads(dir.path()), 3);
        d.verifying = Some(tokio::spawn(async { Ok(Findings::default()) }));
        let done = d.verifying.take().unwrap().await;
        let r = d.verified(done).await;
        assert!(r.runtime_ok && !d.runtime_failing, "{r:?}");
    }

    /// A driver on the runtime path (a stand-in stats socket), HAProxy running `state(&[1])`.
    fn runtime_driver(dir: &std::path::Path) -> Driver {
        let sock = dir.join("stats.sock");
        let _seen = fake_stats_socket(sock.clone());
        std::fs::write(dir.join("haproxy.cfg"), render(&state(&[1]))).unwrap();
        let mut d = driver(dir, "true", "true", Some(sock));
        d.s.writer.check_command = None;
        d
    }

    #[tokio::test]
    async fn a_drift_check_leaves_out_what_changed_while_it_read_haproxy() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = runtime_driver(dir.path());
        let scope = Scope::Services([ServiceName::parse("web").unwrap()].into());
        let drift_in = |backend: &str| Findings { stuck: vec![], drift: vec![(BackendName::parse(backend).unwrap(), format!("{backend}/s1 is missing"))] };
        // As `verify` starts one: the read runs beside the loop.
        let start_check = |d: &mut Driver| {
            d.overlap = Overlap::default();
            d.verifying = Some(tokio::spawn(async { Ok(Findings::default()) }));
        };
        let later = Instant::now() + Duration::from_secs(30);

        // The runtime API changes web while the check reads HAProxy: what the check found in
        // web is a mix of before and after, left out. Nothing is owed, and the next check
        // keeps its time (it is not brought forward to read the whole of HAProxy again).
        start_check(&mut d);
        assert_eq!(d.apply(&state(&[1, 2]), &scope).await.outcome, Some(Outcome::Installed));
        assert_eq!(reloads(dir.path()), 0, "the runtime API carried it");
        d.verify_at = Some(later);
        let r = d.verified(Ok(Ok(drift_in("web")))).await;
        assert!(r.runtime_ok && !d.wants_apply(), "{r:?}");
        assert_eq!(d.verify_at, Some(later));

        // A difference in a backend nothing changed stands, though web changed meanwhile: it
        // is repaired with a reload.
        start_check(&mut d);
        assert_eq!(d.apply(&state(&[1, 2, 3]), &scope).await.outcome, Some(Outcome::Installed));
        d.verified(Ok(Ok(drift_in("api")))).await;
        assert!(d.wants_apply());

        // HAProxy reloaded while the check read it: nothing is concluded, and the check runs
        // again soon.
        let dir = tempfile::tempdir().unwrap();
        let mut d = runtime_driver(dir.path());
        assert_eq!(d.apply(&state(&[1, 2]), &scope).await.outcome, Some(Outcome::Installed));
        start_check(&mut d);
        d.reload(&state(&[1, 2])).await.unwrap();
        assert_eq!(reloads(dir.path()), 1);
        d.verify_at = Some(later);
        d.verified(Ok(Ok(drift_in("web")))).await;
        assert!(!d.wants_apply());
        assert!(d.verify_at.is_some_and(|at| at <= Instant::now() + FIRST_VERIFY), "{:?}", d.verify_at);
    }

    /// A stand-in for HAProxy's stats socket: answers the runtime API commands myelin sends
    /// as HAProxy 2.6 does, and records them.
    fn fake_stats_socket(path: PathBuf) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut input = String::new();
                let _ = conn.read_to_string(&mut input).await;
                // HAProxy's CLI: one command per connection, or in interactive mode (`prompt`)
                // many, each reply followed by the prompt.
                let lines: Vec<&str> = input.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                let interactive = lines.first() == Some(&"prompt");
                let mut out = String::new();
                for cmd in lines {
                    let reply = if cmd.starts_with("add server") {
                        "New server registered.\n"
                    } else if cmd.starts_with("show servers state") {
                        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n"
                    } else if cmd == "quit" {
                        break;
                    } else {
                        ""
                    };
                    if cmd != "prompt" {
                        log.lock().unwrap().push(cmd.to_owned());
                    }
                    out.push_str(reply);
                    out.push_str(if interactive { "\n> " } else { "\n" });
                }
                let _ = conn.write_all(out.as_bytes()).await;
            }
        });
        seen
    }

    #[tokio::test]
    async fn drift_checks_are_armed_after_a_runtime_only_start() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("stats.sock");
        let seen = fake_stats_socket(sock.clone());
        // Restarted onto the haproxy.cfg it wrote before: only servers differ now.
        std::fs::write(dir.path().join("haproxy.cfg"), render(&state(&[1]))).unwrap();
        let mut d = driver(dir.path(), "true", "true", Some(sock));
        let r = d.apply_all(&state(&[1, 2])).await;
        assert_eq!((r.outcome, r.reload, r.runtime_commands), (Some(Outcome::Installed), None, 2), "{:?}", seen.lock().unwrap());
        assert_eq!(reloads(dir.path()), 0);
        // What runs is read first (the file may lag HAProxy), then the change.
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], "show servers state");
        assert!(seen[1].starts_with("add server web/s2 127.0.0.1:2"), "{seen:?}");
        let wake = d.next_wake().expect("a drift check is scheduled after a runtime-API apply");
        assert!(wake <= Instant::now() + FIRST_VERIFY);
    }

    #[tokio::test]
    async fn the_operators_check_gates_runtime_changes_too() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("stats.sock");
        let seen = fake_stats_socket(sock.clone());
        std::fs::write(dir.path().join("haproxy.cfg"), render(&state(&[1]))).unwrap();
        // The operator's check refuses any config routing to port 2.
        let mut d = driver(dir.path(), "! grep -q '127.0.0.1:2$' \"$MYELIN_CANDIDATE\"", "true", Some(sock));
        let r = d.apply_all(&state(&[1, 2])).await;
        assert!(matches!(r.outcome, Some(Outcome::Rejected(_))), "{r:?}");
        assert_eq!(r.runtime_commands, 0);
        let changes: Vec<String> = seen.lock().unwrap().iter().filter(|c| *c != "show servers state").cloned().collect();
        assert!(changes.is_empty(), "nothing reached HAProxy: {changes:?}");
        assert_eq!(std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap(), render(&state(&[1])));
        // A change the check accepts goes through the runtime API.
        let r = d.apply_all(&state(&[1, 3])).await;
        assert_eq!((r.outcome, r.runtime_commands), (Some(Outcome::Installed), 2));
    }

    #[tokio::test]
    async fn runtime_changes_share_one_file_write_that_follows_soon_and_at_exit() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("stats.sock");
        let _seen = fake_stats_socket(sock.clone());
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, render(&state(&[1]))).unwrap();
        let mut d = driver(dir.path(), "true", "true", Some(sock));
        d.s.writer.check_command = None;
        let web = ServiceName::parse("web").unwrap();
        let scope = Scope::Services([web].into());
        // Two changes in a row: HAProxy has both at once, the file follows once.
        assert_eq!(d.apply(&state(&[1, 2]), &scope).await.outcome, Some(Outcome::Installed));
        assert_eq!(d.apply(&state(&[1, 2, 3]), &scope).await.outcome, Some(Outcome::Installed));
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), render(&state(&[1])), "the file lags by design");
        let due = d.next_wake().unwrap();
        assert!(due <= Instant::now() + FILE_COALESCE);
        tokio::time::sleep_until(due).await;
        assert_eq!(d.tick().await.outcome, Some(Outcome::Installed), "the write is reported");
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), render(&state(&[1, 2, 3])));
        // At exit, a lagging file is written at once.
        assert_eq!(d.apply(&state(&[3]), &scope).await.outcome, Some(Outcome::Installed));
        d.flush().await;
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), render(&state(&[3])));
        assert_eq!(reloads(dir.path()), 0);
    }

    #[tokio::test]
    async fn a_lagging_file_gets_what_haproxy_runs_not_a_later_state_the_check_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = runtime_driver(dir.path());
        let cfg = dir.path().join("haproxy.cfg");
        let web = ServiceName::parse("web").unwrap();
        assert_eq!(d.apply(&state(&[1, 2]), &Scope::Services([web].into())).await.outcome, Some(Outcome::Installed));
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), render(&state(&[1])), "the file lags");
        // A new service (a reload) that the check refuses.
        let mut refused = state(&[1, 2]);
        let api = ServiceName::parse("api").unwrap();
        let mut svc = (*refused.services[&ServiceName::parse("web").unwrap()]).clone();
        svc.shape.backend_name = BackendName::parse("api").unwrap();
        refused.services.insert(api.clone(), std::sync::Arc::new(svc));
        d.s.writer.haproxy_bin = "false".into();
        let r = d.apply(&refused, &Scope::Services([api].into())).await;
        assert!(matches!(r.outcome, Some(Outcome::Rejected(_))), "{r:?}");
        // The lag is written: HAProxy runs the runtime change, not the refused service.
        d.flush().await;
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), render(&state(&[1, 2])));
        assert_eq!(reloads(dir.path()), 0);
    }

    #[test]
    fn the_file_follows_when_changes_pause_and_a_large_one_lags_longer_while_they_do_not() {
        assert_eq!(file_lag_max(0), FILE_COALESCE);
        assert_eq!(file_lag_max(40_000), FILE_COALESCE, "1,000 servers");
        assert_eq!(file_lag_max(4 * FILE_PACE), Duration::from_secs(4), "100,000 servers");
        assert_eq!(file_lag_max(usize::MAX), FILE_LAG_MAX);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // One change: written a second later, whatever the size.
        assert_eq!(file_due(t0, t0, 40_000), t0 + s(1));
        assert_eq!(file_due(t0, t0, 4 * FILE_PACE), t0 + s(1));
        // Changes every half second: a small file is written a second after the first of them,
        // a large one when they pause, or 4 s after the first.
        assert_eq!(file_due(t0, t0 + Duration::from_millis(500), 40_000), t0 + s(1));
        assert_eq!(file_due(t0, t0 + Duration::from_millis(2500), 4 * FILE_PACE), t0 + Duration::from_millis(3500));
        assert_eq!(file_due(t0, t0 + Duration::from_millis(3500), 4 * FILE_PACE), t0 + s(4));
    }

    #[tokio::test]
    async fn do_reloads_off_writes_without_reloading() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = driver(dir.path(), "true", "true", None);
        d.s.do_reloads = false;
        let r = d.apply_all(&state(&[1])).await;
        assert_eq!((r.outcome, r.reload), (Some(Outcome::Installed), None));
        assert_eq!(reloads(dir.path()), 0);
    }
}
