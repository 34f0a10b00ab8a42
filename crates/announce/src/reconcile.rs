//! The reconcile loop: keeps one registry equal to the desired set through a [`Registry`]
//! backend. Level-triggered: whatever happened before (a restart, a registry that was down), the
//! loop connects, adopts this owner's entries it finds, publishes what is desired and withdraws
//! the rest, then follows the desired set and keeps the entries alive. A failure is reported
//! once (a change of state, not every retry) and the loop reconnects with capped exponential
//! backoff and jitter; on shutdown it withdraws everything it published and returns.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::{AnnounceError, Desired, Instance, InstanceId, Registry};

/// Where a reconcile loop stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceState {
    /// The desired set is not known yet (this host's engine has not been read).
    Waiting,
    /// Not connected yet (the first attempt is under way).
    Connecting,
    /// Connected: the registry holds the desired set (or is being brought to it).
    Announcing,
    /// The registry failed; reconnecting with backoff. Entries already published stay as long
    /// as the registry keeps them (until their lease, TTL or session expires).
    Failing,
    /// Stopped (after withdrawing what it could).
    Stopped,
}

impl AnnounceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Connecting => "connecting",
            Self::Announcing => "announcing",
            Self::Failing => "failing",
            Self::Stopped => "stopped",
        }
    }
}

/// What a reconcile loop publishes about itself (for `/status` and `myelin status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceStatus {
    /// The registry ([`Registry::target`]).
    pub target: String,
    pub state: AnnounceState,
    /// The last failure, while failing.
    pub error: Option<String>,
    /// The ids this host holds in the registry, as far as the loop knows.
    pub published: Vec<InstanceId>,
    /// How long other hosts keep seeing them if this host dies ([`Registry::expiry`]).
    pub expiry: Duration,
}

impl AnnounceStatus {
    pub fn new<R: Registry>(registry: &R) -> Self {
        Self { target: registry.target(), state: AnnounceState::Waiting, error: None, published: Vec::new(), expiry: registry.expiry() }
    }
}

/// The reconnecting delays: 0.25 s doubling to 30 s, with jitter (the supervisor's).
fn backoff() -> impl Iterator<Item = Duration> {
    myelin_watch::backoff()
}

/// Run the loop until `shutdown` completes (or the desired set's sender is dropped), then
/// withdraw everything this host published (each operation bounded by the backend's own
/// timeouts; the caller bounds the whole) and return. `desired` is `None` until the desired set
/// is known: nothing is touched before (so a restart does not withdraw what it is about to
/// publish again).
pub async fn reconcile<R: Registry>(
    mut registry: R,
    mut desired: watch::Receiver<Option<Desired>>,
    status: watch::Sender<AnnounceStatus>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let target = registry.target();
    let mut r = Run { status, problem: None, held: BTreeMap::new(), present: BTreeSet::new() };
    let mut delays = backoff();
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => return r.stopped(),
        known = desired.wait_for(Option::is_some) => if known.is_err() { return r.stopped() },
    }
    r.status.send_modify(|s| s.state = AnnounceState::Connecting);
    'connect: loop {
        // Connect (again).
        let connected = tokio::select! {
            () = &mut shutdown => break 'connect,
            c = registry.connect() => c,
        };
        match connected {
            Ok(ids) => {
                r.present = ids;
                r.held.clear();
                if r.problem.take().is_some() {
                    info!(target = ?target, "Registry reachable again; making the registrations true.");
                }
            }
            Err(e) => {
                r.failed(&e);
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                tokio::select! {
                    () = &mut shutdown => break 'connect,
                    () = tokio::time::sleep(wait) => continue 'connect,
                }
            }
        }
        let mut next_keepalive = Instant::now() + registry.keepalive_every();
        loop {
            let want = desired.borrow_and_update().clone().unwrap_or_default();
            if let Err(e) = r.sync(&mut registry, &want).await {
                r.failed(&e);
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                tokio::select! {
                    () = &mut shutdown => break 'connect,
                    () = tokio::time::sleep(wait) => continue 'connect,
                }
            }
            delays = backoff();
            r.announcing();
            tokio::select! {
                () = &mut shutdown => break 'connect,
                changed = desired.changed() => if changed.is_err() { break 'connect },
                () = tokio::time::sleep_until(next_keepalive) => {
                    if let Err(e) = registry.keepalive().await {
                        r.failed(&e);
                        continue 'connect;
                    }
                    next_keepalive = Instant::now() + registry.keepalive_every();
                }
            }
        }
    }
    r.stop(&mut registry).await;
}

struct Run {
    status: watch::Sender<AnnounceStatus>,
    /// The failure reported last, so a registry that stays down is reported once.
    problem: Option<String>,
    /// What this connection published, by id.
    held: BTreeMap<InstanceId, Instance>,
    /// Ids of this owner the registry held at connect and that are not republished yet.
    present: BTreeSet<InstanceId>,
}

impl Run {
    /// Make the registry hold `want`: publish what is new or changed, withdraw the rest.
    async fn sync<R: Registry>(&mut self, registry: &mut R, want: &Desired) -> Result<(), AnnounceError> {
        let stale: Vec<InstanceId> = self.held.keys().chain(&self.present).filter(|id| !want.contains_key(*id)).cloned().collect();
        for id in stale {
            registry.withdraw(&id).await?;
            debug!(target = ?registry.target(), id = %id, "Withdrew an instance.");
            self.held.remove(&id);
            self.present.remove(&id);
            self.show();
        }
        for (id, inst) in want.iter() {
            if self.held.get(id) == Some(inst) {
                continue;
            }
            registry.publish(inst).await?;
            debug!(target = ?registry.target(), id = %id, host = %inst.host, port = inst.port, "Published an instance.");
            self.present.remove(id);
            self.held.insert(id.clone(), inst.clone());
            self.show();
        }
        Ok(())
    }

    fn stopped(&self) {
        self.status.send_modify(|s| s.state = AnnounceState::Stopped);
    }

    fn published(&self) -> Vec<InstanceId> {
        self.held.keys().chain(&self.present).cloned().collect::<BTreeSet<_>>().into_iter().collect()
    }

    fn show(&self) {
        let published = self.published();
        self.status.send_if_modified(|s| {
            let changed = s.published != published;
            s.published = published;
            changed
        });
    }

    fn announcing(&self) {
        let published = self.published();
        self.status.send_if_modified(|s| {
            let changed = s.state != AnnounceState::Announcing || s.error.is_some() || s.published != published;
            s.state = AnnounceState::Announcing;
            s.error = None;
            s.published = published;
            changed
        });
    }

    /// Report a failure once while it lasts; the loop reconnects.
    fn failed(&mut self, e: &AnnounceError) {
        let text = e.report();
        if self.problem.as_deref() != Some(text.as_str()) {
            warn!(problem = ?text, "Announcing failed; retrying with backoff. What is published stays until the registry expires it.");
        } else {
            debug!(problem = ?text, "Registry still unavailable.");
        }
        self.problem = Some(text.clone());
        self.status.send_if_modified(|s| {
            let changed = s.state != AnnounceState::Failing || s.error.as_deref() != Some(text.as_str());
            s.state = AnnounceState::Failing;
            s.error = Some(text);
            changed
        });
    }

    /// Withdraw everything this host published (what it knows of), once; then stopped.
    async fn stop<R: Registry>(&mut self, registry: &mut R) {
        let mut ids = self.published();
        if ids.is_empty() && self.problem.is_some() {
            // Not connected now: connect once to find what to withdraw.
            if let Ok(found) = registry.connect().await {
                ids = found.into_iter().collect();
            }
        }
        let mut withdrawn = 0usize;
        for id in &ids {
            match registry.withdraw(id).await {
                Ok(()) => {
                    withdrawn += 1;
                    self.held.remove(id);
                    self.present.remove(id);
                }
                Err(e) => {
                    warn!(problem = ?e.report(), "Withdrawing at stop failed; the registry expires the rest.");
                    break;
                }
            }
        }
        info!(target = ?registry.target(), withdrawn, "Stopped announcing.");
        let published = self.published();
        self.status.send_modify(|s| {
            s.state = AnnounceState::Stopped;
            s.published = published;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cause, Owner};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::{Arc, Mutex};

    /// A registry in memory: what it holds, whether it is up, and every call made.
    #[derive(Default)]
    struct State {
        entries: BTreeMap<InstanceId, Instance>,
        up: bool,
        calls: Vec<String>,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<State>>);

    impl Fake {
        fn up(&self, up: bool) {
            self.0.lock().unwrap().up = up;
        }
        fn ids(&self) -> Vec<String> {
            self.0.lock().unwrap().entries.keys().map(|k| k.to_string()).collect()
        }
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap().calls)
        }
        fn check(&self, call: String) -> Result<std::sync::MutexGuard<'_, State>, AnnounceError> {
            let mut s = self.0.lock().unwrap();
            s.calls.push(call);
            if s.up {
                Ok(s)
            } else {
                Err(AnnounceError::Unreachable { target: "fake".into(), cause: Cause::msg("connection refused") })
            }
        }
    }

    impl Registry for Fake {
        fn target(&self) -> String {
            "fake /services/web".into()
        }
        async fn connect(&mut self) -> Result<BTreeSet<InstanceId>, AnnounceError> {
            let owner = owner();
            let s = self.check("connect".into())?;
            Ok(s.entries.keys().filter(|id| id.is_owned_by(&owner)).cloned().collect())
        }
        async fn publish(&mut self, i: &Instance) -> Result<(), AnnounceError> {
            let mut s = self.check(format!("publish {}", i.id))?;
            s.entries.insert(i.id.clone(), i.clone());
            Ok(())
        }
        async fn withdraw(&mut self, id: &InstanceId) -> Result<(), AnnounceError> {
            let mut s = self.check(format!("withdraw {id}"))?;
            s.entries.remove(id);
            Ok(())
        }
        async fn keepalive(&mut self) -> Result<(), AnnounceError> {
            self.check("keepalive".into()).map(|_| ())
        }
        fn keepalive_every(&self) -> Duration {
            Duration::from_secs(3)
        }
        fn expiry(&self) -> Duration {
            Duration::from_secs(10)
        }
    }

    fn owner() -> Owner {
        Owner::new("host-a").unwrap()
    }

    fn inst(container: &str, port: u16) -> Instance {
        Instance {
            id: InstanceId::new(&owner(), container, 8000).unwrap(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            name: container.into(),
            weight: None,
            labels: BTreeMap::new(),
        }
    }

    fn set(items: &[Instance]) -> Option<Desired> {
        Some(Arc::new(items.iter().map(|i| (i.id.clone(), i.clone())).collect()))
    }

    struct Loop {
        fake: Fake,
        desired: watch::Sender<Option<Desired>>,
        status: watch::Receiver<AnnounceStatus>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(fake: &Fake, initial: Option<Desired>) -> Loop {
        let (desired, drx) = watch::channel(initial);
        let (stx, status) = watch::channel(AnnounceStatus::new(fake));
        let (stop, srx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(reconcile(fake.clone(), drx, stx, async move {
            let _ = srx.await;
        }));
        Loop { fake: fake.clone(), desired, status, stop: Some(stop), task }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn adopts_its_own_entries_publishes_and_withdraws() {
        let fake = Fake::default();
        fake.up(true);
        // Left by an earlier run of this host (one still wanted, one not), and another host's.
        let other = Instance { id: InstanceId::parse("host-b_web-1_8000").unwrap(), ..inst("x", 1) };
        for i in [inst("web-1", 32001), inst("gone", 32009), other] {
            fake.0.lock().unwrap().entries.insert(i.id.clone(), i);
        }
        let mut l = start(&fake, set(&[inst("web-1", 32001), inst("web-2", 32002)]));
        settle().await;
        assert_eq!(fake.ids(), ["host-a_web-1_8000", "host-a_web-2_8000", "host-b_web-1_8000"]);
        let calls = fake.calls();
        assert_eq!(calls, ["connect", "withdraw host-a_gone_8000", "publish host-a_web-1_8000", "publish host-a_web-2_8000"]);
        let s = l.status.borrow_and_update().clone();
        assert_eq!(s.state, AnnounceState::Announcing);
        assert_eq!(s.published.iter().map(|i| i.to_string()).collect::<Vec<_>>(), ["host-a_web-1_8000", "host-a_web-2_8000"]);
        assert_eq!(s.expiry, Duration::from_secs(10));

        // A change: only what changed is written.
        l.desired.send_replace(set(&[inst("web-1", 32001), inst("web-2", 32012)]));
        settle().await;
        assert_eq!(fake.calls(), ["publish host-a_web-2_8000"]);
        assert_eq!(fake.0.lock().unwrap().entries[&inst("web-2", 0).id].port, 32012);
        l.desired.send_replace(set(&[inst("web-2", 32012)]));
        settle().await;
        assert_eq!(fake.calls(), ["withdraw host-a_web-1_8000"]);

        // Kept alive every keepalive_every.
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_eq!(fake.calls(), ["keepalive", "keepalive"]);

        // Shutdown withdraws everything it published; another host's entries stay.
        l.stop.take().unwrap().send(()).unwrap();
        (&mut l.task).await.unwrap();
        assert_eq!(fake.ids(), ["host-b_web-1_8000"]);
        assert_eq!(l.status.borrow().state, AnnounceState::Stopped);
        assert!(l.status.borrow().published.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_registry_is_reported_once_and_made_true_again() {
        let fake = Fake::default();
        fake.up(false);
        let mut l = start(&fake, set(&[inst("web-1", 32001)]));
        settle().await;
        let s = l.status.borrow_and_update().clone();
        assert_eq!(s.state, AnnounceState::Failing);
        assert_eq!(s.error.as_deref(), Some("fake is unreachable: connection refused"));
        // It retries with growing delays, and the status does not change on every retry.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let connects = fake.calls().len();
        assert!((4..=8).contains(&connects), "{connects} connects in 20 s");
        assert!(!l.status.has_changed().unwrap(), "the same failure was published again");

        // Back: everything desired is made true.
        fake.up(true);
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert_eq!(fake.ids(), ["host-a_web-1_8000"]);
        assert_eq!(l.status.borrow_and_update().state, AnnounceState::Announcing);

        // Down while announcing: a keepalive fails, published entries are not withdrawn by us;
        // a change meanwhile is applied once it returns.
        fake.up(false);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(l.status.borrow_and_update().state, AnnounceState::Failing);
        l.desired.send_replace(set(&[inst("web-2", 32002)]));
        // The registry lost its entries meanwhile (expired), then returns.
        fake.0.lock().unwrap().entries.clear();
        fake.up(true);
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert_eq!(fake.ids(), ["host-a_web-2_8000"]);
        assert_eq!(l.status.borrow().state, AnnounceState::Announcing);
        assert_eq!(l.status.borrow().error, None);

        l.stop.take().unwrap().send(()).unwrap();
        (&mut l.task).await.unwrap();
        assert!(fake.ids().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_in_the_middle_of_a_sync_reconnects_and_finishes_it() {
        let fake = Fake::default();
        fake.up(true);
        let mut l = start(&fake, set(&[]));
        settle().await;
        fake.calls();
        // Down for the next write only.
        fake.up(false);
        l.desired.send_replace(set(&[inst("a", 1), inst("b", 2)]));
        settle().await;
        assert_eq!(fake.calls(), ["publish host-a_a_8000"]);
        fake.up(true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(fake.calls(), ["connect", "publish host-a_a_8000", "publish host-a_b_8000"]);
        // The desired set's sender gone: stop too.
        drop(l.desired);
        (&mut l.task).await.unwrap();
        assert!(fake.ids().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_touched_before_the_desired_set_is_known() {
        let fake = Fake::default();
        fake.up(true);
        let mine = inst("web-1", 32001);
        fake.0.lock().unwrap().entries.insert(mine.id.clone(), mine.clone());
        let l = start(&fake, None);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(fake.calls().is_empty());
        assert_eq!(l.status.borrow().state, AnnounceState::Waiting);
        l.desired.send_replace(set(&[mine]));
        settle().await;
        assert_eq!(fake.calls(), ["connect", "publish host-a_web-1_8000"]);
        assert_eq!(fake.ids(), ["host-a_web-1_8000"]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_down_tries_once_and_returns() {
        let fake = Fake::default();
        fake.up(false);
        let mut l = start(&fake, set(&[inst("a", 1)]));
        settle().await;
        l.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), &mut l.task).await.expect("returns at once").unwrap();
        assert_eq!(l.fake.calls(), ["connect", "connect"]);
        assert_eq!(l.status.borrow().state, AnnounceState::Stopped);
    }
}
