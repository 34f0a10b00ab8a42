//! One opening: take the ensemble's session (shared with the other sources on it, or a new
//! one), read the path's children and the data of each, yield a `Reset`, then follow (child and
//! data watches) or poll. A lost connection or an expired session ends the stream; the
//! supervisor opens a new one, whose first update is a complete `Reset` again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use myelin_core::{Discovered, Update};
use myelin_source::{Cause, SourceError, UpdateStream};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zookeeper_client::{Client, EventType, SessionState, StateWatcher, WatchedEvent};

use crate::payload::{changes, decode, Format, Instance, Members};

/// The session timeout asked of ZooKeeper. The watcher holds no ephemeral nodes, so this only
/// bounds how long a silent connection is trusted (the client gives up on one after 2/5 of it).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one opening waits for a session before it reports ZooKeeper unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Node reads in flight at once when many children appear together (e.g. the first listing).
const READS_IN_FLIGHT: usize = 128;

/// The sessions in use, by connect string: every source that reads through the same ensemble
/// shares one session, as Synapse shares one connection. ZooKeeper limits the connections
/// from one address (`maxClientCnxns`, 60 by default), and a host may route hundreds of
/// services. A session lives while a source uses it; when it is lost, every source on it
/// ends, and the first to reopen makes a new one for the others.
static SESSIONS: tokio::sync::Mutex<BTreeMap<String, Weak<Client>>> = tokio::sync::Mutex::const_new(BTreeMap::new());

/// A session for `connect`: the shared one if it is connected and answers, else a new one.
async fn session(connect: &str) -> Result<(Arc<Client>, bool), Cause> {
    let mut pool = SESSIONS.lock().await;
    pool.retain(|_, s| s.strong_count() > 0);
    if let Some(c) = pool.get(connect).and_then(Weak::upgrade) {
        // A quick read proves the session is served (its state alone can be stale when its
        // connection was just cut).
        if c.state() == SessionState::SyncConnected && matches!(tokio::time::timeout(Duration::from_secs(2), c.check_stat("/")).await, Ok(Ok(_))) {
            return Ok((c, true));
        }
    }
    let c = match tokio::time::timeout(CONNECT_TIMEOUT, Client::connector().with_session_timeout(SESSION_TIMEOUT).with_fail_eagerly().connect(connect)).await {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => return Err(Cause::new(e)),
        Err(_) => return Err(Cause::msg(format!("no session within {CONNECT_TIMEOUT:?}"))),
    };
    pool.insert(connect.to_owned(), Arc::downgrade(&c));
    Ok((c, false))
}

/// How a source follows the path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Child watches: every change is followed as it happens. After a change, the next listing
    /// waits until `jitter` has passed since the previous one (Synapse's `discovery_jitter`),
    /// which coalesces bursts.
    Watch { jitter: Option<Duration> },
    /// No watches: the children are listed every `interval` (Synapse's `zookeeper_poll`).
    Poll { interval: Duration },
}

/// What one source reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The client's connect string: `host:port,host:port[/chroot]`.
    pub connect: String,
    /// The registration path (below the chroot).
    pub path: String,
    pub format: Format,
    pub mode: Mode,
}

/// The source of one service. Each [`open`](Self::open) reads the path afresh on a live
/// session; the source remembers across openings what it last reported, so a ZooKeeper that
/// stays down is reported once, not at every retry.
#[derive(Debug, Clone)]
pub struct ZookeeperSource {
    settings: Arc<Settings>,
    last_problem: Arc<Mutex<Option<String>>>,
}

impl ZookeeperSource {
    pub fn new(settings: Settings) -> Self {
        Self { settings: Arc::new(settings), last_problem: Arc::default() }
    }

    /// Where problems come from, as they are reported: `zookeeper <connect string>`.
    pub fn origin(&self) -> String {
        format!("zookeeper {}", self.settings.connect)
    }

    /// A new opening's stream: a `Reset`, then updates; it ends when the session or its
    /// connection is lost. Dropping it releases the session (closed once no source uses it).
    pub fn open(&self) -> UpdateStream {
        let (tx, rx) = mpsc::channel(64);
        let run = Run { s: self.settings.clone(), origin: self.origin(), last_problem: self.last_problem.clone(), members: Members::default(), told: None, path_missing: false, data_watches: FuturesUnordered::new(), tx };
        // The opening is driven by polling the stream itself (the client's connection task ends
        // with its session): nothing to leak.
        let driver = futures::stream::once(run.run()).filter_map(|()| async { None });
        Box::pin(futures::stream::select(rx, driver))
    }
}

/// Why an opening stops.
enum Stop {
    /// The receiver is gone.
    Closed,
    /// The session or its connection is lost (or ZooKeeper refused a read): report, then end.
    Lost(SourceError),
}

/// What woke a watch.
enum Fired {
    /// The path's children changed, or the path was created or deleted: list again.
    Children,
    /// This child's data changed: read it again.
    Data(String),
}

/// The state of one opening.
struct Run {
    s: Arc<Settings>,
    origin: String,
    last_problem: Arc<Mutex<Option<String>>>,
    /// The children read so far, with their records.
    members: Members,
    /// What the store was told in this opening (`None` before the first `Reset`).
    told: Option<BTreeMap<String, Discovered>>,
    /// The path was found missing (and that was logged).
    path_missing: bool,
    /// In watch mode, the data watch of each child read (a registry may rewrite a node in
    /// place, as Nerve does when an instance's weight changes): each yields the child's name
    /// and what happened.
    data_watches: FuturesUnordered<BoxFuture<'static, (String, WatchedEvent)>>,
    tx: mpsc::Sender<Result<Update, SourceError>>,
}

fn lost_state(origin: &str, state: SessionState) -> SourceError {
    let what = match state {
        SessionState::Expired => "the session expired",
        SessionState::AuthFailed => "authentication failed",
        SessionState::Closed => "the client was closed",
        _ => "the connection was lost",
    };
    SourceError::Unreachable { origin: origin.to_owned(), cause: Cause::msg(what) }
}

impl Run {
    async fn run(mut self) {
        let client = match session(&self.s.connect).await {
            Ok((c, shared)) => {
                debug!(origin = %self.origin, session = %c.session_id(), timeout_ms = c.session_timeout().as_millis() as u64, shared, "ZooKeeper session.");
                c
            }
            Err(cause) => {
                let e = SourceError::Unreachable { origin: self.origin.clone(), cause };
                return self.fail(e).await;
            }
        };
        let mut state = client.state_watcher();
        let outcome = match self.s.mode {
            Mode::Watch { jitter } => self.watch(&client, &mut state, jitter).await,
            Mode::Poll { interval } => self.poll(&client, &mut state, interval).await,
        };
        match outcome {
            Stop::Closed => {}
            Stop::Lost(e) => self.fail(e).await,
        }
    }

    fn child_path(&self, child: &str) -> String {
        if self.s.path == "/" {
            format!("/{child}")
        } else {
            format!("{}/{child}", self.s.path)
        }
    }

    fn failed(&self, what: &str, e: zookeeper_client::Error) -> Stop {
        use zookeeper_client::Error as E;
        Stop::Lost(match e {
            E::ConnectionLoss | E::SessionExpired | E::Timeout | E::NoHosts | E::ClientClosed | E::SessionMoved => SourceError::unreachable(self.origin.clone(), e),
            other => SourceError::failed_with(self.origin.clone(), format!("{what} {:?}", self.s.path), other),
        })
    }

    /// Follow the path with child watches until the session is lost.
    async fn watch(&mut self, client: &Client, state: &mut StateWatcher, jitter: Option<Duration>) -> Stop {
        let mut last_listing: Option<Instant> = None;
        loop {
            if let (Some(jitter), Some(at)) = (jitter, last_listing) {
                let wait = (at + jitter).saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    debug!(origin = %self.origin, wait_ms = wait.as_millis() as u64, "Waiting for discovery_jitter before listing again.");
                    if let Err(stop) = self.sleep(state, wait).await {
                        return stop;
                    }
                }
            }
            last_listing = Some(Instant::now());
            let watcher = match client.list_and_watch_children(&self.s.path).await {
                Ok((children, watcher)) => {
                    if let Err(stop) = self.sync(client, &children).await {
                        return stop;
                    }
                    watcher
                }
                Err(zookeeper_client::Error::NoNode) => match client.check_and_watch_stat(&self.s.path).await {
                    // Created in between: list it.
                    Ok((Some(_), _)) => continue,
                    Ok((None, watcher)) => {
                        if let Err(stop) = self.missing().await {
                            return stop;
                        }
                        watcher
                    }
                    Err(e) => return self.failed("watching", e),
                },
                Err(e) => return self.failed("listing", e),
            };
            // Until the children change (or the path is created or deleted), follow the data of
            // the children read.
            let fired = watcher.changed();
            tokio::pin!(fired);
            loop {
                match self.wait(state, &mut fired).await {
                    Ok(Fired::Children) => break,
                    Ok(Fired::Data(child)) => {
                        if let Err(stop) = self.reread(client, child).await {
                            return stop;
                        }
                    }
                    Err(stop) => return stop,
                }
            }
        }
    }

    /// List the path every `interval` until the session is lost. The first wait is a random
    /// part of the interval, so that many hosts started together spread their reads.
    async fn poll(&mut self, client: &Client, state: &mut StateWatcher, interval: Duration) -> Stop {
        let mut wait = interval.mul_f64(rand::random::<f64>());
        loop {
            let listed = match client.list_children(&self.s.path).await {
                Ok(children) => self.sync(client, &children).await,
                Err(zookeeper_client::Error::NoNode) => self.missing().await,
                Err(e) => return self.failed("listing", e),
            };
            if let Err(stop) = listed {
                return stop;
            }
            if let Err(stop) = self.sleep(state, wait).await {
                return stop;
            }
            wait = interval;
        }
    }

    /// Wait for the children watch (`children`) or a data watch to fire, unless the session is
    /// lost first.
    async fn wait(&mut self, state: &mut StateWatcher, children: &mut (impl std::future::Future<Output = WatchedEvent> + Unpin)) -> Result<Fired, Stop> {
        loop {
            tokio::select! {
                ev = &mut *children => {
                    return if ev.event_type == EventType::Session {
                        Err(Stop::Lost(lost_state(&self.origin, ev.session_state)))
                    } else {
                        debug!(origin = %self.origin, event = %ev.event_type, "Watch fired.");
                        Ok(Fired::Children)
                    };
                }
                Some((child, ev)) = self.data_watches.next(), if !self.data_watches.is_empty() => match ev.event_type {
                    EventType::NodeDataChanged if self.members.contains(&child) => return Ok(Fired::Data(child)),
                    // Deleted: the children watch says so, unless it was replaced by a node of
                    // the same name in one transaction (an announcer's new session taking over
                    // its previous session's node), which a listing cannot tell from no change.
                    // Read it again: gone (nothing to do), or the new node's data.
                    EventType::NodeDeleted if self.members.contains(&child) => return Ok(Fired::Data(child)),
                    EventType::Session => return Err(Stop::Lost(lost_state(&self.origin, ev.session_state))),
                    // No longer listed.
                    _ => {}
                },
                s = state.changed() => {
                    if s != SessionState::SyncConnected {
                        return Err(Stop::Lost(lost_state(&self.origin, s)));
                    }
                }
            }
        }
    }

    /// Read a child's data, with a data watch in watch mode.
    async fn read(&mut self, client: &Client, child: String) -> (String, Result<Vec<u8>, zookeeper_client::Error>) {
        let path = self.child_path(&child);
        if matches!(self.s.mode, Mode::Watch { .. }) {
            match client.get_and_watch_data(&path).await {
                Ok((data, _, watcher)) => {
                    self.data_watches.push(watcher.changed().map(move |ev| (child, ev)).boxed());
                    (path, Ok(data))
                }
                Err(e) => (path, Err(e)),
            }
        } else {
            let r = client.get_data(&path).await.map(|(data, _)| data);
            (path, r)
        }
    }

    /// A child's data changed, or it was deleted (and perhaps created again): read it again and
    /// tell the store.
    async fn reread(&mut self, client: &Client, child: String) -> Result<(), Stop> {
        let (path, r) = self.read(client, child.clone()).await;
        debug!(origin = %self.origin, node = ?path, "A node's data changed.");
        match r {
            Ok(data) => self.record(child, &path, &data).await?,
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(self.failed("reading a node under", e)),
        }
        self.publish().await
    }

    /// Decode one child's data into the members; a malformed node is reported.
    async fn record(&mut self, child: String, path: &str, data: &[u8]) -> Result<(), Stop> {
        match decode(&self.s.format, data) {
            Ok(Instance::Up(d)) => self.members.insert(child, Some(d)),
            Ok(Instance::NotAlive { status }) => {
                debug!(origin = %self.origin, node = ?path, status = ?status, "Not routed: the member is not alive.");
                self.members.insert(child, None);
            }
            Err(why) => {
                self.members.insert(child, None);
                self.send(Err(SourceError::entry(self.origin.clone(), format!("node {path:?}"), why))).await?;
            }
        }
        Ok(())
    }

    /// Sleep, unless the session is lost first.
    async fn sleep(&mut self, state: &mut StateWatcher, d: Duration) -> Result<(), Stop> {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return Ok(()),
                s = state.changed() => {
                    if s != SessionState::SyncConnected {
                        return Err(Stop::Lost(lost_state(&self.origin, s)));
                    }
                }
            }
        }
    }

    /// The path lists `children`: forget the ones gone, read the new ones, tell the store.
    async fn sync(&mut self, client: &Client, children: &[String]) -> Result<(), Stop> {
        if std::mem::take(&mut self.path_missing) {
            info!(origin = %self.origin, path = %self.s.path, "The path exists now.");
        }
        let new = self.members.retain_listed(children);
        let started = Instant::now();
        let reads = new.len();
        let watch_data = matches!(self.s.mode, Mode::Watch { .. });
        let paths: Vec<(String, String)> = new.into_iter().map(|c| (self.child_path(&c), c)).collect();
        let mut read: Vec<_> = futures::stream::iter(paths)
            .map(|(path, child)| async move {
                let r = if watch_data {
                    client.get_and_watch_data(&path).await.map(|(data, _, w)| (data, Some(w)))
                } else {
                    client.get_data(&path).await.map(|(data, _)| (data, None))
                };
                (child, path, r)
            })
            .buffer_unordered(READS_IN_FLIGHT)
            .collect()
            .await;
        read.sort_by(|a, b| a.0.cmp(&b.0));
        for (child, path, r) in read {
            match r {
                Ok((data, watcher)) => {
                    if let Some(w) = watcher {
                        let c = child.clone();
                        self.data_watches.push(w.changed().map(move |ev| (c, ev)).boxed());
                    }
                    self.record(child, &path, &data).await?;
                }
                // Deleted since it was listed: the next child event says so.
                Err(zookeeper_client::Error::NoNode) => {}
                Err(e) => return Err(self.failed("reading a node under", e)),
            }
        }
        if reads > 0 {
            debug!(origin = %self.origin, children = children.len(), read = reads, elapsed_ms = started.elapsed().as_millis() as u64, "Read new children.");
        }
        self.publish().await
    }

    /// The path does not exist: the service has no backends from here until it is created.
    async fn missing(&mut self) -> Result<(), Stop> {
        if !self.path_missing {
            warn!(origin = %self.origin, path = %self.s.path, "The path does not exist; the service has no instances here until it is created.");
            self.path_missing = true;
        }
        self.members.clear();
        self.publish().await
    }

    /// Tell the store what changed since it was last told: a `Reset` first in each opening.
    async fn publish(&mut self) -> Result<(), Stop> {
        let now = self.members.records();
        match self.told.take() {
            None => {
                self.send(Ok(Update::Reset(now.values().cloned().collect()))).await?;
                if self.last_problem.lock().map(|mut p| p.take()).ok().flatten().is_some() {
                    info!(origin = %self.origin, "ZooKeeper reachable again.");
                }
            }
            Some(old) => {
                for u in changes(&old, &now) {
                    self.send(Ok(u)).await?;
                }
            }
        }
        self.told = Some(now);
        Ok(())
    }

    async fn send(&mut self, item: Result<Update, SourceError>) -> Result<(), Stop> {
        self.tx.send(item).await.map_err(|_| Stop::Closed)
    }

    /// Report a lost session unless it is what was reported last (a ZooKeeper that stays down
    /// is reported once), and end the stream.
    async fn fail(mut self, e: SourceError) {
        let text = e.report();
        let fresh = self.last_problem.lock().map(|mut p| p.replace(text.clone()).as_deref() != Some(text.as_str())).unwrap_or(true);
        if fresh {
            let _ = self.tx.send(Err(e)).await;
        } else {
            debug!("{text}");
        }
    }
}
