//! One inotify instance (and one task reading it, on the daemon's tokio runtime) for every file
//! source of the process, through the `inotify` crate.
//!
//! inotify instances are scarce (`fs.inotify.max_user_instances`, 128 per user by default, shared
//! by every process of the user): a watcher per file source ran out at about a hundred file
//! services. Here each directory is watched once, whoever needs it, and each source subscribes
//! to the names it cares about in the directories it cares about.
//!
//! The watches ask the kernel only for events that can change what a name holds ([`MASK`]:
//! create, write, close after writing, attributes, rename, delete), never for opening, reading
//! or closing without writing: a source reading its own file raises nothing, and nothing wakes
//! the reader for it. An event wakes only the sources whose names it concerns, so files sharing
//! a directory do not wake each other.
//!
//! The reader is a task on the runtime of the first subscriber that needs it (the daemon has
//! one runtime, on one thread): an event wakes that thread once and the sources it concerns run
//! there, where a reading thread of its own was woken first and then woke the daemon's. So the
//! sources need a tokio runtime with I/O and time, kept running: one that stays alive but is no
//! longer driven (a runtime between two `block_on`s) holds up the events of every source.
//!
//! Locking: one mutex holds the table and the watch handle. `inotify_add_watch` and
//! `inotify_rm_watch` do not wait for the reader, so a subscriber places its watches and
//! records them in one step, and an event is never looked up between the two.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::Notify;

/// What each directory watch asks the kernel for: what can change a name's content or what it
/// points to, and the directory itself going away.
const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MODIFY)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

/// The events that end a change: a file closed after writing, a name renamed into place (how
/// atomic writers, editors and re-pointed symlinks land), a name or the directory deleted. What
/// they concern can be read at once; other content events (a write with the file still open)
/// may be followed by more, so readers wait for a quiet moment.
const COMPLETES: EventMask = EventMask::CLOSE_WRITE.union(EventMask::MOVED_TO).union(EventMask::DELETE).union(EventMask::DELETE_SELF);

/// The events that end a directory's watch, or leave it on an inode no longer at its path.
const ENDS_SELF: EventMask = EventMask::DELETE_SELF.union(EventMask::MOVE_SELF).union(EventMask::IGNORED).union(EventMask::UNMOUNT);

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

/// A watch descriptor's number, as events carry it.
type Wd = i32;

struct Dir {
    /// The directory the watch was placed on and the watch; `None` while it has no live watch
    /// (not placed yet, or the directory was deleted or moved away).
    watched: Option<(DirId, Wd)>,
    /// The names each subscriber cares about.
    subs: HashMap<u64, BTreeSet<OsString>>,
}

#[derive(Default)]
struct Table {
    dirs: HashMap<PathBuf, Dir>,
    wakers: HashMap<u64, Arc<Waker>>,
    /// The paths each watch serves (two paths of one directory share its watch) and its
    /// descriptor, to remove it.
    watches: HashMap<Wd, (WatchDescriptor, Vec<PathBuf>)>,
}

/// How a subscriber is woken: the wake, and whether an event since the last wait completed a
/// change (see [`COMPLETES`]).
#[derive(Default)]
struct Waker {
    notify: Notify,
    settled: AtomicBool,
}

/// One event as the table needs it.
struct Event<'a> {
    wd: Wd,
    mask: EventMask,
    name: Option<&'a OsStr>,
}

impl Table {
    fn wake_all(&self) {
        for w in self.wakers.values() {
            w.notify.notify_one();
        }
    }

    fn wake_dir(&self, dir: &Path, name: Option<&OsStr>, settled: bool) {
        if let Some(d) = self.dirs.get(dir) {
            for (id, names) in &d.subs {
                if name.is_none_or(|n| names.contains(n)) {
                    wake(&self.wakers, *id, settled);
                }
            }
        }
    }

    /// `dir` no longer has a live watch. Returns the watch to remove from the kernel when no
    /// other path uses it (it may still be on the directory, moved elsewhere).
    fn drop_watch(&mut self, dir: &Path) -> Option<WatchDescriptor> {
        let (_, wd) = self.dirs.get_mut(dir)?.watched.take()?;
        let (_, paths) = self.watches.get_mut(&wd)?;
        paths.retain(|p| p != dir);
        if paths.is_empty() {
            return self.watches.remove(&wd).map(|(w, _)| w);
        }
        None
    }

    /// Route one event to the subscribers it concerns. Returns the watches to remove from the
    /// kernel: those left on directories moved away from their path.
    fn dispatch(&mut self, ev: Event<'_>) -> Vec<WatchDescriptor> {
        let mut stale = Vec::new();
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost: everyone looks again.
            self.wake_all();
            return stale;
        }
        let Some((_, paths)) = self.watches.get(&ev.wd) else { return stale };
        let paths = paths.clone();
        let settled = ev.mask.intersects(COMPLETES);
        if ev.mask.intersects(ENDS_SELF) {
            // The directory itself was deleted or moved away (or its file system unmounted):
            // its subscribers look again, and it is watched again if its path comes back.
            // A moved directory keeps its watch, which is handed back to be removed; the kernel
            // ends a deleted directory's watch itself (`IGNORED` follows).
            let moved = ev.mask.contains(EventMask::MOVE_SELF);
            for p in &paths {
                let ended = self.drop_watch(p);
                stale.extend(ended.filter(|_| moved));
                self.wake_dir(p, None, true);
            }
            return stale;
        }
        let Some(name) = ev.name else {
            // About the directory itself (its attributes): its subscribers look again.
            for p in &paths {
                self.wake_dir(p, None, settled);
            }
            return stale;
        };
        let gone = ev.mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM);
        for p in &paths {
            let child = p.join(name);
            if gone {
                // A directory moved away keeps its watch (and those below it keep theirs) on
                // its new path: they are ended, and placed again if the path comes back.
                let below: Vec<PathBuf> = self.dirs.keys().filter(|d| d.starts_with(&child)).cloned().collect();
                for d in below {
                    stale.extend(self.drop_watch(&d));
                }
            }
            // A watched directory's own name changed: all of its subscribers look again.
            self.wake_dir(&child, None, settled);
            self.wake_dir(p, Some(name), settled);
        }
        stale
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

/// The table and the handle that places and removes watches; `watches` is `None` until the
/// first watch is needed (the instance and the task reading it are made then), and again after
/// that task ended.
#[derive(Default)]
struct Inner {
    table: Table,
    watches: Option<Watches>,
    /// Counts the instances made, so that a reading task that ends forgets only its own.
    instance: u64,
    /// Counts the watches placed (by any subscriber): see [`Subscription::placed`].
    placed: u64,
    /// A new instance's reading task, to be started once the table is unlocked.
    start: Option<(tokio::runtime::Handle, BoxFuture<'static, ()>)>,
}

impl Inner {
    /// The handle, making the instance, and the task reading it on the caller's runtime (see
    /// the module's documentation), when there is none. A runtime that ends takes the task with
    /// it (tests have one each): the instance goes too, and the sources, all woken, watch again
    /// on a new one (see [`Reading`]).
    fn watches(&mut self, hub: &'static Hub) -> io::Result<&mut Watches> {
        if self.watches.is_none() {
            let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
            let events = {
                let _in = runtime.enter();
                Inotify::init()?.into_event_stream(vec![0u8; 64 * 1024])?
            };
            self.instance += 1;
            self.watches = Some(events.watches());
            self.start = Some((runtime, read_events(events, Reading { hub, instance: self.instance }).boxed()));
        }
        Ok(self.watches.as_mut().expect("made above"))
    }

    fn remove(&mut self, stale: impl IntoIterator<Item = WatchDescriptor>) {
        if let Some(w) = self.watches.as_mut() {
            for wd in stale {
                // Fails harmlessly when the kernel already ended the watch.
                let _ = w.remove(wd);
            }
        }
    }
}

/// Held by the reading task; when the task ends (its runtime shut down), its instance is
/// forgotten: no directory counts as watched any more, and every source looks again, which
/// places its watches on a new instance.
struct Reading {
    hub: &'static Hub,
    instance: u64,
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut inner = lock(&self.hub.inner);
        if inner.instance != self.instance {
            return;
        }
        inner.watches = None;
        let t = &mut inner.table;
        t.watches.clear();
        for d in t.dirs.values_mut() {
            d.watched = None;
        }
        t.wake_all();
    }
}

/// The reading task: hands each event to the table as the instance yields it.
async fn read_events(mut events: EventStream<Vec<u8>>, reading: Reading) {
    let hub = reading.hub;
    while let Some(event) = events.next().await {
        match event {
            Ok(e) => {
                let mut inner = lock(&hub.inner);
                let stale = inner.table.dispatch(Event { wd: e.wd.get_watch_descriptor_id(), mask: e.mask, name: e.name.as_deref() });
                inner.remove(stale);
            }
            Err(_) => {
                // Could not read events: everyone looks again, and the read is retried after a
                // pause rather than spinning on a lasting error.
                lock(&hub.inner).table.wake_all();
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    drop(reading);
}

/// The watcher shared by the process's file sources.
pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
}

/// The process's hub, made on first use; its inotify instance is made by the first subscription
/// that needs a directory watched.
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
        Self { inner: Mutex::default(), next_id: AtomicU64::new(0) }
    }

    pub fn subscribe(&'static self) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Waker::default());
        lock(&self.inner).table.wakers.insert(id, wake.clone());
        Subscription { hub: self, id, wake, current: Interests::new() }
    }

    /// How many instances were made: one more each time a reading task's runtime ended (tests).
    #[cfg(test)]
    pub fn instance(&self) -> u64 {
        lock(&self.inner).instance
    }

    /// Directories watched now (for tests and diagnostics).
    #[cfg(test)]
    pub fn watched(&self) -> Vec<PathBuf> {
        let inner = lock(&self.inner);
        let mut v: Vec<_> = inner.table.dirs.iter().filter(|(_, d)| d.watched.is_some()).map(|(p, _)| p.clone()).collect();
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

/// What [`Subscription::set`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// The same interests, every directory watched, and no watch placed since the caller's
    /// walk began (none was missing then, or dropped and placed again meanwhile): anything
    /// that changed during the walk raised an event, and the caller need not walk again.
    Already,
    /// Every directory is watched now (some just placed: the caller walks the path again, in
    /// case it changed before they were).
    Now,
    /// A directory vanished (or became something other than a directory) before it could be
    /// watched: the caller looks at the path again.
    Incomplete,
}

/// Why a subscription could not be brought up to date.
#[derive(Debug)]
pub enum WatchError {
    /// The instance cannot be made or a directory cannot be watched (e.g. inotify limits).
    Cannot(PathBuf, io::Error),
}

impl Subscription {
    /// Wait until something this subscription cares about may have changed. A wake that came
    /// while nobody waited is kept (one), so none is lost between two waits. True when an event
    /// since the last wait completed a change ([`COMPLETES`]): no need to wait for more.
    pub async fn changed(&self) -> bool {
        self.wake.notify.notified().await;
        self.wake.settled.swap(false, Ordering::AcqRel)
    }

    /// How many watches the hub has placed so far: taken before walking a path and handed to
    /// [`Subscription::set`], it tells whether every watch the walk needed was in place for
    /// all of it.
    pub fn placed(&self) -> u64 {
        lock(&self.hub.inner).placed
    }

    /// Care about `want` from now on (and no longer about the rest). Says whether every
    /// directory in `want` is watched now, and whether it already was since `placed` (see
    /// [`Subscription::placed`] and [`Watched`]); and the count of watches placed after the
    /// call, for the next walk.
    pub fn set(&mut self, want: &Interests, placed: u64) -> Result<(Watched, u64), WatchError> {
        let mut guard = lock(&self.hub.inner);
        let result = self.set_locked(&mut guard, want, placed).map(|w| (w, guard.placed));
        // A new instance's reader starts once the table is free: a task refused by a runtime
        // that is shutting down is dropped at once, and then takes the table to forget it.
        let start = guard.start.take();
        drop(guard);
        if let Some((runtime, reader)) = start {
            runtime.spawn(reader);
        }
        result
    }

    fn set_locked(&mut self, inner: &mut Inner, want: &Interests, placed: u64) -> Result<Watched, WatchError> {
        let hub = self.hub;
        let same = self.current == *want;
        if same && inner.placed == placed && want.iter().all(|(dir, (seen, _))| inner.table.dirs.get(dir).is_some_and(|d| d.watched.is_some_and(|(id, _)| id == *seen))) {
            return Ok(Watched::Already);
        }
        for dir in self.current.keys().filter(|d| !want.contains_key(*d)) {
            leave(inner, dir, self.id);
        }
        if !same {
            self.current = want.clone();
        }
        let mut complete = true;
        for (dir, (seen, names)) in want {
            let d = inner.table.dirs.entry(dir.clone()).or_insert_with(|| Dir { watched: None, subs: HashMap::new() });
            d.subs.insert(self.id, names.clone());
            if d.watched.is_some_and(|(id, _)| id == *seen) {
                continue;
            }
            // A stale watch of the same path (a directory replaced by another) goes first.
            let stale = inner.table.drop_watch(dir);
            inner.remove(stale);
            let placed = inner.watches(hub).and_then(|w| w.add(dir, MASK));
            match placed {
                Ok(wd) => {
                    inner.placed += 1;
                    let n = wd.get_watch_descriptor_id();
                    let t = &mut inner.table;
                    t.watches.entry(n).or_insert_with(|| (wd, Vec::new())).1.push(dir.clone());
                    if let Some(d) = t.dirs.get_mut(dir) {
                        d.watched = Some((*seen, n));
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => complete = false,
                Err(e) => return Err(WatchError::Cannot(dir.clone(), e)),
            }
        }
        Ok(if complete { Watched::Now } else { Watched::Incomplete })
    }
}

/// `id` no longer cares about `dir`; unwatch it if nobody does.
fn leave(inner: &mut Inner, dir: &Path, id: u64) {
    let t = &mut inner.table;
    let Some(d) = t.dirs.get_mut(dir) else { return };
    d.subs.remove(&id);
    if d.subs.is_empty() {
        let stale = t.drop_watch(dir);
        t.dirs.remove(dir);
        inner.remove(stale);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = lock(&self.hub.inner);
        for dir in self.current.keys() {
            leave(&mut inner, dir, self.id);
        }
        inner.table.wakers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_ask_only_for_content_changes() {
        for never in [WatchMask::OPEN, WatchMask::ACCESS, WatchMask::CLOSE_NOWRITE] {
            assert!(!MASK.intersects(never), "{never:?} is raised by reading");
        }
        for wanted in [WatchMask::CLOSE_WRITE, WatchMask::MODIFY, WatchMask::MOVED_TO, WatchMask::MOVED_FROM, WatchMask::CREATE, WatchMask::DELETE] {
            assert!(MASK.contains(wanted));
        }
    }

    /// A table with real watch descriptors (of an instance of this test's own): `dirs` watched
    /// each by a watch of its own, subscriber `i + 1` caring about `names[i]` in the first.
    struct Fixture {
        _tmp: tempfile::TempDir,
        _inotify: Inotify,
        t: Table,
        wds: Vec<Wd>,
        wakers: Vec<Arc<Waker>>,
    }

    fn fixture(dirs: &[&str], names: &[&str]) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let inotify = Inotify::init().unwrap();
        let mut t = Table::default();
        let mut wds = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            let real = tmp.path().join(format!("d{i}"));
            std::fs::create_dir(&real).unwrap();
            let wd = inotify.watches().add(&real, MASK).unwrap();
            let n = wd.get_watch_descriptor_id();
            t.watches.insert(n, (wd, vec![PathBuf::from(d)]));
            t.dirs.insert(d.into(), Dir { watched: Some((DirId { dev: 1, ino: i as u64 }, n)), subs: HashMap::new() });
            wds.push(n);
        }
        let mut wakers = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let w = Arc::new(Waker::default());
            t.wakers.insert(i as u64 + 1, w.clone());
            t.dirs.get_mut(Path::new(dirs[0])).unwrap().subs.insert(i as u64 + 1, BTreeSet::from([OsString::from(name)]));
            wakers.push(w);
        }
        Fixture { _tmp: tmp, _inotify: inotify, t, wds, wakers }
    }

    fn woken(w: &Arc<Waker>) -> bool {
        futures::FutureExt::now_or_never(w.notify.notified()).is_some()
    }

    fn settled(w: &Arc<Waker>) -> bool {
        w.settled.swap(false, Ordering::AcqRel)
    }

    #[test]
    fn events_wake_only_the_subscribers_of_their_name() {
        let mut f = fixture(&["/d"], &["a.yaml", "b.yaml"]);
        let (a, b) = (f.wakers[0].clone(), f.wakers[1].clone());
        let ev = |mask, name: &'static str| Event { wd: f.wds[0], mask, name: Some(OsStr::new(name)) };
        let (modify, close, created) = (ev(EventMask::MODIFY, "b.yaml"), ev(EventMask::CLOSE_WRITE, "b.yaml"), ev(EventMask::CREATE, "c.yaml"));
        let renamed = ev(EventMask::MOVED_TO, "a.yaml");
        assert!(f.t.dispatch(modify).is_empty());
        assert!(!woken(&a) && woken(&b));
        assert!(!settled(&b), "a write with the file open may be followed by more");
        f.t.dispatch(close);
        assert!(!woken(&a) && woken(&b));
        assert!(settled(&b) && !settled(&a), "closed after writing: read at once");
        f.t.dispatch(created);
        assert!(!woken(&a) && !woken(&b), "nobody cares about c.yaml");
        f.t.dispatch(renamed);
        assert!(woken(&a) && settled(&a) && !woken(&b), "renamed into place: read at once");
        // An event of a watch no longer known (ended meanwhile) is dropped.
        f.t.dispatch(Event { wd: -1, mask: EventMask::CLOSE_WRITE, name: Some(OsStr::new("a.yaml")) });
        assert!(!woken(&a));
        // Events were lost: everyone looks again.
        f.t.dispatch(Event { wd: -1, mask: EventMask::Q_OVERFLOW, name: None });
        assert!(woken(&a) && woken(&b));
    }

    #[test]
    fn a_directory_deleted_or_moved_away_is_watched_again() {
        // Deleted: its subscribers look again; the kernel ends the watch itself.
        let mut f = fixture(&["/d"], &["a.yaml"]);
        let stale = f.t.dispatch(Event { wd: f.wds[0], mask: EventMask::DELETE_SELF, name: None });
        assert!(stale.is_empty());
        assert!(woken(&f.wakers[0]) && settled(&f.wakers[0]));
        assert_eq!(f.t.dirs[Path::new("/d")].watched, None);
        assert!(f.t.watches.is_empty());
        // Its `IGNORED` then finds nothing.
        assert!(f.t.dispatch(Event { wd: f.wds[0], mask: EventMask::IGNORED, name: None }).is_empty());

        // Moved away itself: the watch followed it, so it is handed back to be removed.
        let mut f = fixture(&["/d"], &["a.yaml"]);
        let stale = f.t.dispatch(Event { wd: f.wds[0], mask: EventMask::MOVE_SELF, name: None });
        assert_eq!(stale.iter().map(WatchDescriptor::get_watch_descriptor_id).collect::<Vec<_>>(), [f.wds[0]]);
        assert!(woken(&f.wakers[0]));
        assert_eq!(f.t.dirs[Path::new("/d")].watched, None);

        // Moved away as seen from its parent: its watch and those below it end, not its
        // neighbours'; its subscribers look again.
        let mut f = fixture(&["/p", "/p/e", "/p/e/sub", "/p/else"], &[]);
        let w = Arc::new(Waker::default());
        f.t.wakers.insert(9, w.clone());
        f.t.dirs.get_mut(Path::new("/p/e/sub")).unwrap().subs.insert(9, BTreeSet::from([OsString::from("x")]));
        f.t.dirs.get_mut(Path::new("/p/e")).unwrap().subs.insert(9, BTreeSet::from([OsString::from("sub")]));
        let stale = f.t.dispatch(Event { wd: f.wds[0], mask: EventMask::MOVED_FROM | EventMask::ISDIR, name: Some(OsStr::new("e")) });
        let mut ids: Vec<_> = stale.iter().map(WatchDescriptor::get_watch_descriptor_id).collect();
        ids.sort();
        assert_eq!(ids, [f.wds[1], f.wds[2]]);
        let watched = |d: &str| f.t.dirs[Path::new(d)].watched.is_some();
        assert_eq!((watched("/p"), watched("/p/e"), watched("/p/e/sub"), watched("/p/else")), (true, false, false, true));
        assert!(woken(&w));
    }

    #[test]
    fn two_paths_of_one_directory_share_its_watch() {
        let mut f = fixture(&["/d"], &["a.yaml"]);
        let wd = f.wds[0];
        f.t.watches.get_mut(&wd).unwrap().1.push("/link".into());
        f.t.dirs.insert("/link".into(), Dir { watched: Some((DirId { dev: 1, ino: 0 }, wd)), subs: HashMap::from([(1, BTreeSet::from([OsString::from("a.yaml")]))]) });
        // One path let go: the watch stays for the other.
        assert!(f.t.drop_watch(Path::new("/link")).is_none());
        f.t.dispatch(Event { wd, mask: EventMask::CLOSE_WRITE, name: Some(OsStr::new("a.yaml")) });
        assert!(woken(&f.wakers[0]));
        // The last one: the watch is handed back to be removed.
        assert_eq!(f.t.drop_watch(Path::new("/d")).map(|w| w.get_watch_descriptor_id()), Some(wd));
        assert!(f.t.watches.is_empty());
    }
}
