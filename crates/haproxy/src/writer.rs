use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::debug;

use crate::command::run_command;
use crate::render::Rendered;
use crate::Error;

/// What [`Writer::install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallOutcome {
    /// The file on disk already had these bytes.
    Unchanged,
    /// The new config was validated and moved into place.
    Installed,
    /// `do_writes` is off.
    NotWritten,
}

/// Installs haproxy.cfg: write a candidate next to the target, validate it with HAProxy (or the
/// configured check command), then replace the target atomically and durably (a temporary file,
/// fsync, rename, fsync of the directory: [`write_atomic`]). A rejected candidate is kept as
/// `<config>.rejected` and the config in force is left alone.
#[derive(Debug, Clone)]
pub struct Writer {
    pub path: PathBuf,
    pub do_writes: bool,
    pub do_checks: bool,
    /// argv; the target path in it is replaced by the candidate's, which is also in
    /// `$MYELIN_CANDIDATE`. `None`: `haproxy -c -f <candidate>`.
    pub check_command: Option<Vec<String>>,
    pub haproxy_bin: PathBuf,
    pub timeout: Duration,
    /// What this writer (and its clones) last installed: compared in memory while the file is
    /// as it left it.
    pub written: Written,
}

/// The config a writer last installed, and the file as it was then (device, inode, length,
/// modification time, taken from the file written before it was renamed into place). While
/// the file still has that identity, whether it holds a config is a comparison in memory (the
/// pieces are mostly the same `Arc`s), not a read of the file (4 MB at 100,000 servers); a
/// file replaced or written by anyone else has another identity and is read. (Not seen: a
/// rewrite in place to the same length within the file system's timestamp granularity, a
/// few milliseconds, or one that sets the old modification time back.)
#[derive(Clone, Default)]
pub struct Written(Arc<Mutex<Option<(FileId, Rendered)>>>);

impl std::fmt::Debug for Written {
    /// The file's identity and the text's length, not the text (4 MB at 100,000 servers).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.lock() {
            Some((id, text)) => write!(f, "Written({id:?}, {} bytes)", text.len()),
            None => f.write_str("Written(nothing)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self { dev: m.dev(), ino: m.ino(), len: m.len(), mtime: (m.mtime(), m.mtime_nsec()) }
    }
}

impl Written {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(FileId, Rendered)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the file at `path` holds `config`, if it is still the file last written.
    fn holds(&self, path: &Path, config: &Rendered) -> Option<bool> {
        let now = FileId::of(&std::fs::metadata(path).ok()?);
        match &*self.lock() {
            Some((id, last)) if *id == now => Some(last.same_text(config)),
            _ => None,
        }
    }
}

impl Writer {
    pub fn candidate_path(&self) -> PathBuf {
        sibling(&self.path, ".myelin-new")
    }

    pub fn rejected_path(&self) -> PathBuf {
        sibling(&self.path, ".rejected")
    }

    /// Whether the file on disk holds exactly `config`: compared in memory while the file is
    /// the one this writer last installed ([`Written`]); otherwise a file of another length is
    /// not read, and one of the same length only up to its first difference, a block at a time.
    pub fn is_current(&self, config: &Rendered) -> bool {
        use std::io::Read;
        if let Some(known) = self.written.holds(&self.path, config) {
            return known;
        }
        let Ok(mut f) = std::fs::File::open(&self.path) else { return false };
        if f.metadata().map_or(true, |m| m.len() != config.len() as u64) {
            return false;
        }
        let mut want = config.parts().map(str::as_bytes).filter(|p| !p.is_empty());
        let mut part: &[u8] = want.next().unwrap_or_default();
        let mut block = vec![0; COMPARE_BLOCK.min(config.len().max(1))];
        loop {
            let n = match f.read(&mut block) {
                Ok(0) => return part.is_empty() && want.next().is_none(),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            // The block against the pieces it spans.
            let mut got = &block[..n];
            while !got.is_empty() {
                if part.is_empty() {
                    match want.next() {
                        Some(p) => part = p,
                        None => return false,
                    }
                }
                let k = part.len().min(got.len());
                if got[..k] != part[..k] {
                    return false;
                }
                (got, part) = (&got[k..], &part[k..]);
            }
        }
    }

    pub async fn install(&self, config: Rendered) -> Result<InstallOutcome, Error> {
        self.install_checked(config, true).await
    }

    /// Install a config whose only difference from the one in force is servers that HAProxy's
    /// runtime API has just accepted: HAProxy itself validated them, so `haproxy -c` is skipped.
    /// (An operator's `check_command` ran before the runtime change: [`Writer::gate`].)
    pub async fn install_accepted(&self, config: Rendered) -> Result<InstallOutcome, Error> {
        self.install_checked(config, false).await
    }

    /// The operator's `check_command`, when one is configured, on a config about to reach
    /// HAProxy through the runtime API: it gates every change, not only reloads. Without one
    /// (the default check is `haproxy -c`, whose parser is the one `add server` uses), nothing
    /// is run.
    pub async fn gate(&self, config: &Rendered) -> Result<(), Error> {
        if self.check_command.is_none() || !self.do_checks {
            return Ok(());
        }
        // Compared and written on the blocking pool, as for an install.
        let (w, text) = (self.clone(), config.clone());
        let due = blocking(move || match w.is_current(&text) {
            true => Ok(false),
            false => write_plain(&w.candidate_path(), &text).map(|()| true),
        })
        .await?;
        if due {
            self.check_candidate().await?;
        }
        Ok(())
    }

    /// Check the candidate written beside the target: removed when it passes, kept as
    /// `<config>.rejected` when refused.
    async fn check_candidate(&self) -> Result<(), Error> {
        let candidate = self.candidate_path();
        if let Err(e) = self.check(&candidate).await {
            let rejected = self.rejected_path();
            let _ = std::fs::rename(&candidate, &rejected);
            return Err(match e {
                Error::Failed { output, .. } => Error::Rejected { rejected, output },
                other => other,
            });
        }
        let _ = std::fs::remove_file(&candidate);
        Ok(())
    }

    /// On the blocking pool: the comparison with the file on disk (at 100,000 servers a file of
    /// the same length, a weight changed, is 4 MB to read), then the candidate for the check, or
    /// the file itself when no check is due: one hand-over for a change HAProxy accepted.
    /// `config` is moved there and back (its pieces are shared, not copied).
    async fn install_checked(&self, config: Rendered, check: bool) -> Result<InstallOutcome, Error> {
        enum Step {
            Done(InstallOutcome),
            Check(Rendered),
        }
        let (w, checked) = (self.clone(), check && self.do_checks);
        let step = blocking(move || {
            if w.is_current(&config) {
                return Ok(Step::Done(InstallOutcome::Unchanged));
            }
            if !w.do_writes {
                return Ok(Step::Done(InstallOutcome::NotWritten));
            }
            if checked {
                write_plain(&w.candidate_path(), &config)?;
                return Ok(Step::Check(config));
            }
            w.install_file(config)?;
            Ok(Step::Done(InstallOutcome::Installed))
        })
        .await?;
        let config = match step {
            Step::Done(outcome) => return Ok(outcome),
            Step::Check(config) => config,
        };
        self.check_candidate().await?;
        let w = self.clone();
        blocking(move || w.install_file(config)).await?;
        Ok(InstallOutcome::Installed)
    }

    /// Replace the target with `config` ([`write_atomic`]) and remember it ([`Written`]).
    fn install_file(&self, config: Rendered) -> Result<(), Error> {
        let mut id = None;
        let written = write_atomic_by(&self.path, |f| {
            config.write_to(f)?;
            f.flush()?;
            id = Some(FileId::of(&f.as_file().metadata()?));
            Ok(())
        });
        // Forgotten first: a failed write may have left anything.
        let mut last = self.written.lock();
        *last = None;
        written?;
        *last = id.map(|id| (id, config));
        Ok(())
    }

    /// Validate a config file without installing it.
    pub async fn check(&self, candidate: &Path) -> Result<(), Error> {
        if !self.do_checks {
            return Ok(());
        }
        let cand = candidate.to_string_lossy().into_owned();
        let target = self.path.to_string_lossy().into_owned();
        let argv: Vec<String> = match &self.check_command {
            Some(argv) => argv.iter().map(|a| a.replace(&target, &cand)).collect(),
            // Not `-q`: HAProxy 2.6 then prints nothing, not even why it refuses a config.
            None => vec![self.haproxy_bin.to_string_lossy().into_owned(), "-c".into(), "-f".into(), cand.clone()],
        };
        let out = run_command(&argv, &[("MYELIN_CANDIDATE", &cand)], self.timeout).await.map_err(|e| match e {
            Error::Failed { command, status, output } => Error::Failed { command, status, output: reason(&output) },
            other => other,
        })?;
        if !out.output.is_empty() {
            debug!(output = %out.output, "Config check passed with output.");
        }
        Ok(())
    }
}

/// HAProxy's answer to `-c` without the notices it prints before every error (its version and
/// path), so that the first line is the reason.
fn reason(output: &str) -> String {
    let kept: Vec<&str> = output
        .lines()
        .filter(|l| !(l.starts_with("[NOTICE]") && (l.contains("haproxy version is") || l.contains("path to executable is"))))
        .collect();
    kept.join("\n")
}

/// How much of haproxy.cfg [`Writer::is_current`] reads at a time.
const COMPARE_BLOCK: usize = 64 * 1024;

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.expect("blocking file task panicked")
}

/// Replace `path` with `bytes` atomically and durably: a temporary file beside it, fsync,
/// rename over it, fsync of the directory (atomic-write-file). Readers see the old or the new
/// file, never a part of one, and a crash after it returns keeps the new one. Used for
/// haproxy.cfg, myelin's state file and `file_output`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_atomic_by(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] of what `write` writes.
fn write_atomic_by(path: &Path, write: impl FnOnce(&mut atomic_write_file::AtomicWriteFile) -> std::io::Result<()>) -> Result<(), Error> {
    let io = |source| Error::Io { action: "writing", path: path.to_path_buf(), source };
    let mut f = atomic_write_file::AtomicWriteFile::open(path).map_err(io)?;
    write(&mut f).map_err(io)?;
    f.commit().map_err(io)
}

/// A candidate for the check, written in place (it is not read until complete).
fn write_plain(path: &Path, config: &Rendered) -> Result<(), Error> {
    let io = |source| Error::Io { action: "writing", path: path.to_path_buf(), source };
    let mut f = std::fs::File::create(path).map_err(io)?;
    config.write_to(&mut f).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path, check: &str) -> Writer {
        Writer {
            path: dir.join("haproxy.cfg"),
            do_writes: true,
            do_checks: true,
            check_command: Some(vec!["/bin/sh".into(), "-c".into(), check.into()]),
            haproxy_bin: "haproxy".into(),
            timeout: Duration::from_secs(5),
            written: Written::default(),
        }
    }

    /// `text` cut into pieces of `size` bytes (the last shorter), as the renderer's are.
    fn cut(text: &str, size: usize) -> Rendered {
        let pieces = text.as_bytes().chunks(size.max(1)).map(|c| std::sync::Arc::from(std::str::from_utf8(c).unwrap())).collect();
        Rendered::of(pieces)
    }

    #[test]
    fn is_current_compares_every_byte_without_reading_a_file_of_another_length() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path(), "true");
        assert!(!w.is_current(&"x".into()), "no file");
        // Several compare blocks, differing only in the last byte or in the length; in one
        // piece, and in pieces smaller than a block, of a block, and spanning blocks.
        let big: String = (0..COMPARE_BLOCK * 3 + 7).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        std::fs::write(&w.path, &big).unwrap();
        let mut last = big.clone();
        last.pop();
        for size in [big.len(), 1000, COMPARE_BLOCK, COMPARE_BLOCK + 13, 7] {
            assert!(w.is_current(&cut(&big, size)), "pieces of {size}");
            assert!(!w.is_current(&cut(&format!("{last}#"), size)), "pieces of {size}");
            let mut early = big.clone().into_bytes();
            early[COMPARE_BLOCK + 3] = b'#';
            assert!(!w.is_current(&cut(&String::from_utf8(early).unwrap(), size)), "pieces of {size}");
        }
        assert!(!w.is_current(&last.as_str().into()));
        assert!(!w.is_current(&format!("{big}a").into()));
        std::fs::write(&w.path, "").unwrap();
        assert!(w.is_current(&"".into()));
        assert!(w.is_current(&Rendered::default()));
        assert!(!w.is_current(&"a".into()));
    }

    /// After an install, the file it wrote is compared in memory; a file written or replaced
    /// by anyone else since is read.
    #[tokio::test]
    async fn what_was_installed_is_known_until_someone_else_writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path(), "true");
        let text = "global\n    maxconn 100\n";
        let (same, other) = (cut(text, 5), cut(&text.replace("100", "200"), 7));
        assert_eq!(w.install_accepted(cut(text, 4)).await.unwrap(), InstallOutcome::Installed);
        assert!(w.written.holds(&w.path, &same).is_some(), "the file just installed is known");
        assert!(w.is_current(&same) && !w.is_current(&other));
        assert_eq!(w.clone().install_accepted(same.clone()).await.unwrap(), InstallOutcome::Unchanged, "clones share it");
        // Written in place by someone else, same length: read, and found different.
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&w.path, text.replace("100", "200")).unwrap();
        assert_eq!(w.written.holds(&w.path, &same), None);
        assert!(!w.is_current(&same) && w.is_current(&other));
        assert_eq!(w.install_accepted(same.clone()).await.unwrap(), InstallOutcome::Installed);
        assert_eq!(std::fs::read_to_string(&w.path).unwrap(), text);
        // Replaced by a rename with the same bytes: read, and found equal.
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &w.path).unwrap();
        assert_eq!(w.written.holds(&w.path, &same), None);
        assert!(w.is_current(&same));
        // A failed install forgets what it knew.
        let blocked = Writer { path: dir.path().join("missing/haproxy.cfg"), ..w.clone() };
        assert!(blocked.install_accepted(other.clone()).await.is_err());
        assert!(w.written.lock().is_none());
    }

    #[test]
    fn texts_cut_differently_compare_by_their_bytes() {
        let text = "frontend a\n    bind :80\nbackend a\n";
        assert!(cut(text, 3).same_text(&cut(text, 5)) && cut(text, 4).same_text(&cut(text, 4)));
        assert!(!cut(text, 3).same_text(&cut(&text.replace(":80", ":81"), 5)));
        assert!(!cut(text, 4).same_text(&cut(&text.replace(":80", ":81"), 4)));
        assert!(!cut(text, 4).same_text(&cut(&text[1..], 4)));
        let pieces = |p: &[&str]| Rendered::of(p.iter().map(|s| std::sync::Arc::from(*s)).collect());
        assert!(pieces(&["ab", "c"]).same_text(&pieces(&["a", "bc"])), "as many pieces, cut elsewhere");
        assert!(!pieces(&["ab", "c"]).same_text(&pieces(&["a", "bd"])));
    }

    #[tokio::test]
    async fn installs_only_changes_and_keeps_rejects_aside() {
        let dir = tempfile::tempdir().unwrap();
        // The target path in the check command is replaced by the candidate's: the check refuses
        // any candidate with "bad" in it.
        let target = dir.path().join("haproxy.cfg");
        let w = writer(dir.path(), &format!("test -f \"$MYELIN_CANDIDATE\" && ! grep -q bad {t}", t = target.display()));
        assert_eq!(w.install("good 1\n".into()).await.unwrap(), InstallOutcome::Installed);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "good 1\n");
        assert_eq!(w.install("good 1\n".into()).await.unwrap(), InstallOutcome::Unchanged);

        let e = w.install("bad\n".into()).await.unwrap_err();
        assert!(matches!(e, Error::Rejected { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "good 1\n");
        assert_eq!(std::fs::read_to_string(w.rejected_path()).unwrap(), "bad\n");
        assert!(!w.candidate_path().exists());
    }

    #[tokio::test]
    async fn accepted_changes_skip_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path(), "exit 1");
        assert!(w.install("x\n".into()).await.is_err());
        assert_eq!(w.install_accepted("x\n".into()).await.unwrap(), InstallOutcome::Installed);
        assert_eq!(std::fs::read_to_string(&w.path).unwrap(), "x\n");
    }

    /// HAProxy itself (when installed): a config it refuses comes back with its reason.
    #[tokio::test]
    async fn haproxy_reason_is_kept() {
        if std::process::Command::new("haproxy").arg("-v").output().is_err() {
            eprintln!("haproxy not installed: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let w = Writer { check_command: None, ..writer(dir.path(), "") };
        let e = w.install("global\n    no-such-keyword-here\n".into()).await.unwrap_err();
        let Error::Rejected { output, .. } = &e else { panic!("{e}") };
        let first = output.lines().next().unwrap_or("");
        assert!(first.contains("unknown keyword 'no-such-keyword-here'"), "{output}");
        assert!(!output.contains("haproxy version is"), "{output}");
    }

    #[test]
    fn haproxy_notices_are_dropped() {
        let out = "[NOTICE]   (1) : haproxy version is 2.6.12\n[NOTICE]   (1) : path to executable is /usr/sbin/haproxy\n[ALERT]    (1) : config : parsing [x:2] : unknown keyword 'x'";
        assert_eq!(reason(out), "[ALERT]    (1) : config : parsing [x:2] : unknown keyword 'x'");
    }

    #[tokio::test]
    async fn do_writes_off_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer { do_writes: false, ..writer(dir.path(), "true") };
        assert_eq!(w.install("x\n".into()).await.unwrap(), InstallOutcome::NotWritten);
        assert!(!w.path.exists());
    }
}
