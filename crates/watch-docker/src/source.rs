//! One engine's update stream: connect, subscribe to events, list, then follow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use bollard::Docker;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use myelin_source::{Cause, Discovered, SourceError, Update, UpdateStream};
use tracing::{debug, info};

use crate::payload::{backend_key, classify, verdict, Action, Verdict};
use crate::{Endpoint, Settings};

/// Seconds before a request to the engine (not the events stream) is given up.
const REQUEST_TIMEOUT: u64 = 10;
/// How far back the events stream replays, to cover what happened while it was being opened
/// (replayed events are harmless: each one is checked against the container's current state).
const REPLAY: Duration = Duration::from_secs(2);
/// A container that got a terminating signal stays out of rotation until it dies or starts
/// again, but no longer than this (a container that ignores the signal comes back).
const STOPPING_TTL: Duration = Duration::from_secs(120);

/// The source of one engine for one service. Each [`open`](Self::open) is one connection; the
/// source remembers across openings what it last reported, so an engine that stays down is
/// reported once, not at every retry.
#[derive(Debug, Clone)]
pub struct DockerSource {
    endpoint: Endpoint,
    settings: Arc<Settings>,
    last_problem: Arc<Mutex<Option<String>>>,
}

impl DockerSource {
    pub fn new(endpoint: Endpoint, settings: Settings) -> Self {
        Self { endpoint, settings: Arc::new(settings), last_problem: Arc::default() }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A new connection's stream: a `Reset`, then updates; it ends when the engine goes away.
    /// Dropping it closes the connection.
    pub fn open(&self) -> UpdateStream {
        let (tx, rx) = mpsc::channel(64);
        let run = Run {
            endpoint: self.endpoint.clone(),
            settings: self.settings.clone(),
            last_problem: self.last_problem.clone(),
            stopping: HashMap::new(),
            reported: HashMap::new(),
            tx,
        };
        // The connection is driven by polling the stream itself: no task to leak.
        let driver = futures::stream::once(run.run()).filter_map(|()| async { None });
        Box::pin(futures::stream::select(rx, driver))
    }
}

fn client(ep: &Endpoint) -> Result<Docker, bollard::errors::Error> {
    let v = bollard::API_DEFAULT_VERSION;
    match ep {
        Endpoint::Local { socket } => Docker::connect_with_unix(&socket.to_string_lossy(), REQUEST_TIMEOUT, v),
        Endpoint::Tcp { host, port, cert_path, .. } => {
            let host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
            let addr = format!("tcp://{host}:{port}");
            match cert_path {
                None => Docker::connect_with_http(&addr, REQUEST_TIMEOUT, v),
                Some(dir) => Docker::connect_with_ssl(&addr, &dir.join("key.pem"), &dir.join("cert.pem"), &dir.join("ca.pem"), REQUEST_TIMEOUT, v),
            }
        }
    }
}

/// `bollard`'s error as the cause of a [`SourceError`]: the engine's own message for an error
/// reply, else the error itself (with its chain).
fn cause(e: bollard::errors::Error) -> Cause {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => Cause::msg(format!("{message} (HTTP {status_code})")),
        other => Cause::new(other),
    }
}

fn origin(ep: &Endpoint) -> String {
    format!("docker engine {ep}")
}

fn unreachable(ep: &Endpoint, e: bollard::errors::Error) -> SourceError {
    SourceError::Unreachable { origin: origin(ep), cause: cause(e) }
}

fn failed(ep: &Endpoint, what: impl Into<String>, e: Option<bollard::errors::Error>) -> SourceError {
    SourceError::Failed { origin: origin(ep), what: what.into(), cause: e.map(cause) }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// The state of one connection.
struct Run {
    endpoint: Endpoint,
    settings: Arc<Settings>,
    last_problem: Arc<Mutex<Option<String>>>,
    /// Containers that got a terminating signal, and when.
    stopping: HashMap<String, Instant>,
    /// Problems reported per backend key, so a resync does not repeat them.
    reported: HashMap<String, String>,
    tx: mpsc::Sender<Result<Update, SourceError>>,
}

/// The receiver is gone: stop.
struct Closed;

impl Run {
    async fn run(mut self) {
        let ep = self.endpoint.clone();
        let docker = match client(&ep) {
            Ok(d) => d,
            Err(e) => return self.fail(unreachable(&ep, e)).await,
        };
        let docker = match docker.negotiate_version().await {
            Ok(d) => d,
            Err(e) => return self.fail(unreachable(&ep, e)).await,
        };
        let since = SystemTime::now().checked_sub(REPLAY).unwrap_or(UNIX_EPOCH).duration_since(UNIX_EPOCH).unwrap_or_default();
        let options = EventsOptions {
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            until: None,
            filters: Some([("type".to_owned(), vec!["container".to_owned()])].into()),
        };
        let mut events = docker.events(Some(options)).fuse();

        // Subscribe first (the events request goes out as the list starts), keep what arrives
        // while listing, apply it after the list.
        let mut early = Vec::new();
        let first = {
            let listing = self.list(&docker);
            futures::pin_mut!(listing);
            loop {
                tokio::select! {
                    biased;
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => early.push(ev),
                        Some(Err(e)) => break Err(failed(&ep, "events stream failed", Some(e))),
                        None => break Err(failed(&ep, "events stream closed", None)),
                    },
                    r = &mut listing => break r,
                }
            }
        };
        let (all, problems) = match first {
            Ok(x) => x,
            Err(e) => return self.fail(e).await,
        };
        if self.last_problem.lock().map(|mut p| p.take()).ok().flatten().is_some() {
            info!(endpoint = %ep, "Docker engine reachable again.");
        }
        debug!(endpoint = %ep, containers = all.len(), replayed = early.len(), "Listed the engine's containers.");
        for p in problems {
            if self.send(Err(p)).await.is_err() {
                return;
            }
        }
        if self.send(Ok(Update::Reset(all))).await.is_err() {
            return;
        }
        for ev in early {
            match self.event(&docker, ev).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return self.fail(e).await,
                Err(Closed) => return,
            }
        }

        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + self.settings.resync, self.settings.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let outcome = tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(ev)) => self.event(&docker, ev).await,
                    Some(Err(e)) => Ok(Err(failed(&ep, "events stream failed", Some(e)))),
                    None => Ok(Err(failed(&ep, "events stream closed", None))),
                },
                _ = resync.tick() => match self.list(&docker).await {
                    Ok((all, problems)) => self.resync(all, problems).await,
                    Err(e) => Ok(Err(e)),
                },
            };
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return self.fail(e).await,
                Err(Closed) => return,
            }
        }
    }

    async fn send(&mut self, item: Result<Update, SourceError>) -> Result<(), Closed> {
        self.tx.send(item).await.map_err(|_| Closed)
    }

    /// The connection is lost or could not be made: report it unless it is what was reported
    /// last (an engine that stays down is reported once), and end the stream.
    async fn fail(mut self, e: SourceError) {
        let text = e.report();
        let fresh = self.last_problem.lock().map(|mut p| p.replace(text.clone()).as_deref() != Some(text.as_str())).unwrap_or(true);
        if fresh {
            let _ = self.send(Err(e)).await;
        } else {
            debug!("{text}");
        }
    }

    async fn resync(&mut self, all: Vec<Discovered>, problems: Vec<SourceError>) -> Result<Result<(), SourceError>, Closed> {
        for p in problems {
            self.send(Err(p)).await?;
        }
        self.send(Ok(Update::Reset(all))).await?;
        Ok(Ok(()))
    }

    async fn inspect(&self, docker: &Docker, id: &str) -> Result<Option<bollard::models::ContainerInspectResponse>, SourceError> {
        match docker.inspect_container(id, None::<InspectContainerOptions>).await {
            Ok(c) => Ok(Some(c)),
            // Gone in the meantime: its events follow.
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(failed(&self.endpoint, format!("inspecting container {id}"), Some(e))),
        }
    }

    /// A problem with one container, unless it was already reported.
    fn problem(&mut self, key: &str, reason: String) -> Option<SourceError> {
        if self.reported.get(key) == Some(&reason) {
            return None;
        }
        self.reported.insert(key.to_owned(), reason.clone());
        Some(SourceError::Failed { origin: origin(&self.endpoint), what: format!("container {key} is not routed"), cause: Some(Cause::msg(reason)) })
    }

    /// Every running container of the service, and the problems found on the way.
    async fn list(&mut self, docker: &Docker) -> Result<(Vec<Discovered>, Vec<SourceError>), SourceError> {
        let options = ListContainersOptions { all: false, filters: Some([("status".to_owned(), vec!["running".to_owned()])].into()), ..Default::default() };
        let summaries = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| failed(&self.endpoint, "listing containers", Some(e)))?;
        let now = Instant::now();
        self.stopping.retain(|_, at| now.duration_since(*at) < STOPPING_TTL);
        let mut all = Vec::new();
        let mut problems = Vec::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            if self.stopping.contains_key(&id) {
                continue;
            }
            // A cheap first cut on labels and name; the image is checked on the inspect answer,
            // whose `Config.Image` keeps the name the container was started with.
            let labels = s.labels.unwrap_or_default();
            let name = s.names.as_ref().and_then(|n| n.first()).cloned().unwrap_or_default();
            let sel = &self.settings.selector;
            if !sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) || sel.name_pattern.as_deref().is_some_and(|p| !crate::glob_matches(p, name.trim_start_matches('/'))) {
                continue;
            }
            let Some(c) = self.inspect(docker, &id).await? else { continue };
            match verdict(&c, &self.settings, &self.endpoint) {
                Verdict::Up(d) => {
                    self.reported.remove(&d.key());
                    all.push(d);
                }
                Verdict::Unroutable { key, reason } => problems.extend(self.problem(&key, reason)),
                Verdict::Down { key, why } => debug!(container = %key, why, "Not routed."),
                Verdict::Ignored => {}
            }
        }
        Ok((all, problems))
    }

    /// Apply one event. The outer error means stop; the inner one, a lost connection.
    async fn event(&mut self, docker: &Docker, ev: bollard::models::EventMessage) -> Result<Result<(), SourceError>, Closed> {
        let action = ev.action.clone().unwrap_or_default();
        match classify(&ev) {
            Action::Ignore => {}
            Action::Drain { id, image, name, labels, stopping } => {
                if stopping {
                    self.stopping.insert(id, Instant::now());
                } else {
                    self.stopping.remove(&id);
                }
                if self.settings.selector.matches(&image, &labels, &name) {
                    let key = backend_key(&self.endpoint, &name, &labels);
                    debug!(container = %key, action, "Taking the container out of rotation.");
                    self.reported.remove(&key);
                    self.send(Ok(Update::Remove(key))).await?;
                }
            }
            Action::Refresh { id, restart } => {
                if restart {
                    self.stopping.remove(&id);
                } else if self.stopping.contains_key(&id) {
                    return Ok(Ok(()));
                }
                return self.refresh(docker, &id, &action).await;
            }
            Action::Rename { id, image, old_name, labels } => {
                if self.settings.selector.matches(&image, &labels, &old_name) {
                    self.send(Ok(Update::Remove(backend_key(&self.endpoint, &old_name, &labels)))).await?;
                }
                if !self.stopping.contains_key(&id) {
                    return self.refresh(docker, &id, &action).await;
                }
            }
        }
        Ok(Ok(()))
    }

    async fn refresh(&mut self, docker: &Docker, id: &str, action: &str) -> Result<Result<(), SourceError>, Closed> {
        let c = match self.inspect(docker, id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(Ok(())),
            Err(e) => return Ok(Err(e)),
        };
        match verdict(&c, &self.settings, &self.endpoint) {
            Verdict::Up(d) => {
                debug!(container = %d.key(), action, "Routing the container.");
                self.reported.remove(&d.key());
                self.send(Ok(Update::Upsert(d))).await?;
            }
            Verdict::Down { key, why } => {
                debug!(container = %key, why, action, "Not routed.");
                self.send(Ok(Update::Remove(key))).await?;
            }
            Verdict::Unroutable { key, reason } => {
                if let Some(p) = self.problem(&key, reason) {
                    self.send(Err(p)).await?;
                }
                self.send(Ok(Update::Remove(key))).await?;
            }
            Verdict::Ignored => {}
        }
        Ok(Ok(()))
    }
}
