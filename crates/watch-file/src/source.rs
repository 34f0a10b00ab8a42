//! The `file` source: a YAML or JSON file listing backends, watched with `notify`.
//!
//! The file's directory is watched rather than the file, so editors and tools that replace the
//! file (write a temporary, rename it over) are followed, and so is a file that is deleted and
//! created again. Events are coalesced over a quiet period (capped, so a file that changes
//! non-stop is still read). An unreadable or malformed file is reported and the previous
//! backends stay; a malformed entry is reported and the others are used.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::stream;
use myelin_source::{Cause, Discovered, SourceError, Update, UpdateStream};
use notify::{RecursiveMode, Watcher};
use serde_yaml_ng::Value;
use tokio::sync::mpsc;

const FIELDS: &[&str] = &["name", "host", "port", "weight", "labels"];

/// Parse a backends file: a list of `{name, host, port, weight, labels}`, or a mapping with
/// such a list under `backends`. Returns the entries that parsed, and the index and reason of
/// each that did not. Values are not validated here (the store does that).
pub fn parse_backends(text: &str) -> Result<(Vec<Discovered>, Vec<(usize, String)>), String> {
    if text.trim().is_empty() {
        return Ok((vec![], vec![]));
    }
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let list = match doc {
        Value::Sequence(s) => s,
        Value::Mapping(mut m) => match m.remove("backends") {
            Some(Value::Sequence(s)) if m.is_empty() => s,
            Some(Value::Null) if m.is_empty() => vec![],
            _ => return Err("expected a list of backends, or a mapping with only a `backends` list".into()),
        },
        Value::Null => vec![],
        _ => return Err("expected a list of backends".into()),
    };
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, entry) in list.into_iter().enumerate() {
        match entry_of(entry) {
            Ok(d) => ok.push(d),
            Err(reason) => bad.push((i, reason)),
        }
    }
    Ok((ok, bad))
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn entry_of(v: Value) -> Result<Discovered, String> {
    let Value::Mapping(m) = v else { return Err("not a mapping".into()) };
    let mut d = Discovered::default();
    let mut have_host = false;
    let mut have_port = false;
    for (k, v) in m {
        let key = scalar(&k).ok_or("a key is not a string")?;
        let text = || scalar(&v).ok_or_else(|| format!("`{key}` must be a single value"));
        match key.as_str() {
            "name" => d.name = Some(text()?),
            "host" => {
                d.host = text()?;
                have_host = true;
            }
            "port" => {
                d.port = text()?;
                have_port = true;
            }
            "weight" => d.weight = Some(text()?),
            "labels" => {
                let Value::Mapping(labels) = v else { return Err("`labels` must be a mapping".into()) };
                for (lk, lv) in labels {
                    let (Some(lk), Some(lv)) = (scalar(&lk), scalar(&lv)) else {
                        return Err("label keys and values must be single values".into());
                    };
                    d.labels.insert(lk, lv);
                }
            }
            other => return Err(format!("unknown field `{other}` (expected one of {})", FIELDS.join(", "))),
        }
    }
    if !have_host || !have_port {
        return Err("`host` and `port` are required".into());
    }
    Ok(d)
}

fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|e| SourceError::failed_with(path.display().to_string(), "cannot read", e))
}

fn malformed(path: String, reason: impl std::fmt::Display) -> SourceError {
    SourceError::Failed { origin: path, what: "is malformed".into(), cause: Some(Cause::msg(reason)) }
}

fn updates_of(path: &Path, bytes: &[u8]) -> Vec<Result<Update, SourceError>> {
    let p = path.display().to_string();
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => return vec![Err(malformed(p, "not UTF-8"))],
    };
    match parse_backends(text) {
        Err(reason) => vec![Err(malformed(p, reason))],
        Ok((ok, bad)) => {
            let mut out: Vec<_> = bad.into_iter().map(|(index, reason)| Err(SourceError::entry(p.clone(), format!("entry {index}"), reason))).collect();
            out.push(Ok(Update::Reset(ok)));
            out
        }
    }
}

struct State {
    path: PathBuf,
    quiet: Duration,
    // Kept alive for as long as the stream is.
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    last: Option<Vec<u8>>,
    queue: VecDeque<Result<Update, SourceError>>,
}

impl State {
    /// Read the file and queue what it says, unless it has not changed since the last read.
    fn read_into_queue(&mut self) {
        match read(&self.path) {
            Ok(bytes) => {
                if self.last.as_ref() != Some(&bytes) {
                    self.queue.extend(updates_of(&self.path, &bytes));
                    self.last = Some(bytes);
                }
            }
            Err(e) => {
                self.last = None;
                self.queue.push_back(Err(e));
            }
        }
    }

    /// Wait for a change in the directory, then for a quiet period (at most ten of them).
    async fn wait_for_change(&mut self) -> bool {
        if self.events.recv().await.is_none() {
            return false;
        }
        let cap = tokio::time::Instant::now() + self.quiet * 10;
        loop {
            let deadline = (tokio::time::Instant::now() + self.quiet).min(cap);
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(())) if tokio::time::Instant::now() < cap => continue,
                Ok(None) => return false,
                _ => return true,
            }
        }
    }
}

/// Watch `path` and yield its backends: a `Reset` now and after each change.
pub fn file_source(path: PathBuf, quiet: Duration) -> UpdateStream {
    let (tx, events) = mpsc::unbounded_channel();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let watcher = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
    let watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            let err = SourceError::failed_with(dir.display().to_string(), "cannot watch", e);
            return Box::pin(stream::once(async move { Err(err) }));
        }
    };
    let mut state = State { path, quiet, _watcher: watcher, events, last: None, queue: VecDeque::new() };
    state.read_into_queue();
    Box::pin(stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.queue.pop_front() {
                return Some((item, st));
            }
            if !st.wait_for_change().await {
                return None;
            }
            st.read_into_queue();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn parses_lists_and_reports_bad_entries() {
        let (ok, bad) = parse_backends(
            "- {name: a, host: 127.0.0.1, port: 80, weight: 5, labels: {az: a}}\n- {host: 127.0.0.2, port: '81'}\n- {host: x, prot: 1}\n- {host: [1]}\n- 7\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].weight.as_deref(), Some("5"));
        assert_eq!(ok[0].labels["az"], "a");
        assert_eq!(ok[1].port, "81");
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(bad[0].1.contains("unknown field `prot`"));
        let (ok, _) = parse_backends("{\"backends\": [{\"host\": \"127.0.0.1\", \"port\": 1}]}").unwrap();
        assert_eq!(ok.len(), 1);
        assert!(parse_backends("{foo: 1}").is_err());
        assert!(parse_backends("[unclosed").is_err());
        assert_eq!(parse_backends("").unwrap().0.len(), 0);
    }

    async fn next(s: &mut UpdateStream) -> Result<Update, SourceError> {
        tokio::time::timeout(Duration::from_secs(5), s.next()).await.expect("an update within 5 s").expect("stream open")
    }

    fn reset_len(u: Result<Update, SourceError>) -> usize {
        match u {
            Ok(Update::Reset(v)) => v.len(),
            other => panic!("expected a reset, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn follows_edits_replacements_and_bad_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backends.yaml");
        std::fs::write(&path, "- {host: 127.0.0.1, port: 1}\n").unwrap();
        let mut s = file_source(path.clone(), Duration::from_millis(20));
        assert_eq!(reset_len(next(&mut s).await), 1);

        // In-place write.
        std::fs::write(&path, "- {host: 127.0.0.1, port: 1}\n- {host: 127.0.0.1, port: 2}\n").unwrap();
        assert_eq!(reset_len(next(&mut s).await), 2);

        // Malformed: reported, nothing else.
        std::fs::write(&path, "- {host: [\n").unwrap();
        assert!(matches!(next(&mut s).await, Err(e) if e.report().contains("is malformed")));

        // Replaced by rename, as editors do.
        let tmp = dir.path().join(".backends.yaml.swp");
        std::fs::write(&tmp, "- {host: 127.0.0.1, port: 3}\n- {host: 127.0.0.1, port: 4}\n- {host: 127.0.0.1, port: 5}\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(reset_len(next(&mut s).await), 3);

        // Deleted, then created again.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(next(&mut s).await, Err(e) if e.report().contains("backends.yaml: cannot read")));
        std::fs::write(&path, "[]").unwrap();
        assert_eq!(reset_len(next(&mut s).await), 0);
    }

    #[tokio::test]
    async fn missing_directory_ends_the_stream() {
        let mut s = file_source(PathBuf::from("/nonexistent-myelin-dir/backends.yaml"), Duration::from_millis(20));
        assert!(matches!(next(&mut s).await, Err(e) if e.report().contains("cannot watch")));
        assert!(s.next().await.is_none());
    }
}
