//! One `notify` watcher (on Linux: one inotify instance and one thread) for every file source
//! of the process.
//!
//! inotify instances are scarce (`fs.inotify.max_user_instances`, 128 per user by default, shared
//! by every process of the user): a watcher per file source ran out at about a hundred file
//! services. Here each directory is watched once, whoever needs it, and each source subscribes
//! to the names it cares about in the directories it cares about. An event wakes only the
//! sources whose names it concerns, and only if it can change what a name holds (create, write,
//! close after writing, attributes, rename, delete), never for opening, reading or closing
//! without writing: a source reading its own file does not wake itself, and files sharing a
//! directory do not wake each other.
//!
//! Locking: `watcher` (held while asking `notify` to watch or unwatch, which waits on notify's
//! thread) is always taken before `table` (taken by the event handler on notify's thread, never
//! held while calling into `notify`), so the two threads cannot wait on each other.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// A directory's identity (device and inode) as seen when it was resolved: a directory
/// replaced by another of the same path must be watched again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirId {
    pub dev: u64,
    pub ino: u64,
}

impl DirId {
    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self { dev: m.dev(), ino: m.ino() }
    }
}

/// What one source wants to hear about: names in directories.
pub type Interests = BTreeMap<PathBuf, (DirId, BTreeSet<OsString>)>;

struct Dir {
    /// The directory the watch was placed on; `None` while it has no live watch (not placed
    /// yet, or the directory was deleted or moved away, which ends its watch).
    watched: Option<DirId>,
    /// The names each subscriber cares about.
    subs: HashMap<u64, BTreeSet<OsString>>,
}

#[derive(Default)]
struct Table {
    dirs: HashMap<PathBuf, Dir>,
    wakers: HashMap<u64, Arc<Waker>>,
}

/// How a subscriber is woken: the wake, and whether an event since the last wait completed a
/// change (see [`completes_change`]).
#[derive(Default)]
struct Waker {
    notify: Notify,
    settled: AtomicBool,
}

impl Table {
    fn wake_all(&self) {
        for w in self.wakers.values() {
            w.notify.notify_one();
        }
    }

    fn dispatch(&mut self, res: notify::Result<notify::Event>) {
        let ev = match res {
            Ok(ev) => ev,
            // notify could not read events (or lost some): everyone looks again.
            Err(_) => return self.wake_all(),
        };
        if ev.need_rescan() {
            return self.wake_all();
        }
        // notify follows each rename into place (`To`) with a `Both` naming the two ends: the
        // `From` and the `To` already said all of it, and a second wake would read the file
        // again for nothing, after a quiet period.
        if !changes_content(&ev.kind) || matches!(ev.kind, EventKind::Modify(ModifyKind::Name(RenameMode::Both))) {
            return;
        }
        let settled = completes_change(&ev.kind);
        // notify drops the watches of a directory deleted or moved away, and of the directories
        // below it: they must be placed again if the path comes back.
        let ends_watch = matches!(ev.kind, EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)));
        for p in &ev.paths {
            if ends_watch && self.dirs.contains_key(p) {
                for (_, d) in self.dirs.iter_mut().filter(|(dir, _)| dir.starts_with(p)) {
                    d.watched = None;
                }
            }
            if let Some(d) = self.dirs.get(p) {
                for id in d.subs.keys() {
                    wake(&self.wakers, *id, settled);
                }
            }
            let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else { continue };
            if let Some(d) = self.dirs.get(parent) {
                for (id, names) in &d.subs {
                    if names.contains(name) {
                        wake(&self.wakers, *id, settled);
                    }
                }
            }
        }
    }
}

fn wake(wakers: &HashMap<u64, Arc<Waker>>, id: u64, settled: bool) {
    if let Some(w) = wakers.get(&id) {
        if settled {
            w.settled.store(true, Ordering::Release);
        }
        w.notify.notify_one();
    }
}

/// Whether an event ends a change: a file closed after writing, a name renamed into place (how
/// atomic writers, editors and re-pointed symlinks land), a name deleted. What it concerns can
/// be read at once; other content events (a write with the file still open) may be followed
/// by more, so readers wait for a quiet moment.
fn completes_change(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Remove(_)
    )
}

/// Whether an event can change what a name holds. Opening, reading and closing without
/// writing cannot (a source's own read raises exactly those).
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Other => true,
    }
}

/// The watcher shared by the process's file sources.
pub struct Hub {
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    table: Arc<Mutex<Table>>,
    next_id: AtomicU64,
}

/// The process's hub, made on first use; its `notify` watcher is started by the first
/// subscription that needs a directory watched.
pub fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(Hub::new)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent even if a holder panicked: every change is one step.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    fn new() -> Self {
        Self { watcher: Mutex::new(None), table: Arc::default(), next_id: AtomicU64::new(0) }
    }

    pub fn subscribe(&'static self) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Waker::default());
        lock(&self.table).wakers.insert(id, wake.clone());
        Subscription { hub: self, id, wake, current: Interests::new() }
    }

    /// Directories watched now (for tests and diagnostics).
    #[cfg(test)]
    pub fn watched(&self) -> Vec<PathBuf> {
        let t = lock(&self.table);
        let mut v: Vec<_> = t.dirs.iter().filter(|(_, d)| d.watched.is_some()).map(|(p, _)| p.clone()).collect();
        v.sort();
        v
    }
}

/// One source's place in the hub. Dropping it unsubscribes, and unwatches the directories
/// nobody else needs.
pub struct Subscription {
    hub: &'static Hub,
    id: u64,
    wake: Arc<Waker>,
    current: Interests,
}

/// Why a subscription could not be brought up to date.
#[derive(Debug)]
pub enum WatchError {
    /// The watcher cannot be started or a directory cannot be watched (e.g. inotify limits).
    Cannot(PathBuf, notify::Error),
}

impl Subscription {
    /// Wait until something this subscription cares about may have changed. A wake that came
    /// while nobody waited is kept (one), so none is lost between two waits. True when an event
    /// since the last wait completed a change ([`completes_change`]): no need to wait for more.
    pub async fn changed(&self) -> bool {
        self.wake.notify.notified().await;
        self.wake.settled.swap(false, Ordering::AcqRel)
    }

    /// Care about `want` from now on (and no longer about the rest). Returns whether every
    /// directory in `want` is watched now: `false` when one vanished before it could be
    /// watched (the caller looks at the path again).
    pub fn set(&mut self, want: &Interests) -> Result<bool, WatchError> {
        let hub = self.hub;
        let mut watcher = lock(&hub.watcher);
        for dir in self.current.keys().filter(|d| !want.contains_key(*d)) {
            leave(hub, &mut watcher, dir, self.id);
        }
        let mut complete = true;
        for (dir, (seen, names)) in want {
            let needs_watch = {
                let mut t = lock(&hub.table);
                let d = t.dirs.entry(dir.clone()).or_insert_with(|| Dir { watched: None, subs: HashMap::new() });
                d.subs.insert(self.id, names.clone());
                d.watched != Some(*seen)
            };
            if !needs_watch {
                continue;
            }
            let w = match watcher.as_mut() {
                Some(w) => w,
                None => {
                    let table = hub.table.clone();
                    let made = notify::recommended_watcher(move |res| lock(&table).dispatch(res)).map_err(|e| WatchError::Cannot(dir.clone(), e))?;
                    watcher.insert(made)
                }
            };
            // A stale watch of the same path (a directory replaced by another) goes first.
            let _ = w.unwatch(dir);
            match w.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    if let Some(d) = lock(&hub.table).dirs.get_mut(dir) {
                        d.watched = Some(*seen);
                    }
                }
                Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => complete = false,
                Err(e) if matches!(&e.kind, notify::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound) => complete = false,
                Err(e) => {
                    self.current = want.clone();
                    return Err(WatchError::Cannot(dir.clone(), e));
                }
            }
        }
        self.current = want.clone();
        Ok(complete)
    }
}

/// `id` no longer cares about `dir`; unwatch it if nobody does.
fn leave(hub: &Hub, watcher: &mut Option<notify::RecommendedWatcher>, dir: &Path, id: u64) {
    let unused = {
        let mut t = lock(&hub.table);
        let Some(d) = t.dirs.get_mut(dir) else { return };
        d.subs.remove(&id);
        let unused = d.subs.is_empty();
        if unused {
            t.dirs.remove(dir);
        }
        unused
    };
    if unused {
        if let Some(w) = watcher.as_mut() {
            // Fails harmlessly when notify already dropped the watch (directory deleted).
            let _ = w.unwatch(dir);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let hub = self.hub;
        let mut watcher = lock(&hub.watcher);
        for dir in self.current.keys() {
            leave(hub, &mut watcher, dir, self.id);
        }
        lock(&hub.table).wakers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RemoveKind};

    #[test]
    fn only_content_changes_count() {
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Read)));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(changes_content(&EventKind::Remove(RemoveKind::File)));
        assert!(completes_change(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(completes_change(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(completes_change(&EventKind::Remove(RemoveKind::File)));
        assert!(!completes_change(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(!completes_change(&EventKind::Create(CreateKind::File)));
    }

    #[test]
    fn events_wake_only_the_subscribers_of_their_name() {
        let mut t = Table::default();
        let (a, b) = (Arc::new(Waker::default()), Arc::new(Waker::default()));
        t.wakers.insert(1, a.clone());
        t.wakers.insert(2, b.clone());
        let names = |n: &str| BTreeSet::from([OsString::from(n)]);
        t.dirs.insert("/d".into(), Dir { watched: Some(DirId { dev: 1, ino: 1 }), subs: HashMap::from([(1, names("a.yaml")), (2, names("b.yaml"))]) });
        let ev = |kind, p: &str| Ok(notify::Event::new(kind).add_path(p.into()));
        let woken = |n: &Arc<Waker>| futures::FutureExt::now_or_never(n.notify.notified()).is_some();
        let settled = |n: &Arc<Waker>| n.settled.swap(false, Ordering::AcqRel);
        t.dispatch(ev(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/d/a.yaml"));
        t.dispatch(ev(EventKind::Access(AccessKind::Close(AccessMode::Read)), "/d/a.yaml"));
        assert!(!woken(&a) && !woken(&b));
        t.dispatch(ev(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "/d/b.yaml"));
        assert!(!woken(&a) && woken(&b));
        assert!(!settled(&b), "a write with the file open may be followed by more");
        t.dispatch(ev(EventKind::Access(AccessKind::Close(AccessMode::Write)), "/d/b.yaml"));
        assert!(!woken(&a) && woken(&b));
        assert!(settled(&b) && !settled(&a), "closed after writing: read at once");
        t.dispatch(ev(EventKind::Create(CreateKind::File), "/d/c.yaml"));
        assert!(!woken(&a) && !woken(&b));
        // The directory itself deleted: everyone in it looks again, and its watch is gone.
        t.dispatch(ev(EventKind::Remove(RemoveKind::Folder), "/d"));
        assert!(woken(&a) && woken(&b));
        assert_eq!(t.dirs[Path::new("/d")].watched, None);
        // Moved away: its watch and those below it are gone, not its neighbours'.
        let id = Some(DirId { dev: 1, ino: 2 });
        for dir in ["/e", "/e/sub", "/else"] {
            t.dirs.insert(dir.into(), Dir { watched: id, subs: HashMap::new() });
        }
        t.dispatch(ev(EventKind::Modify(ModifyKind::Name(RenameMode::From)), "/e"));
        let watched = |d: &str| t.dirs[Path::new(d)].watched;
        assert_eq!((watched("/e"), watched("/e/sub"), watched("/else")), (None, None, id));
    }
}
