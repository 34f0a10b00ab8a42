//! The `file` source: a YAML or JSON file listing backends, watched through the process's one
//! inotify instance (see [`crate::hub`]).
//!
//! Every name on the way to the file is watched in its directory, symlinks followed (see
//! [`crate::resolve`]): editors and tools that replace the file (write a temporary, rename it
//! over), a symlink re-pointed (Kubernetes ConfigMaps, deploy tools), a file or its directory
//! deleted and created again are all seen. A change that an event completes (the file closed
//! after writing, a name renamed into place, a delete) is read at once; other wakes (a write
//! with the file still open) are coalesced over a quiet period (capped, so a file that changes
//! non-stop is still read). The file is read only when a name on its way changed, never because
//! it was read.
//!
//! What a source says:
//! - the file's backends, as a `Reset`, at the first read and whenever its bytes change;
//! - a malformed file: one error, the previous backends stay; a malformed entry: one error,
//!   the others are used;
//! - a file larger than [`MAX_FILE_BYTES`] (16 MiB): one error, the previous backends stay;
//!   at most that much (plus one byte) is read, so a wrong path (`/dev/zero`, a log file)
//!   costs nothing; said again only after the file was read whole or went missing;
//! - the file missing (or a directory on its way): one error, then it waits for the file; no
//!   `Reset` is given while it cannot see its file, so a source that starts blind never syncs;
//! - a file that cannot be read for another reason (too many open files, permissions) or a
//!   path that cannot be watched (inotify limits): one error, and the stream ends, so the
//!   supervisor opens it again with backoff, and the new opening reads again.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::stream;
use myelin_source::{Cause, SourceError, Update, UpdateStream};

use crate::hub::{hub, Subscription, WatchError, Watched};
use crate::MAX_FILE_BYTES;
use crate::parse::Known;
use crate::resolve::{resolve, Seen};

/// How many times the path is walked again when it changes while its watches are placed.
const SETTLE_TRIES: usize = 10;

/// Read a file (a seam for tests that need a read to fail).
pub(crate) type Reader = fn(&Path) -> io::Result<Vec<u8>>;

fn malformed(path: String, reason: impl std::fmt::Display) -> SourceError {
    SourceError::Failed { origin: path, what: "is malformed".into(), cause: Some(Cause::msg(reason)) }
}

fn updates_of(origin: &str, known: &mut Known, bytes: &[u8]) -> Vec<Result<Update, SourceError>> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => return vec![Err(malformed(origin.to_owned(), "not UTF-8"))],
    };
    match known.parse(text) {
        Err(reason) => vec![Err(malformed(origin.to_owned(), reason))],
        Ok((ok, bad)) => {
            let mut out: Vec<_> = bad.into_iter().map(|(index, reason)| Err(SourceError::entry(origin.to_owned(), format!("entry {index}"), reason))).collect();
            out.push(Ok(Update::Reset(ok)));
            out
        }
    }
}

struct State {
    path: PathBuf,
    /// The path as configured, for messages.
    origin: String,
    quiet: Duration,
    read: Reader,
    sub: Subscription,
    /// The bytes last read; `None` before the first read and while the file cannot be seen
    /// (so the file coming back is always announced with a `Reset`).
    last: Option<Vec<u8>>,
    /// The entries of the last read, parsed: a change parses only the entries it touched.
    known: Known,
    /// What is known to be missing (the file, or a directory on its path). Reported when the
    /// source goes blind, and again only when a directory above it goes too (`rm -r` deletes
    /// the file first, then its directory: the report ends on the directory, whenever the
    /// source happened to look in between).
    blind: Option<PathBuf>,
    /// The file is known to be larger than [`MAX_FILE_BYTES`] (already reported).
    too_large: bool,
    queue: VecDeque<Result<Update, SourceError>>,
    /// End the stream once the queue is empty.
    end: bool,
}

impl State {
    /// Walk the path and bring the watches in line with it, until the two agree (a change in
    /// between is caught by walking again after the watches are placed).
    fn look(&mut self) -> Result<Seen, SourceError> {
        let mut placed = self.sub.placed();
        let mut r = resolve(&self.path);
        for _ in 0..SETTLE_TRIES {
            let watched;
            (watched, placed) = self.sub.set(&r.interests, placed).map_err(|WatchError::Cannot(dir, e)| SourceError::failed_with(dir.display().to_string(), "cannot watch", e))?;
            if watched != Watched::Already {
                let again = resolve(&self.path);
                let settled = watched == Watched::Now && again.interests == r.interests;
                r = again;
                if !settled {
                    continue;
                }
            }
            // Either the walk ran under these very watches (a change during it raised an
            // event, which brings the source back here), or it was done again once they were
            // placed and found the same path.
            return r.seen.map_err(|e| SourceError::failed_with(self.origin.clone(), "cannot be resolved", e));
        }
        Err(SourceError::failed(self.origin.clone(), "keeps changing while it is being watched"))
    }

    fn missing(&mut self, what: &Path) {
        self.last = None;
        self.too_large = false;
        let report = self.blind.as_deref().is_none_or(|before| before != what && before.starts_with(what));
        self.blind = Some(what.to_path_buf());
        if report {
            let what = if what == self.path { "does not exist".to_owned() } else { format!("does not exist ({} is missing)", what.display()) };
            self.queue.push_back(Err(SourceError::failed(self.origin.clone(), format!("{what}; waiting for it"))));
        }
    }

    /// Look at the file and queue what it says, unless it has not changed since the last read.
    fn refresh(&mut self) {
        let file = match self.look() {
            Ok(Seen::File(f)) => f,
            Ok(Seen::Missing(what)) => return self.missing(&what),
            Err(e) => {
                self.queue.push_back(Err(e));
                self.end = true;
                return;
            }
        };
        match (self.read)(&file) {
            Ok(bytes) if bytes.len() as u64 > MAX_FILE_BYTES => {
                self.blind = None;
                // Read whole later (after it shrank), it is announced with a `Reset`.
                self.last = None;
                if !self.too_large {
                    self.too_large = true;
                    let why = format!("larger than {} MiB: not a backends file", MAX_FILE_BYTES / (1024 * 1024));
                    self.queue.push_back(Err(SourceError::Failed { origin: self.origin.clone(), what: "is too large".into(), cause: Some(Cause::msg(why)) }));
                }
            }
            Ok(bytes) => {
                self.blind = None;
                self.too_large = false;
                if self.last.as_ref() != Some(&bytes) {
                    self.queue.extend(updates_of(&self.origin, &mut self.known, &bytes));
                    self.last = Some(bytes);
                }
            }
            // Gone between the walk and the read: the next event says where it went.
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.missing(&file),
            Err(e) => {
                self.queue.push_back(Err(SourceError::failed_with(self.origin.clone(), "cannot read", e)));
                self.end = true;
            }
        }
    }

    /// Wait for a change; unless an event completed it (a close after writing, a rename into
    /// place, a delete: read at once), wait for a quiet period too (at most ten of them) or
    /// until such an event.
    async fn wait_for_change(&mut self) {
        if self.sub.changed().await {
            return;
        }
        let cap = tokio::time::Instant::now() + self.quiet * 10;
        loop {
            let deadline = (tokio::time::Instant::now() + self.quiet).min(cap);
            match tokio::time::timeout_at(deadline, self.sub.changed()).await {
                Ok(false) if tokio::time::Instant::now() < cap => continue,
                _ => return,
            }
        }
    }
}

/// Read at most [`MAX_FILE_BYTES`] and one more byte (enough to tell the file is too large).
fn std_read(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    // Sized from the start: read in one call, not in doubling steps from 32 bytes.
    let len = file.metadata().map_or(0, |m| m.len()).min(MAX_FILE_BYTES) as usize;
    let mut bytes = Vec::with_capacity(len + 1);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Watch `path` and yield its backends: a `Reset` at the first read and after each change.
/// Nothing is read or watched until the stream is polled, which must be on a tokio runtime with
/// I/O and time (see [`crate::hub`]).
pub fn file_source(path: PathBuf, quiet: Duration) -> UpdateStream {
    file_source_with(path, quiet, std_read)
}

pub(crate) fn file_source_with(path: PathBuf, quiet: Duration, read: Reader) -> UpdateStream {
    let origin = path.display().to_string();
    let state = State { path, origin, quiet, read, sub: hub().subscribe(), last: None, known: Known::default(), blind: None, too_large: false, queue: VecDeque::new(), end: false };
    Box::pin(stream::unfold((state, true), |(mut st, first)| async move {
        if first {
            st.refresh();
        }
        loop {
            if let Some(item) = st.queue.pop_front() {
                return Some((item, (st, false)));
            }
            if st.end {
                return None;
            }
            st.wait_for_change().await;
            st.refresh();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const QUIET: Duration = Duration::from_millis(20);

    async fn next(s: &mut UpdateStream) -> Result<Update, SourceError> {
        tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("an update within 5 s").expect("stream open")
    }

    /// Nothing comes for `d`.
    async fn silent(s: &mut UpdateStream, d: Duration) {
        if let Ok(item) = tokio::time::timeout(d, s.next()).await {
            panic!("expected nothing, got {item:?}");
        }
    }

    fn ports(u: Result<Update, SourceError>) -> Vec<String> {
        match u {
            Ok(Update::Reset(v)) => v.into_iter().map(|d| d.port).collect(),
            other => panic!("expected a reset, got {other:?}"),
        }
    }

    fn entries(ports: &[u16]) -> String {
        ports.iter().map(|p| format!("- {{host: 127.0.0.1, port: {p}}}\n")).collect()
    }

    fn err_with(u: Result<Update, SourceError>, text: &str) {
        match u {
            Err(e) if e.report().contains(text) => {}
            other => panic!("expected an error with {text:?}, got {other:?}"),
        }
    }

    /// Counts the opens of `file` by anyone, with an inotify instance and thread of its own (the
    /// hub's watches never ask for opens). Dropping the guard ends the watch, and the thread.
    fn count_opens(dir: &Path, file: PathBuf) -> (OpenCounter, Arc<AtomicUsize>) {
        use inotify::{EventMask, Inotify, WatchMask};
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let mut inotify = Inotify::init().unwrap();
        let mut watches = inotify.watches();
        let wd = watches.add(dir, WatchMask::OPEN).unwrap();
        let name = file.file_name().unwrap().to_owned();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                for ev in inotify.read_events_blocking(&mut buf).unwrap() {
                    if ev.mask.contains(EventMask::IGNORED) {
                        return;
                    }
                    if ev.mask.contains(EventMask::OPEN) && ev.name == Some(name.as_os_str()) {
                        m.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        (OpenCounter(watches, Some(wd)), n)
    }

    struct OpenCounter(inotify::Watches, Option<inotify::WatchDescriptor>);

    impl Drop for OpenCounter {
        fn drop(&mut self) {
            if let Some(wd) = self.1.take() {
                let _ = self.0.remove(wd);
            }
        }
    }

    /// The inotify instance is read by a task on the runtime of the source that first needed
    /// it: when that runtime ends, the sources of another runtime watch again on a new instance
    /// and miss nothing.
    #[test]
    fn sources_outlive_the_runtime_that_read_their_events() {
        let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, entries(&[1])).unwrap();
        std::fs::write(&b, entries(&[2])).unwrap();
        let within = |d| std::time::Duration::from_secs(d);
        // A runtime of its own starts a source first (and so the reader, unless another test's
        // runtime has it), sees a change, and ends; meanwhile a source on another runtime, on
        // a thread of its own, follows its file throughout.
        let (seen_tx, seen) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut stopped = Some(stopped);
        let mut other = None;
        for round in 0..3u16 {
            let first = runtime();
            first.block_on(async {
                let mut sa = file_source(a.clone(), QUIET);
                assert_eq!(ports(next(&mut sa).await), ["1"]);
                std::fs::write(&a, entries(&[1, 10 + round])).unwrap();
                assert_eq!(ports(next(&mut sa).await), ["1", &(10 + round).to_string()]);
            });
            if other.is_none() {
                let (b, tx, mut stopped) = (b.clone(), seen_tx.clone(), stopped.take().unwrap());
                other = Some(std::thread::spawn(move || {
                    runtime().block_on(async move {
                        let mut sb = file_source(b, QUIET);
                        loop {
                            tokio::select! {
                                _ = &mut stopped => break,
                                u = sb.next() => tx.send(ports(u.expect("stream open"))).unwrap(),
                            }
                        }
                    })
                }));
                assert_eq!(seen.recv_timeout(within(5)).unwrap(), ["2"]);
            }
            drop(first);
            std::fs::write(&a, entries(&[1])).unwrap();
            std::fs::write(&b, entries(&[2, 20 + round])).unwrap();
            assert_eq!(seen.recv_timeout(within(5)).unwrap(), ["2", &(20 + round).to_string()]);
        }
        stop.send(()).unwrap();
        other.unwrap().join().unwrap();
    }

    /// A write closed, or a file renamed into place, is read at once; a write with the file
    /// still open waits for the quiet period.
    #[tokio::test]
    async fn a_completed_change_is_read_without_waiting_for_quiet() {
        use std::io::Write;
        let long = Duration::from_secs(3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backends.yaml");
        std::fs::write(&path, entries(&[1])).unwrap();
        let mut s = file_source(path.clone(), long);
        assert_eq!(ports(next(&mut s).await), ["1"]);
        let fast = |d: Duration| assert!(d < Duration::from_secs(1), "took {d:?}, the quiet period is {long:?}");

        let t = std::time::Instant::now();
        std::fs::write(&path, entries(&[1, 2])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["1", "2"]);
        fast(t.elapsed());

        let t = std::time::Instant::now();
        let tmp = dir.path().join(".new");
        std::fs::write(&tmp, entries(&[3])).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(ports(next(&mut s).await), ["3"]);
        fast(t.elapsed());

        // Still open for writing: nothing before the quiet period, whatever the file holds.
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
        f.write_all(entries(&[4]).as_bytes()).unwrap();
        silent(&mut s, Duration::from_millis(800)).await;
        drop(f);
        assert_eq!(ports(next(&mut s).await), ["4"]);
    }

    #[tokio::test]
    async fn follows_edits_replacements_and_bad_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backends.yaml");
        std::fs::write(&path, entries(&[1])).unwrap();
        let mut s = file_source(path.clone(), QUIET);
        assert_eq!(ports(next(&mut s).await), ["1"]);

        // In-place write.
        std::fs::write(&path, entries(&[1, 2])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["1", "2"]);

        // Malformed: reported, nothing else.
        std::fs::write(&path, "- {host: [\n").unwrap();
        err_with(next(&mut s).await, "is malformed");

        // Replaced by rename, as editors do.
        let tmp = dir.path().join(".backends.yaml.swp");
        std::fs::write(&tmp, entries(&[3, 4, 5])).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(ports(next(&mut s).await), ["3", "4", "5"]);

        // Deleted: said once, and the stream waits; created again: read.
        std::fs::remove_file(&path).unwrap();
        err_with(next(&mut s).await, "backends.yaml: does not exist; waiting for it");
        silent(&mut s, Duration::from_millis(200)).await;
        std::fs::write(&path, "[]").unwrap();
        assert_eq!(ports(next(&mut s).await), Vec::<String>::new());
    }

    /// A source of `backends.yaml` (port 1) that has read it once, and a count of its opens
    /// (the directory and the counting watcher live as long as this).
    struct Counted {
        dir: tempfile::TempDir,
        path: PathBuf,
        _watcher: OpenCounter,
        opens: Arc<AtomicUsize>,
        s: UpdateStream,
    }

    async fn counted() -> Counted {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backends.yaml");
        std::fs::write(&path, entries(&[1])).unwrap();
        let (_watcher, opens) = count_opens(dir.path(), path.clone());
        let mut s = file_source(path.clone(), QUIET);
        assert_eq!(ports(next(&mut s).await), ["1"]);
        settle_stale_events(&mut s, &opens).await;
        Counted { dir, path, _watcher, opens, s }
    }

    /// Let events raised before a source watched reach it, and count its reads from one. The
    /// temporary directory's creation was an event in `/tmp`, which the process may already
    /// watch for another test's source, and its reader can hand it over after the new
    /// source subscribed to that name: one more read, of the same bytes, says nothing. A
    /// source that woke itself by reading would go on reading (it read ~40 times a second).
    async fn settle_stale_events(s: &mut UpdateStream, opens: &AtomicUsize) {
        silent(s, Duration::from_millis(200)).await;
        opens.store(1, Ordering::SeqCst);
    }

    /// The opens counted since the hub's instance was `instance`; `None` when it changed:
    /// another test's runtime, which read the hub's events, ended, and every source looked at
    /// its file again on the new instance (one more read, of the same bytes, says nothing).
    fn opens_on(opens: &AtomicUsize, instance: u64) -> Option<usize> {
        let n = opens.load(Ordering::SeqCst);
        (hub().instance() == instance).then_some(n)
    }

    #[tokio::test]
    async fn reading_its_own_file_does_not_wake_a_source() {
        let Counted { dir: _dir, _watcher, opens, mut s, .. } = counted().await;
        for _ in 0..10 {
            let instance = hub().instance();
            opens.store(1, Ordering::SeqCst);
            // Before: each read raised an event that caused the next read, ~40 a second.
            silent(&mut s, Duration::from_millis(1000)).await;
            if let Some(n) = opens_on(&opens, instance) {
                assert_eq!(n, 1, "the file was read again while nothing changed");
                return;
            }
        }
        panic!("the hub's instance kept changing");
    }

    /// A file replaced by a rename is read once, not again after a quiet period.
    #[tokio::test]
    async fn a_rename_into_place_is_read_once() {
        let Counted { dir, path, _watcher, opens, mut s } = counted().await;
        let mut checked = 0;
        for (round, port) in (2..12).enumerate() {
            let (instance, before) = (hub().instance(), opens.load(Ordering::SeqCst));
            let tmp = dir.path().join("backends.tmp");
            std::fs::write(&tmp, entries(&[port])).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            assert_eq!(ports(next(&mut s).await), [port.to_string()]);
            silent(&mut s, QUIET * 4).await;
            if let Some(n) = opens_on(&opens, instance) {
                assert_eq!(n, before + 1, "read more than once after rename {}", round + 1);
                checked += 1;
            }
        }
        assert!(checked >= 5, "the hub's instance kept changing");
    }

    #[tokio::test]
    async fn files_sharing_a_directory_do_not_wake_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, entries(&[1])).unwrap();
        std::fs::write(&b, entries(&[2])).unwrap();
        let (_w, opens_a) = count_opens(dir.path(), a.clone());
        let mut sa = file_source(a.clone(), QUIET);
        let mut sb = file_source(b.clone(), QUIET);
        assert_eq!(ports(next(&mut sa).await), ["1"]);
        assert_eq!(ports(next(&mut sb).await), ["2"]);
        settle_stale_events(&mut sa, &opens_a).await;
        let mut checked = false;
        for round in 0..10 {
            let instance = hub().instance();
            opens_a.store(1, Ordering::SeqCst);
            for p in 3..8 {
                let p = p + 10 * round;
                std::fs::write(&b, entries(&[p])).unwrap();
                assert_eq!(ports(next(&mut sb).await), [p.to_string()]);
                std::fs::write(dir.path().join("unrelated"), "x").unwrap();
            }
            silent(&mut sa, Duration::from_millis(100)).await;
            if let Some(n) = opens_on(&opens_a, instance) {
                assert_eq!(n, 1, "a.yaml was read again for changes to b.yaml");
                checked = true;
                break;
            }
        }
        assert!(checked, "the hub's instance kept changing");
        // Both in one watched directory.
        let watched = hub().watched();
        assert_eq!(watched.iter().filter(|d| d.as_path() == dir.path()).count(), 1);
    }

    #[tokio::test]
    async fn follows_symlinks_swapped_as_kubernetes_does() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir(d.join("..2026_01")).unwrap();
        std::fs::write(d.join("..2026_01/backends.yaml"), entries(&[1])).unwrap();
        symlink("..2026_01", d.join("..data")).unwrap();
        symlink("..data/backends.yaml", d.join("backends.yaml")).unwrap();
        let mut s = file_source(d.join("backends.yaml"), QUIET);
        assert_eq!(ports(next(&mut s).await), ["1"]);

        // The ConfigMap updated: a new timestamped directory, `..data` swapped by rename, the old one removed.
        std::fs::create_dir(d.join("..2026_02")).unwrap();
        std::fs::write(d.join("..2026_02/backends.yaml"), entries(&[2])).unwrap();
        symlink("..2026_02", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join("..2026_01")).unwrap();
        assert_eq!(ports(next(&mut s).await), ["2"]);

        // The target edited in place.
        std::fs::write(d.join("..2026_02/backends.yaml"), entries(&[2, 3])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["2", "3"]);

        // The link itself re-pointed at a file elsewhere, then that file edited.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("real.yaml"), entries(&[4])).unwrap();
        symlink(other.path().join("real.yaml"), d.join("tmp-link")).unwrap();
        std::fs::rename(d.join("tmp-link"), d.join("backends.yaml")).unwrap();
        assert_eq!(ports(next(&mut s).await), ["4"]);
        std::fs::write(other.path().join("real.yaml"), entries(&[5])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["5"]);

        // A dangling link: missing, until its target appears.
        std::fs::remove_file(other.path().join("real.yaml")).unwrap();
        err_with(next(&mut s).await, "real.yaml is missing); waiting for it");
        std::fs::write(other.path().join("real.yaml"), entries(&[6])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["6"]);
    }

    /// A source of `<tmp>/conf/backends.yaml` (port 1) that has read it once:
    /// (tmp, conf, the file, the stream).
    async fn in_subdirectory() -> (tempfile::TempDir, PathBuf, PathBuf, UpdateStream) {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("conf");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("backends.yaml");
        std::fs::write(&path, entries(&[1])).unwrap();
        let mut s = file_source(path.clone(), QUIET);
        assert_eq!(ports(next(&mut s).await), ["1"]);
        (tmp, sub, path, s)
    }

    /// Blind twice over: the file deleted (said), then its directory (said too, the more
    /// fundamental loss); the directory back without the file says nothing more.
    #[tokio::test]
    async fn a_directory_lost_after_its_file_is_said_too() {
        let (_tmp, sub, path, mut s) = in_subdirectory().await;
        std::fs::remove_file(&path).unwrap();
        err_with(next(&mut s).await, "backends.yaml: does not exist; waiting for it");
        std::fs::remove_dir(&sub).unwrap();
        err_with(next(&mut s).await, &format!("does not exist ({} is missing); waiting for it", sub.display()));
        std::fs::create_dir(&sub).unwrap();
        silent(&mut s, Duration::from_millis(200)).await;
        std::fs::write(&path, entries(&[2])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["2"]);
    }

    #[tokio::test]
    async fn recovers_when_its_directory_is_removed_and_created_again() {
        let (tmp, sub, path, mut s) = in_subdirectory().await;

        std::fs::remove_dir_all(&sub).unwrap();
        // The file goes first: a look in between sees only it missing, then the directory.
        let mut gone = next(&mut s).await;
        if gone.as_ref().is_err_and(|e| !e.report().contains("is missing")) {
            gone = next(&mut s).await;
        }
        err_with(gone, &format!("does not exist ({} is missing); waiting for it", sub.display()));
        std::fs::create_dir(&sub).unwrap();
        silent(&mut s, Duration::from_millis(200)).await;
        std::fs::write(&path, entries(&[2])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["2"]);
        std::fs::write(&path, entries(&[3])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["3"]);

        // Replaced by a directory renamed over it (same path, another directory).
        let staged = tmp.path().join("conf.new");
        std::fs::create_dir(&staged).unwrap();
        std::fs::write(staged.join("backends.yaml"), entries(&[4])).unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        std::fs::rename(&staged, &sub).unwrap();
        let mut got = next(&mut s).await;
        if got.is_err() {
            got = next(&mut s).await;
        }
        assert_eq!(ports(got), ["4"]);
        std::fs::write(&path, entries(&[5])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["5"]);

        // Moved away and back (the same directory again): watched again, so edits are seen.
        std::fs::rename(&sub, tmp.path().join("conf.away")).unwrap();
        err_with(next(&mut s).await, "waiting for it");
        std::fs::rename(tmp.path().join("conf.away"), &sub).unwrap();
        assert_eq!(ports(next(&mut s).await), ["5"]);
        std::fs::write(&path, entries(&[6])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["6"]);
    }

    #[tokio::test]
    async fn a_file_missing_at_start_gives_no_reset_until_it_appears() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("later/backends.yaml");
        let mut s = file_source(path.clone(), QUIET);
        err_with(next(&mut s).await, "waiting for it");
        silent(&mut s, Duration::from_millis(200)).await;
        std::fs::create_dir(tmp.path().join("later")).unwrap();
        std::fs::write(&path, entries(&[1])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["1"]);
    }

    #[tokio::test]
    async fn a_read_that_fails_otherwise_ends_the_stream_and_the_reopening_reads_again() {
        static FAIL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
        fn flaky(p: &Path) -> io::Result<Vec<u8>> {
            if FAIL.load(Ordering::SeqCst) {
                // What `open` gives when the process is out of descriptors.
                return Err(io::Error::from_raw_os_error(24));
            }
            std::fs::read(p)
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("backends.yaml");
        std::fs::write(&path, entries(&[1])).unwrap();
        let mut s = file_source_with(path.clone(), QUIET, flaky);
        err_with(next(&mut s).await, "backends.yaml: cannot read: Too many open files");
        assert!(tokio::time::timeout(Duration::from_secs(5), s.next()).await.unwrap().is_none(), "the stream must end");
        // The supervisor's reopening (nothing changed in the file meanwhile) reads it.
        FAIL.store(false, Ordering::SeqCst);
        let mut s = file_source_with(path.clone(), QUIET, flaky);
        assert_eq!(ports(next(&mut s).await), ["1"]);

        // A real one: the path is a directory.
        let mut s = file_source(tmp.path().to_path_buf(), QUIET);
        err_with(next(&mut s).await, "cannot read");
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_file_too_large_is_an_error_and_keeps_the_last_backends() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("backends.yaml");
        std::fs::write(&path, entries(&[1])).unwrap();
        let mut s = file_source(path.clone(), QUIET);
        assert_eq!(ports(next(&mut s).await), ["1"]);
        // Valid YAML (one long comment) one byte over the bound: refused, not parsed; no
        // `Reset`, so the store keeps the backends it has.
        let mut big = entries(&[2]);
        big.push('#');
        big.push_str(&"x".repeat(MAX_FILE_BYTES as usize + 1 - big.len()));
        std::fs::write(&path, &big).unwrap();
        err_with(next(&mut s).await, "backends.yaml: is too large: larger than 16 MiB: not a backends file");
        // Still too large after another change: not said again.
        big.push('y');
        std::fs::write(&path, &big).unwrap();
        silent(&mut s, Duration::from_millis(300)).await;
        // Back under the bound: read and applied.
        std::fs::write(&path, entries(&[3])).unwrap();
        assert_eq!(ports(next(&mut s).await), ["3"]);
        // Exactly the bound is read.
        let mut edge = entries(&[4]);
        edge.push('#');
        edge.push_str(&"x".repeat(MAX_FILE_BYTES as usize - edge.len()));
        std::fs::write(&path, &edge).unwrap();
        assert_eq!(ports(next(&mut s).await), ["4"]);
        drop(s);

        // A path that never ends: at most the bound is read, at once.
        let mut s = file_source(PathBuf::from("/dev/zero"), QUIET);
        err_with(next(&mut s).await, "/dev/zero: is too large");
    }

    #[tokio::test]
    async fn dropping_a_stream_unwatches_what_nobody_needs() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        std::fs::write(d.join("a.yaml"), "[]").unwrap();
        std::fs::write(d.join("b.yaml"), "[]").unwrap();
        let mut a = file_source(d.join("a.yaml"), QUIET);
        let mut b = file_source(d.join("b.yaml"), QUIET);
        next(&mut a).await.unwrap();
        next(&mut b).await.unwrap();
        assert!(hub().watched().contains(&d));
        drop(a);
        assert!(hub().watched().contains(&d));
        drop(b);
        assert!(!hub().watched().contains(&d));
    }
}
