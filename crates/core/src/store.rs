//! The service store: the one place discovery updates land. It is owned by a single task.

use std::collections::BTreeMap;

use crate::model::{Backend, Discovered, InvalidValue, ServerName, ServiceName};

/// What a discovery source reports for one service (and one partition of it, e.g. one Docker
/// host). A source starts with a `Reset` and begins with one again after every reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The complete current set.
    Reset(Vec<Discovered>),
    /// One instance appeared or changed.
    Upsert(Discovered),
    /// The instance with this key (its name, or `host:port`) is gone.
    Remove(String),
}

/// Per-service behaviour of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// When discovery reports an empty set, keep routing to the last non-empty one.
    pub use_previous_backends: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { use_previous_backends: true }
    }
}

/// A discovery record that failed validation and was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub service: ServiceName,
    pub key: String,
    pub error: InvalidValue,
}

/// What applying one update did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The effective backends of the service changed.
    pub changed: bool,
    /// Records refused by validation (to be logged and counted by the caller).
    pub rejected: Vec<Rejection>,
    /// The update would have emptied the service and the previous backends were kept.
    pub kept_previous: bool,
}

#[derive(Debug, Default)]
struct Entry {
    options: StoreOptions,
    /// Each partition's backends, sorted by partition key: a service has one or a few (one per
    /// Docker engine), and a `Vec` of one costs a tenth of a `BTreeMap` node.
    partitions: Vec<(String, BTreeMap<ServerName, Backend>)>,
    /// The last non-empty set, served while discovery reports nothing (`use_previous_backends`).
    previous: BTreeMap<ServerName, Backend>,
    synced: bool,
}

impl Entry {
    fn discovered(&self) -> BTreeMap<ServerName, Backend> {
        // Partitions are merged in key order; on a name clash the first partition wins.
        let mut out = BTreeMap::new();
        for (_, part) in &self.partitions {
            for (k, b) in part {
                out.entry(k.clone()).or_insert_with(|| b.clone());
            }
        }
        out
    }

    /// Where partition `key` is in `partitions` (`Err`: where it would go).
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.partitions.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The backends of partition `key`, an empty set added if it has none yet.
    fn partition(&mut self, key: &str) -> &mut BTreeMap<ServerName, Backend> {
        let i = match self.find(key) {
            Ok(i) => i,
            Err(i) => {
                self.partitions.reserve_exact(1);
                self.partitions.insert(i, (key.to_owned(), BTreeMap::new()));
                i
            }
        };
        &mut self.partitions[i].1
    }

    fn effective(&self) -> BTreeMap<ServerName, Backend> {
        let now = self.discovered();
        if now.is_empty() && (self.options.use_previous_backends || !self.synced) {
            self.previous.clone()
        } else {
            now
        }
    }
}

/// Backends per service, fed by [`Update`]s.
#[derive(Debug, Default)]
pub struct Store {
    services: BTreeMap<ServiceName, Entry>,
}

impl Store {
    pub fn new(services: impl IntoIterator<Item = (ServiceName, StoreOptions)>) -> Self {
        let services = services
            .into_iter()
            .map(|(name, options)| (name, Entry { options, ..Entry::default() }))
            .collect();
        Self { services }
    }

    /// Make the store serve exactly these services: new ones start empty, gone ones are dropped,
    /// the others keep their backends and take the new options.
    pub fn retain_services(&mut self, services: impl IntoIterator<Item = (ServiceName, StoreOptions)>) {
        let wanted: BTreeMap<_, _> = services.into_iter().collect();
        self.services.retain(|k, _| wanted.contains_key(k));
        for (name, options) in wanted {
            self.services.entry(name).or_default().options = options;
        }
    }

    /// Forget what a service's source said (its source is being replaced) but keep serving its
    /// current backends until the new source syncs.
    pub fn restart_service(&mut self, service: &ServiceName) {
        if let Some(e) = self.services.get_mut(service) {
            e.previous = e.effective();
            e.partitions.clear();
            e.synced = false;
        }
    }

    /// Seed a service with backends known from before (e.g. myelin's state file), used until its
    /// source has synced.
    pub fn seed(&mut self, service: &ServiceName, backends: Vec<Backend>) {
        if let Some(e) = self.services.get_mut(service) {
            if !e.synced {
                e.previous = backends.into_iter().map(|b| (b.name.clone(), b)).collect();
            }
        }
    }

    pub fn apply(&mut self, service: &ServiceName, partition: &str, update: Update) -> Applied {
        let Some(entry) = self.services.get_mut(service) else {
            return Applied::default();
        };
        let before = entry.effective();
        let mut rejected = Vec::new();
        let mut check = |d: &Discovered| match d.validate() {
            Ok(b) => Some(b),
            Err(error) => {
                rejected.push(Rejection { service: service.clone(), key: d.key(), error });
                None
            }
        };
        match update {
            Update::Reset(all) => {
                let mut set = BTreeMap::new();
                for d in &all {
                    if let Some(b) = check(d) {
                        set.insert(b.name.clone(), b);
                    }
                }
                *entry.partition(partition) = set;
                entry.synced = true;
            }
            Update::Upsert(d) => {
                if let Some(b) = check(&d) {
                    entry.partition(partition).insert(b.name.clone(), b);
                }
            }
            Update::Remove(key) => {
                let part = entry.find(partition).ok();
                if let (Some(i), Ok(name)) = (part, ServerName::parse(&key)) {
                    entry.partitions[i].1.remove(&name);
                }
            }
        }
        let discovered = entry.discovered();
        let kept_previous = discovered.is_empty() && entry.options.use_previous_backends && !entry.previous.is_empty();
        if !discovered.is_empty() {
            entry.previous = discovered;
        }
        let after = entry.effective();
        Applied { changed: before != after, rejected, kept_previous: kept_previous && before == after }
    }

    /// The backends a service routes to now.
    pub fn backends(&self, service: &ServiceName) -> BTreeMap<ServerName, Backend> {
        self.services.get(service).map(Entry::effective).unwrap_or_default()
    }

    /// Whether the service's source has delivered a complete set at least once.
    pub fn is_synced(&self, service: &ServiceName) -> bool {
        self.services.get(service).is_some_and(|e| e.synced)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceName> {
        self.services.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServiceName {
        ServiceName::parse("web").unwrap()
    }

    fn names(s: &Store) -> Vec<String> {
        s.backends(&svc()).keys().map(|k| k.to_string()).collect()
    }

    #[test]
    fn reset_upsert_remove() {
        let mut s = Store::new([(svc(), StoreOptions::default())]);
        let a = s.apply(&svc(), "", Update::Reset(vec![Discovered::new("127.0.0.1", 1).named("a")]));
        assert!(a.changed);
        assert!(s.is_synced(&svc()));
        s.apply(&svc(), "", Update::Upsert(Discovered::new("127.0.0.1", 2).named("b")));
        assert_eq!(names(&s), ["a", "b"]);
        s.apply(&svc(), "", Update::Remove("a".into()));
        assert_eq!(names(&s), ["b"]);
        let same = s.apply(&svc(), "", Update::Upsert(Discovered::new("127.0.0.1", 2).named("b")));
        assert!(!same.changed);
    }

    #[test]
    fn hostile_records_are_rejected_and_the_rest_kept() {
        let mut s = Store::new([(svc(), StoreOptions::default())]);
        let a = s.apply(
            &svc(),
            "",
            Update::Reset(vec![
                Discovered::new("127.0.0.1", 1).named("ok"),
                Discovered::new("127.0.0.1\n  server evil 127.0.0.9:1", 2).named("evil"),
                Discovered::new("127.0.0.1", 99999).named("bigport"),
                Discovered::new("127.0.0.1", 3).named("has#hash"),
            ]),
        );
        assert_eq!(a.rejected.len(), 3);
        assert_eq!(names(&s), ["ok"]);
    }

    #[test]
    fn empty_reset_keeps_previous_when_asked() {
        let mut s = Store::new([(svc(), StoreOptions { use_previous_backends: true })]);
        s.apply(&svc(), "", Update::Reset(vec![Discovered::new("127.0.0.1", 1).named("a")]));
        let a = s.apply(&svc(), "", Update::Reset(vec![]));
        assert!(a.kept_previous);
        assert!(!a.changed);
        assert_eq!(names(&s), ["a"]);
        // The stale set is not mixed with what comes next.
        s.apply(&svc(), "", Update::Upsert(Discovered::new("127.0.0.1", 2).named("b")));
        assert_eq!(names(&s), ["b"]);

        let mut s = Store::new([(svc(), StoreOptions { use_previous_backends: false })]);
        s.apply(&svc(), "", Update::Reset(vec![Discovered::new("127.0.0.1", 1).named("a")]));
        let a = s.apply(&svc(), "", Update::Remove("a".into()));
        assert!(a.changed);
        assert!(names(&s).is_empty());
    }

    #[test]
    fn partitions_are_independent() {
        let mut s = Store::new([(svc(), StoreOptions::default())]);
        s.apply(&svc(), "h1", Update::Reset(vec![Discovered::new("127.0.0.1", 1).named("a")]));
        s.apply(&svc(), "h2", Update::Reset(vec![Discovered::new("127.0.0.2", 1).named("b")]));
        s.apply(&svc(), "h1", Update::Reset(vec![]));
        assert_eq!(names(&s), ["b"]);
    }

    #[test]
    fn seeded_backends_serve_until_sync() {
        let mut s = Store::new([(svc(), StoreOptions::default())]);
        let b = Discovered::new("127.0.0.1", 1).named("old").validate().unwrap();
        s.seed(&svc(), vec![b]);
        assert_eq!(names(&s), ["old"]);
        s.apply(&svc(), "", Update::Reset(vec![Discovered::new("127.0.0.1", 2).named("new")]));
        assert_eq!(names(&s), ["new"]);
    }

    #[test]
    fn restarted_service_keeps_serving_until_the_new_source_syncs() {
        let mut s = Store::new([(svc(), StoreOptions { use_previous_backends: false })]);
        s.apply(&svc(), "old", Update::Reset(vec![Discovered::new("127.0.0.1", 1).named("a")]));
        s.restart_service(&svc());
        assert!(!s.is_synced(&svc()));
        assert_eq!(names(&s), ["a"]);
        s.apply(&svc(), "", Update::Reset(vec![Discovered::new("127.0.0.1", 2).named("b")]));
        assert_eq!(names(&s), ["b"]);
    }

    #[test]
    fn unknown_service_is_ignored() {
        let mut s = Store::new([(svc(), StoreOptions::default())]);
        let other = ServiceName::parse("other").unwrap();
        assert_eq!(s.apply(&other, "", Update::Reset(vec![])), Applied::default());
    }
}
