use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::debug;

use crate::command::run_command;
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
/// configured check command), fsync, rename over the target. A rejected candidate is kept as
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
}

impl Writer {
    pub fn candidate_path(&self) -> PathBuf {
        sibling(&self.path, ".myelin-new")
    }

    pub fn rejected_path(&self) -> PathBuf {
        sibling(&self.path, ".rejected")
    }

    /// Whether the file on disk holds exactly `config`.
    pub fn is_current(&self, config: &str) -> bool {
        std::fs::read(&self.path).is_ok_and(|b| b == config.as_bytes())
    }

    pub async fn install(&self, config: &str) -> Result<InstallOutcome, Error> {
        self.install_checked(config, true).await
    }

    /// Install a config whose only difference from the one in force is servers that HAProxy's
    /// runtime API has just accepted: HAProxy itself validated them, so `haproxy -c` is skipped.
    pub async fn install_accepted(&self, config: &str) -> Result<InstallOutcome, Error> {
        self.install_checked(config, false).await
    }

    async fn install_checked(&self, config: &str, check: bool) -> Result<InstallOutcome, Error> {
        if self.is_current(config) {
            return Ok(InstallOutcome::Unchanged);
        }
        if !self.do_writes {
            return Ok(InstallOutcome::NotWritten);
        }
        let candidate = self.candidate_path();
        let bytes = config.as_bytes().to_vec();
        let c = candidate.clone();
        blocking(move || write_synced(&c, &bytes)).await?;
        let checked = if check { self.check(&candidate).await } else { Ok(()) };
        if let Err(e) = checked {
            let rejected = self.rejected_path();
            let _ = std::fs::rename(&candidate, &rejected);
            return Err(match e {
                Error::Failed { output, .. } => Error::Rejected { rejected, output },
                other => other,
            });
        }
        let (c, target) = (candidate, self.path.clone());
        blocking(move || {
            std::fs::rename(&c, &target).map_err(|source| Error::Io { action: "renaming onto", path: target.clone(), source })?;
            sync_dir(&target)
        })
        .await?;
        Ok(InstallOutcome::Installed)
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

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.expect("blocking file task panicked")
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io { action: "writing", path: path.to_path_buf(), source };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// fsync the directory holding `path`, so the rename survives a crash.
fn sync_dir(path: &Path) -> Result<(), Error> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io { action: "syncing directory of", path: path.to_path_buf(), source })
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
        }
    }

    #[tokio::test]
    async fn installs_only_changes_and_keeps_rejects_aside() {
        let dir = tempfile::tempdir().unwrap();
        // The target path in the check command is replaced by the candidate's: the check refuses
        // any candidate with "bad" in it.
        let target = dir.path().join("haproxy.cfg");
        let w = writer(dir.path(), &format!("test -f \"$MYELIN_CANDIDATE\" && ! grep -q bad {t}", t = target.display()));
        assert_eq!(w.install("good 1\n").await.unwrap(), InstallOutcome::Installed);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "good 1\n");
        assert_eq!(w.install("good 1\n").await.unwrap(), InstallOutcome::Unchanged);

        let e = w.install("bad\n").await.unwrap_err();
        assert!(matches!(e, Error::Rejected { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "good 1\n");
        assert_eq!(std::fs::read_to_string(w.rejected_path()).unwrap(), "bad\n");
        assert!(!w.candidate_path().exists());
    }

    #[tokio::test]
    async fn accepted_changes_skip_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path(), "exit 1");
        assert!(w.install("x\n").await.is_err());
        assert_eq!(w.install_accepted("x\n").await.unwrap(), InstallOutcome::Installed);
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
        let e = w.install("global\n    no-such-keyword-here\n").await.unwrap_err();
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
        assert_eq!(w.install("x\n").await.unwrap(), InstallOutcome::NotWritten);
        assert!(!w.path.exists());
    }
}
