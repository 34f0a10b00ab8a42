use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use myelin_source::{LabelFilter, Opener, Partition, ServiceName, SourceError, Update};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// What the supervisor tells the store's owner.
#[derive(Debug, Clone)]
pub struct Event {
    pub service: ServiceName,
    pub partition: String,
    /// The generation of the watcher that sent it: events of a watcher that has since been
    /// replaced (at SIGHUP) are stale.
    pub generation: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone)]
pub enum EventKind {
    Update(Update),
    /// A problem the source reported; the service keeps its backends.
    Problem(SourceError),
    /// The source's stream ended; it is reopened after `retry_in`.
    Disconnected { retry_in: Duration },
}

/// The supervisor's reopening delays: 0.25 s doubling to 30 s, with jitter.
pub fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Keep only the records that pass the service's label filters; an `Upsert` that no longer
/// passes becomes a `Remove`.
fn filter(update: Update, filters: &[LabelFilter]) -> Update {
    if filters.is_empty() {
        return update;
    }
    let pass = |d: &myelin_source::Discovered| filters.iter().all(|f| f.matches(&d.labels));
    match update {
        Update::Reset(all) => Update::Reset(all.into_iter().filter(|d| pass(d)).collect()),
        Update::Upsert(d) if !pass(&d) => Update::Remove(d.key()),
        other => other,
    }
}

/// Run one source for ever: open it, forward what it says, reopen it with capped exponential
/// backoff and jitter when it ends. Updates before the first `Reset` of each opening are
/// dropped, so after every reconnect the store sees a complete set first. Returns when the
/// receiver is gone; cancel it by dropping (aborting) its task.
pub async fn supervise(service: ServiceName, source: Partition, generation: u64, filters: Vec<LabelFilter>, tx: mpsc::Sender<Event>) {
    let Partition { name: partition, open, .. } = source;
    let mut delays = backoff();
    let mut was_synced = false;
    loop {
        let mut stream = open();
        let mut synced = false;
        while let Some(item) = stream.next().await {
            let kind = match item {
                Ok(update) => {
                    if !synced && !matches!(update, Update::Reset(_)) {
                        debug!(%service, "Dropping an update that came before the first reset.");
                        continue;
                    }
                    if !synced {
                        synced = true;
                        delays = backoff();
                        if !was_synced {
                            info!(%service, partition, "Source synced.");
                        }
                        was_synced = true;
                    }
                    EventKind::Update(filter(update, &filters))
                }
                Err(e) => EventKind::Problem(e),
            };
            if tx.send(Event { service: service.clone(), partition: partition.clone(), generation, kind }).await.is_err() {
                return;
            }
        }
        let retry_in = delays.next().unwrap_or(Duration::from_secs(30));
        if was_synced {
            warn!(%service, partition, retry_in_ms = retry_in.as_millis() as u64, "Source disconnected; keeping the last known backends.");
        } else {
            debug!(%service, partition, retry_in_ms = retry_in.as_millis() as u64, "Source still unavailable.");
        }
        was_synced = false;
        let ev = Event { service: service.clone(), partition: partition.clone(), generation, kind: EventKind::Disconnected { retry_in } };
        if tx.send(ev).await.is_err() {
            return;
        }
        tokio::time::sleep(retry_in).await;
    }
}

/// What a partition with a fixed set ([`Partition::fixed`]) says, at once and for good: its
/// set, through the service's label filters. It needs no [`supervise`] task.
pub fn fixed(service: &ServiceName, partition: &str, generation: u64, set: Vec<myelin_source::Discovered>, filters: &[LabelFilter]) -> Event {
    debug!(%service, partition, "Source synced (a fixed set).");
    Event { service: service.clone(), partition: partition.to_owned(), generation, kind: EventKind::Update(filter(Update::Reset(set), filters)) }
}

/// Open a source once and wait for its first complete set (for `myelin render`), with the
/// problems reported on the way.
pub async fn first_sync(open: &Opener, timeout: Duration) -> Result<(Update, Vec<SourceError>), SourceError> {
    let mut stream = open();
    let mut problems = Vec::new();
    let wait = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(u @ Update::Reset(_)) => return Some(u),
                Ok(_) => {}
                Err(e) => problems.push(e),
            }
        }
        None
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Some(u)) => Ok((u, problems)),
        _ => Err(problems.pop().unwrap_or_else(|| SourceError::failed("the source", format!("no complete answer within {timeout:?}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_source::{Discovered, LabelCondition};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn reopens_with_backoff_and_starts_each_opening_with_a_reset() {
        let opens = Arc::new(AtomicUsize::new(0));
        let o = opens.clone();
        let open: Opener = Box::new(move || {
            let n = o.fetch_add(1, Ordering::SeqCst);
            let items = if n == 0 {
                vec![Ok(Update::Reset(vec![Discovered::new("127.0.0.1", 1)]))]
            } else {
                // After a reconnect this source (wrongly) starts with an upsert: it is dropped.
                vec![Ok(Update::Upsert(Discovered::new("127.0.0.1", 2))), Err(SourceError::failed("x", "broken")), Ok(Update::Reset(vec![]))]
            };
            Box::pin(futures::stream::iter(items))
        });
        let (tx, mut rx) = mpsc::channel(16);
        let svc = ServiceName::parse("web").unwrap();
        let task = tokio::spawn(supervise(svc, Partition::single(open), 7, vec![], tx));
        let events: Vec<Event> = futures::stream::poll_fn(|cx| rx.poll_recv(cx)).take(6).collect().await;
        assert!(events.iter().all(|e| e.generation == 7));
        let kinds: Vec<EventKind> = events.into_iter().map(|e| e.kind).collect();
        task.abort();
        assert!(matches!(&kinds[0], EventKind::Update(Update::Reset(v)) if v.len() == 1));
        let EventKind::Disconnected { retry_in } = kinds[1] else { panic!("{kinds:?}") };
        assert!(retry_in >= Duration::from_millis(250) && retry_in <= Duration::from_secs(1), "{retry_in:?}");
        assert!(matches!(&kinds[2], EventKind::Problem(e) if e.report() == "x: broken"), "{kinds:?}");
        assert!(matches!(&kinds[3], EventKind::Update(Update::Reset(v)) if v.is_empty()), "{kinds:?}");
        assert!(matches!(kinds[4], EventKind::Disconnected { .. }));
        assert!(opens.load(Ordering::SeqCst) >= 3);
    }

    #[test]
    fn label_filters() {
        let f = vec![LabelFilter { label: "az".into(), value: "a".into(), condition: LabelCondition::Equals }];
        let mut yes = Discovered::new("127.0.0.1", 1).named("y");
        yes.labels.insert("az".into(), "a".into());
        let no = Discovered::new("127.0.0.1", 2).named("n");
        assert_eq!(filter(Update::Reset(vec![yes.clone(), no.clone()]), &f), Update::Reset(vec![yes.clone()]));
        assert_eq!(filter(Update::Upsert(no), &f), Update::Remove("n".into()));
        assert_eq!(filter(Update::Upsert(yes.clone()), &f), Update::Upsert(yes));
    }
}
