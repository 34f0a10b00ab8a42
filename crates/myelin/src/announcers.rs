//! The running announcers: per service with an `announce` section, one task following this
//! host's Docker engine (readiness, `myelin_announce::ready::follow`) and one reconcile loop
//! keeping the registry equal to what it finds. Wiring only: the libraries decide.

use std::collections::BTreeMap;
use std::time::Duration;

use myelin_announce::{reconcile, AnnounceStatus, Desired, Registry};
use myelin_config::{Announce, AnnounceTo, Loaded};
use myelin_core::ServiceName;
use myelin_source::SourceConfig as _;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

struct Running {
    announce: Announce,
    owner: myelin_announce::Owner,
    follow: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    status: Option<watch::Receiver<AnnounceStatus>>,
    last: AnnounceStatus,
}

impl Running {
    /// Ask the loop to withdraw and stop; its task, to await.
    fn stop(mut self) -> JoinHandle<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.follow.abort();
        self.task
    }

    /// Stop without withdrawing: the loop that replaces it on the same registry adopts its
    /// entries (as after a restart), so other hosts see no gap.
    fn hand_over(self) -> JoinHandle<()> {
        let Running { follow, task, .. } = self;
        // The loop first: once its readiness task is gone, a loop still running would take the
        // closed channel for a stop and withdraw everything.
        task.abort();
        tokio::spawn(async move {
            let _ = task.await;
            follow.abort();
        })
    }
}

/// The registry an announcer publishes to (its `target`), to tell whether a new one replaces
/// it on the same registry.
fn target(loaded: &Loaded, name: &ServiceName) -> Option<String> {
    let announce = loaded.services.get(name)?.announce.as_ref()?;
    let owner = loaded.owner.clone()?;
    match &announce.to {
        AnnounceTo::Etcd(e) => e.registry(owner, &loaded.source_context(name)).ok().map(|r| r.target()),
        AnnounceTo::Consul(c) => c.registry(owner, &loaded.source_context(name)).ok().map(|r| r.target()),
        AnnounceTo::Zookeeper(z) => z.registry(owner, &loaded.source_context(name)).ok().map(|r| r.target()),
    }
}

#[derive(Default)]
pub struct Announcers {
    running: BTreeMap<ServiceName, Running>,
}

impl Announcers {
    /// Start what `loaded` configures for `name` (if it announces), after `previous` (the
    /// task of the loop it replaces) has withdrawn and stopped.
    fn start(&mut self, loaded: &Loaded, name: &ServiceName, previous: Option<JoinHandle<()>>) {
        let (Some(svc), Some(owner)) = (loaded.services.get(name), loaded.owner.as_ref()) else { return };
        let Some(announce) = &svc.announce else { return };
        let cx = loaded.source_context(name);
        let Some(partition) = announce.containers.partitions(&cx).pop() else {
            error!(service = %name, "No Docker engine to follow for announcing.");
            return;
        };
        let (dtx, drx) = watch::channel(None);
        let follow = tokio::spawn(myelin_announce::ready::follow(
            name.clone(),
            partition,
            announce.containers.label_filters().to_vec(),
            announce.mapping(owner),
            announce.check.clone(),
            dtx,
        ));
        let started = match &announce.to {
            AnnounceTo::Etcd(e) => e.registry(owner.clone(), &cx).map(|r| spawn_loop(r, drx, previous)),
            AnnounceTo::Consul(c) => c.registry(owner.clone(), &cx).map(|r| spawn_loop(r, drx, previous)),
            AnnounceTo::Zookeeper(z) => z.registry(owner.clone(), &cx).map(|r| spawn_loop(r, drx, previous)),
        };
        let (stop, task, status) = match started {
            Ok(s) => s,
            Err(problems) => {
                // `check` passed at load: not expected.
                follow.abort();
                error!(service = %name, problems = ?problems, "Cannot announce.");
                return;
            }
        };
        let last = status.borrow().clone();
        info!(service = %name, owner = %owner, target = ?last.target, "Announcing this host's containers.");
        self.running.insert(name.clone(), Running { announce: (**announce).clone(), owner: owner.clone(), follow, stop: Some(stop), task, status: Some(status), last });
    }

    /// Start every service's announcer.
    pub fn start_all(&mut self, loaded: &Loaded) {
        for name in loaded.services.keys() {
            self.start(loaded, name, None);
        }
    }

    /// After a SIGHUP: announcers whose settings did not change keep running. A changed one on
    /// the same registry (same owner, members and path) hands over to its replacement, which
    /// adopts its entries; one that is gone or moves to another registry withdraws first.
    pub fn reconfigure(&mut self, loaded: &Loaded) {
        let names: Vec<ServiceName> = self.running.keys().cloned().collect();
        let mut previous = BTreeMap::new();
        for name in names {
            let r = self.running.get(&name).expect("listed");
            let same = loaded.services.get(&name).and_then(|s| s.announce.as_deref()) == Some(&r.announce) && loaded.owner.as_ref() == Some(&r.owner);
            if !same {
                let same_registry = loaded.owner.as_ref() == Some(&r.owner) && target(loaded, &name).as_deref() == Some(r.last.target.as_str());
                let r = self.running.remove(&name).expect("listed");
                previous.insert(name, if same_registry { r.hand_over() } else { r.stop() });
            }
        }
        for name in loaded.services.keys() {
            if !self.running.contains_key(name) {
                self.start(loaded, name, previous.remove(name));
            }
        }
    }

    /// Withdraw everything and stop, within `bound`.
    pub async fn stop_all(&mut self, bound: Duration) {
        if self.running.is_empty() {
            return;
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut self.running).into_values().map(Running::stop).collect();
        let n = tasks.len();
        if tokio::time::timeout(bound, futures::future::join_all(tasks)).await.is_err() {
            warn!(bound_s = bound.as_secs_f64(), "Withdrawing did not finish in time; the registries expire the rest.");
        } else {
            info!(services = n, "Withdrew this host's instances.");
        }
    }

    /// Wait until an announcer's status changes.
    pub async fn changed(&mut self) {
        let waits: Vec<_> = self
            .running
            .iter_mut()
            .filter_map(|(name, r)| r.status.as_mut().map(|rx| (name.clone(), rx)))
            .map(|(name, rx)| Box::pin(async move { (name, rx.changed().await.is_ok()) }))
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        let ((name, alive), _, _) = futures::future::select_all(waits).await;
        if let Some(r) = self.running.get_mut(&name) {
            match r.status.as_ref() {
                Some(rx) if alive => r.last = rx.borrow().clone(),
                _ => r.status = None,
            }
        }
    }

    /// Every announcer's status, by service.
    pub fn statuses(&self) -> BTreeMap<String, myelin_admin::AnnounceStatus> {
        self.running.iter().map(|(name, r)| (name.to_string(), admin_status(&r.last))).collect()
    }
}

fn admin_status(s: &AnnounceStatus) -> myelin_admin::AnnounceStatus {
    myelin_admin::AnnounceStatus {
        target: s.target.clone(),
        state: s.state.as_str().to_owned(),
        error: s.error.clone(),
        published: s.published.iter().map(ToString::to_string).collect(),
        expiry_seconds: s.expiry.as_secs_f64(),
    }
}

type Started = (oneshot::Sender<()>, JoinHandle<()>, watch::Receiver<AnnounceStatus>);

/// Spawn a reconcile loop on `registry`, once `previous` is done.
fn spawn_loop<R: Registry>(registry: R, desired: watch::Receiver<Option<Desired>>, previous: Option<JoinHandle<()>>) -> Started {
    let (stx, srx) = watch::channel(AnnounceStatus::new(&registry));
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        if let Some(p) = previous {
            let _ = p.await;
        }
        reconcile(registry, desired, stx, async move {
            let _ = stop_rx.await;
        })
        .await;
    });
    (stop, task, srx)
}
