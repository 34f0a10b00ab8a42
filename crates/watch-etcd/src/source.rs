//! One opening: connect to a member, read the prefix, watch it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, GetResponse, WatchOptions, WatchStream};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use myelin_core::Update;
use myelin_source::{Cause, SourceError, UpdateStream};
use tracing::{debug, info};

use crate::instances::{Instances, Rejected};
use crate::{Endpoint, Settings};

/// HTTP/2 pings on the watch's connection find a member that stopped answering (a partition,
/// a stopped process). etcd refuses pings more often than every 5 s by default.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest read or watch response accepted (gRPC's default, 4 MiB, is a prefix of about
/// 20,000 instances).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How to connect to a member (timeouts, HTTP/2 pings, credentials, TLS).
pub(crate) fn connect_options(s: &Settings) -> Result<ConnectOptions, SourceError> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(s.timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(false)
        // A member without a leader fails reads and ends watches ("no leader"), so myelin
        // moves to a member that is part of the quorum.
        .with_require_leader(true)
        .with_auto_token_refresh(true);
    if let Some((user, password)) = &s.user {
        o = o.with_user(user.clone(), password.0.clone());
    }
    if let Some(t) = &s.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| SourceError::failed_with("etcd", "TLS settings", FileError { path: p.display().to_string(), source }))
        };
        let mut tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(&t.ca_file)?));
        if let (Some(c), Some(k)) = (&t.cert_file, &t.key_file) {
            tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
        }
        if let Some(name) = &t.server_name {
            tls = tls.domain_name(name.clone());
        }
        o = o.with_tls(tls);
    }
    Ok(o)
}

/// The source of one service's prefix. Each [`open`](Self::open) is one connection; the source
/// remembers across openings which member to try first and the highest revision it has seen.
#[derive(Debug, Clone)]
pub struct EtcdSource {
    settings: Arc<Settings>,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The member to try first: the one that last worked, or the one after a member that failed.
    next: usize,
    /// The highest revision read or watched, so a read from a member that lags behind an
    /// earlier one is not taken (it would briefly bring back what is gone).
    revision: i64,
    /// The last failure reported, so a cluster that stays down is reported once.
    problem: Option<String>,
}

impl EtcdSource {
    pub fn new(settings: Settings) -> Self {
        Self { settings: Arc::new(settings), shared: Arc::default() }
    }

    /// A new connection's stream: a `Reset`, then updates; it ends when the connection or the
    /// watch is lost. Dropping it closes the connection.
    pub fn open(&self) -> UpdateStream {
        let (tx, rx) = mpsc::channel(256);
        let run = Run { settings: self.settings.clone(), shared: self.shared.clone(), tx, instances: Instances::default() };
        // The connection is driven by polling the stream itself: no task to leak.
        let driver = futures::stream::once(run.run()).filter_map(|()| async { None });
        Box::pin(futures::stream::select(rx, driver))
    }
}

struct Run {
    settings: Arc<Settings>,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::Sender<Result<Update, SourceError>>,
    instances: Instances,
}

/// The receiver is gone: stop.
struct Closed;

/// Why an opening ends.
enum End {
    Closed,
    Failed(SourceError),
}

impl From<Closed> for End {
    fn from(_: Closed) -> Self {
        End::Closed
    }
}

pub(crate) fn origin(ep: &Endpoint) -> String {
    format!("etcd {ep}")
}

/// A failure of a request to a member, as a [`SourceError`]: a member that cannot be reached
/// (or has no leader) is `Unreachable`; one that refuses (authentication, permission) is
/// `Failed` with what it said.
pub(crate) fn classify(ep: &Endpoint, what: &str, e: etcd_client::Error) -> SourceError {
    use etcd_client::Error as E;
    use tonic::Code;
    let unreachable = |text: String| SourceError::Unreachable { origin: origin(ep), cause: Cause::msg(text) };
    match &e {
        E::GRpcStatus(s) => match s.code() {
            Code::Unauthenticated | Code::InvalidArgument if is_auth(s.message()) => {
                SourceError::failed(origin(ep), format!("authentication failed: {}", s.message()))
            }
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => unreachable(describe(s)),
            Code::PermissionDenied => SourceError::failed(origin(ep), format!("{what}: permission denied: {}", s.message())),
            _ => SourceError::failed(origin(ep), format!("{what}: {} ({:?})", s.message(), s.code())),
        },
        E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) => SourceError::failed_with(origin(ep), what.to_owned(), e),
        E::TransportError(t) => unreachable(chain(t)),
        _ => SourceError::unreachable(origin(ep), e),
    }
}

/// A gRPC status as an operator reads it: its message, then the causes under it (e.g.
/// "tcp connect error: Connection refused (os error 111)"), without Debug dumps.
fn describe(s: &tonic::Status) -> String {
    let mut out = s.message().to_owned();
    let mut next = std::error::Error::source(s);
    while let Some(c) = next {
        let t = c.to_string();
        if !out.contains(&t) {
            out = if out.is_empty() { t } else { format!("{out}: {t}") };
        }
        next = c.source();
    }
    out
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let t = c.to_string();
        if !out.contains(&t) {
            out = format!("{out}: {t}");
        }
        next = c.source();
    }
    out
}

fn is_auth(message: &str) -> bool {
    message.contains("authentication failed") || message.contains("invalid auth token") || message.contains("user name is empty")
}

#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
pub(crate) struct TimedOut(pub(crate) Duration);

#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
struct FileError {
    path: String,
    source: std::io::Error,
}

impl Run {
    async fn run(mut self) {
        match self.serve().await {
            Ok(()) | Err(End::Closed) => {}
            Err(End::Failed(e)) => {
                let text = e.report();
                let fresh = self.shared.lock().map(|mut s| s.problem.replace(text.clone()).as_deref() != Some(text.as_str())).unwrap_or(true);
                if fresh {
                    let _ = self.tx.send(Err(e)).await;
                } else {
                    debug!(problem = ?text, "etcd still unavailable.");
                }
            }
        }
    }

    fn options(&self) -> Result<ConnectOptions, SourceError> {
        connect_options(&self.settings)
    }

    /// Connect to the first member that answers a read of the prefix, starting with the one
    /// that last worked.
    async fn connect(&mut self) -> Result<(Client, usize, GetResponse), End> {
        let options = self.options().map_err(End::Failed)?;
        let n = self.settings.endpoints.len();
        let first = self.shared.lock().map(|s| s.next).unwrap_or(0) % n;
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let ep = &self.settings.endpoints[i];
            let attempt = async {
                let client = Client::connect([ep.url()], Some(options.clone())).await.map_err(|e| classify(ep, "connecting", e))?;
                let read = self.read(&client, ep).await?;
                Ok::<_, SourceError>((client, read))
            };
            match attempt.await {
                Ok((client, read)) => {
                    if let Ok(mut s) = self.shared.lock() {
                        s.next = i;
                    }
                    return Ok((client, i, read));
                }
                Err(e) => {
                    debug!(endpoint = %ep, problem = ?e.report(), "etcd member unavailable.");
                    failures.push(e);
                }
            }
        }
        // Report one failure: a refusal (authentication, permission) over an unreachable member.
        let pick = failures.iter().position(|e| matches!(e, SourceError::Failed { .. })).unwrap_or(failures.len() - 1);
        let e = failures.swap_remove(pick);
        Err(End::Failed(if n > 1 && !matches!(e, SourceError::Failed { .. }) {
            SourceError::failed_with(format!("etcd ({n} members)"), "no member answered", e)
        } else {
            e
        }))
    }

    /// A serializable read of the prefix (the member's own copy, no round trip to the leader),
    /// unless it lags behind a revision already seen: then a linearizable one.
    async fn read(&self, client: &Client, ep: &Endpoint) -> Result<GetResponse, SourceError> {
        let seen = self.shared.lock().map(|s| s.revision).unwrap_or(0);
        let resp = self.get(client, ep, true).await?;
        if revision(&resp) >= seen {
            return Ok(resp);
        }
        debug!(endpoint = %ep, revision = revision(&resp), seen, "etcd member lags; reading through the leader.");
        self.get(client, ep, false).await
    }

    async fn get(&self, client: &Client, ep: &Endpoint, serializable: bool) -> Result<GetResponse, SourceError> {
        let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let mut opts = GetOptions::new().with_prefix();
        if serializable {
            opts = opts.with_serializable();
        }
        match tokio::time::timeout(self.settings.timeout, kv.get(self.settings.prefix.as_bytes(), Some(opts))).await {
            Ok(r) => r.map_err(|e| classify(ep, "reading", e)),
            Err(_) => Err(SourceError::unreachable(origin(ep), TimedOut(self.settings.timeout))),
        }
    }

    async fn send(&mut self, item: Result<Update, SourceError>) -> Result<(), Closed> {
        self.tx.send(item).await.map_err(|_| Closed)
    }

    async fn reject(&mut self, ep: &Endpoint, r: Rejected) -> Result<(), Closed> {
        let key = String::from_utf8_lossy(&r.key).into_owned();
        debug!(endpoint = %ep, key = ?key, reason = %r.error, "Skipping a malformed etcd registration.");
        self.send(Err(SourceError::entry(origin(ep), format!("key {key:?}"), r.error))).await
    }

    async fn serve(&mut self) -> Result<(), End> {
        let (mut client, i, mut read) = self.connect().await?;
        let ep = self.settings.endpoints[i].clone();
        let reconnected = self.shared.lock().map(|mut s| s.problem.take()).ok().flatten().is_some();
        if reconnected {
            info!(endpoint = %ep, "etcd reachable again.");
        }
        let result = self.follow(&mut client, &ep, &mut read).await;
        if let Err(End::Failed(_)) = &result {
            // Start the next opening with another member.
            if let Ok(mut s) = self.shared.lock() {
                s.next = (i + 1) % self.settings.endpoints.len();
            }
        }
        result
    }

    /// Yield the read as a `Reset`, then watch from the revision after it; after a compaction,
    /// read and watch again.
    async fn follow(&mut self, client: &mut Client, ep: &Endpoint, read: &mut GetResponse) -> Result<(), End> {
        loop {
            let rev = revision(read);
            let (all, rejected) = self.instances.reset(read.kvs().iter().map(|kv| (kv.key(), kv.value())));
            for r in rejected {
                self.reject(ep, r).await?;
            }
            debug!(endpoint = %ep, prefix = ?self.settings.prefix, revision = rev, instances = all.len(), "Read the etcd prefix.");
            self.seen(rev);
            self.send(Ok(Update::Reset(all))).await?;

            let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1).with_progress_notify();
            let watch = tokio::time::timeout(self.settings.timeout, client.watch_client().max_decoding_message_size(MAX_MESSAGE).watch(self.settings.prefix.as_bytes(), Some(opts))).await;
            let mut stream = match watch {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(End::Failed(classify(ep, "watching", e))),
                Err(_) => return Err(End::Failed(SourceError::unreachable(origin(ep), TimedOut(self.settings.timeout)))),
            };
            match self.watch(ep, &mut stream).await? {
                Compacted(c) => {
                    info!(endpoint = %ep, prefix = ?self.settings.prefix, watched_from = rev + 1, compacted = c, "etcd compacted past the watch revision; reading the prefix again.");
                    *read = self.read(client, ep).await.map_err(End::Failed)?;
                }
            }
        }
    }

    /// Follow one watch until it fails (an error) or must start again (a compaction).
    async fn watch(&mut self, ep: &Endpoint, stream: &mut WatchStream) -> Result<Compacted, End> {
        loop {
            let resp = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(End::Failed(SourceError::failed(origin(ep), "the watch stream ended"))),
                Err(e) => return Err(End::Failed(classify(ep, "watching", e))),
            };
            if resp.compact_revision() > 0 {
                return Ok(Compacted(resp.compact_revision()));
            }
            if resp.canceled() {
                let why = if resp.cancel_reason().is_empty() { "no reason given" } else { resp.cancel_reason() };
                return Err(End::Failed(SourceError::failed(origin(ep), format!("the watch was cancelled: {why}"))));
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let updates = match ev.event_type() {
                    EventType::Put => {
                        let (updates, rejected) = self.instances.put(kv.key(), kv.value());
                        if let Some(r) = rejected {
                            self.reject(ep, r).await?;
                        }
                        updates
                    }
                    EventType::Delete => self.instances.delete(kv.key()),
                };
                for u in updates {
                    self.send(Ok(u)).await?;
                }
            }
            if let Some(h) = resp.header() {
                self.seen(h.revision());
            }
        }
    }

    fn seen(&self, rev: i64) {
        if let Ok(mut s) = self.shared.lock() {
            s.revision = s.revision.max(rev);
        }
    }
}

/// The watch's start revision was compacted (this is the compaction revision).
struct Compacted(i64);

fn revision(r: &GetResponse) -> i64 {
    r.header().map_or(0, |h| h.revision())
}
