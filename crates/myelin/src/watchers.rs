//! The running watchers: one supervised task per service and partition, stamped with a
//! generation so that events a replaced watcher sent late are recognised and dropped.

use std::collections::BTreeMap;
use std::sync::Arc;

use myelin_config::{Discovery, Loaded};
use myelin_core::ServiceName;
use myelin_watch::Event;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use myelin_watch_consul::catalog::Catalog;

struct Watcher {
    discovery: Arc<Discovery>,
    generation: u64,
    /// One per partition whose set can change.
    tasks: Vec<JoinHandle<()>>,
    /// Partitions (with a task or a fixed set); none for a kind that is not supported yet.
    partitions: usize,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Default)]
pub struct Watchers {
    running: BTreeMap<ServiceName, Watcher>,
    /// The generation of the last watcher started.
    generation: u64,
}

impl Watchers {
    /// Start (or restart) the watcher of `name` as `loaded` configures it. Returns what its
    /// partitions with a fixed set say (no task runs for those): the caller handles it.
    #[must_use]
    pub fn start(&mut self, loaded: &Loaded, name: &ServiceName, tx: &mpsc::Sender<Event>) -> Vec<Event> {
        let Some(svc) = loaded.services.get(name) else { return Vec::new() };
        self.generation += 1;
        let generation = self.generation;
        let source = svc.discovery.source();
        let filters = source.label_filters();
        let (mut tasks, mut fixed) = (Vec::new(), Vec::new());
        let partitions = source.partitions(&loaded.source_context(name));
        let count = partitions.len();
        for mut p in partitions {
            match p.fixed.take() {
                Some(set) => fixed.push(myelin_watch::fixed(name, &p.name, generation, set, filters)),
                None => tasks.push(tokio::spawn(myelin_watch::supervise(name.clone(), p, generation, filters.to_vec(), tx.clone()))),
            }
        }
        self.running.insert(name.clone(), Watcher { discovery: svc.discovery.clone(), generation, tasks, partitions: count });
        fixed
    }

    /// Stop a service's watcher.
    pub fn stop(&mut self, name: &ServiceName) {
        self.running.remove(name);
    }

    pub fn stop_all(&mut self) {
        self.running.clear();
    }

    /// Whether `ev` comes from a watcher that is still running (not one since replaced or
    /// stopped).
    pub fn accepts(&self, ev: &Event) -> bool {
        self.running.get(&ev.service).is_some_and(|w| w.generation == ev.generation)
    }

    /// The services whose discovery settings differ in `new` (or that are gone from it).
    pub fn changed_in(&self, new: &Loaded) -> Vec<ServiceName> {
        self.running
            .iter()
            .filter(|(name, w)| new.services.get(*name).map(|s| &s.discovery) != Some(&w.discovery))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Services with at least one source (those of kinds not supported yet have none).
    pub fn with_sources(&self) -> impl Iterator<Item = &ServiceName> {
        self.running.iter().filter(|(_, w)| w.partitions > 0).map(|(n, _)| n)
    }
}

/// `consul_services`: a task following the tagged Consul services. Each new set is sent on
/// `tx`; a fault is logged (once while it lasts) and the catalog reopened with the supervisor's
/// backoff, the services found so far staying as they are.
pub fn watch_catalog(t: &myelin_config::ConsulServicesConfig, tx: mpsc::Sender<Catalog>) -> JoinHandle<()> {
    let source = myelin_watch_consul::CatalogSource::new(t.discovery.clone(), t.tag.clone());
    tokio::spawn(async move {
        use futures::StreamExt;
        let mut delays = myelin_watch::backoff();
        loop {
            let mut stream = source.open();
            while let Some(item) = stream.next().await {
                match item {
                    Ok(catalog) => {
                        delays = myelin_watch::backoff();
                        if tx.send(catalog).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("{}; the services found so far stay.", e.report()),
                }
            }
            tokio::time::sleep(delays.next().unwrap_or(std::time::Duration::from_secs(30))).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_core::Update;
    use myelin_watch::EventKind;

    fn loaded(yaml: &str) -> Loaded {
        myelin_config::load_str(std::path::Path::new("/etc/myelin/myelin.yaml"), yaml).unwrap()
    }

    #[tokio::test]
    async fn events_of_a_replaced_watcher_are_not_accepted() {
        let web = ServiceName::parse("web").unwrap();
        let l = loaded("services:\n  web:\n    discovery: {method: static}\nhaproxy: {do_reloads: false}\n");
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = Watchers::default();
        // `static` has a fixed set: it is returned at once, and no task sends anything.
        let first = w.start(&l, &web, &tx).pop().unwrap();
        assert!(matches!(&first.kind, EventKind::Update(Update::Reset(set)) if set.is_empty()));
        assert!(w.accepts(&first));
        assert!(w.with_sources().any(|n| *n == web));

        // SIGHUP replaces the watcher: what the old one sent is stale, the new one's is not.
        let second = w.start(&l, &web, &tx).pop().unwrap();
        assert!(!w.accepts(&first));
        assert!(w.accepts(&second));
        w.stop(&web);
        assert!(!w.accepts(&second));
        drop(w);
        drop(tx);
        assert!(rx.recv().await.is_none(), "a task ran for a fixed set");
    }

    #[tokio::test]
    async fn a_source_that_can_change_runs_in_a_task() {
        let web = ServiceName::parse("web").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "- {host: 127.0.0.1, port: 8080}\n").unwrap();
        let l = myelin_config::load_str(&dir.path().join("myelin.yaml"), "services:\n  web:\n    discovery: {method: file, path: a.yaml}\nhaproxy: {do_reloads: false}\n").unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = Watchers::default();
        assert!(w.start(&l, &web, &tx).is_empty());
        let ev = rx.recv().await.unwrap();
        assert!(matches!(&ev.kind, EventKind::Update(Update::Reset(set)) if set.len() == 1));
        assert!(w.accepts(&ev));
    }

    #[tokio::test]
    async fn changed_settings_are_found() {
        let web = ServiceName::parse("web").unwrap();
        let a = loaded("services:\n  web:\n    discovery: {method: file, path: a.yaml}\nhaproxy: {do_reloads: false}\n");
        let b = loaded("services:\n  web:\n    discovery: {method: file, path: b.yaml}\nhaproxy: {do_reloads: false}\n");
        let (tx, _rx) = mpsc::channel(16);
        let mut w = Watchers::default();
        let _ = w.start(&a, &web, &tx);
        assert!(w.changed_in(&a).is_empty());
        assert_eq!(w.changed_in(&b), [web]);
    }
}
