//! What `/status` serves and `myelin status` prints: a snapshot of the daemon's state, made by
//! the daemon task (the only owner of that state) and published to the admin server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The whole state, as of `at`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    /// When this snapshot was made (RFC 3339, UTC).
    pub at: String,
    pub started_at: String,
    /// Every service's discovery has delivered a complete set at least once.
    pub ready: bool,
    pub config: ConfigStatus,
    pub haproxy: HaproxyStatus,
    /// Synapse's `file_output`, when configured.
    pub file_output: Option<FileOutputStatus>,
    /// Shared with the daemon: a snapshot re-uses the entries of services that did not change.
    pub services: ServiceMap,
    /// This host's name in registries, when it announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_as: Option<String>,
    /// What this host announces, by service: where, how it goes, which ids.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub announce: BTreeMap<String, AnnounceStatus>,
}

/// One service's announcing (its reconcile loop).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// The registry: its kind, members and path.
    pub target: String,
    /// `waiting` (for this host's engine), `connecting`, `announcing`, `failing` (reconnecting
    /// with backoff) or `stopped`.
    pub state: String,
    /// The last failure, while failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The instance ids this host holds in the registry.
    pub published: Vec<String>,
    /// Seconds other hosts keep seeing them if this host dies without withdrawing them.
    pub expiry_seconds: f64,
}

/// Every service's status by name: a persistent map, so that the daemon publishes a new
/// snapshot by changing the entries of the services that changed (O(log n) each), sharing the
/// rest with the previous snapshot, instead of copying the map.
pub type ServiceMap = imbl::OrdMap<String, std::sync::Arc<ServiceStatus>>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub path: String,
    /// The outcome of the last SIGHUP, if there was one.
    pub last_reload: Option<Outcome>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HaproxyStatus {
    pub config_file_path: String,
    /// The last time myelin rendered and installed (or tried to) a haproxy.cfg.
    pub last_apply: Option<Outcome>,
    /// The last reload of HAProxy (through the master CLI when configured, else `reload_command`).
    pub last_reload: Option<Outcome>,
    /// HAProxy's runtime API (the stats socket), when it is used: `ok` since it last answered,
    /// or `failed` with why since it last failed (a command, a drift check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_api: Option<Outcome>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileOutputStatus {
    pub directory: String,
    pub last_write: Option<Outcome>,
}

/// What happened, when, and (for failures) why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub at: String,
    /// A short word: `installed`, `unchanged`, `not_written`, `rejected`, `failed`, `ok`,
    /// `invalid`, ...
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    pub fn now(outcome: &str, error: Option<String>) -> Self {
        Self { at: timestamp(SystemTime::now()), outcome: outcome.to_owned(), error }
    }

    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// The state of a service's discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatcherState {
    /// Opened, no complete set yet.
    Starting,
    /// Delivered a complete set and is connected.
    Synced,
    /// The source reports a problem (its file is gone, its registry answers an error): it does
    /// not see the current set, and the service keeps its backends until it does again.
    Failing,
    /// Lost its source; reconnecting with backoff. The service keeps its backends.
    Disconnected,
    /// The method is not supported yet: the service has its `default_servers` only.
    Unsupported,
}

impl WatcherState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Synced => "synced",
            Self::Failing => "failing",
            Self::Disconnected => "disconnected",
            Self::Unsupported => "unsupported",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The discovery method (`file`, `docker`, ...).
    pub method: std::borrow::Cow<'static, str>,
    pub watcher: WatcherState,
    /// Synced at least once since it was (re)started.
    pub synced: bool,
    /// What HAProxy is asked to route to (after `default_servers` and port overrides): shared
    /// with the desired state, listed when the status is serialized.
    pub backends: myelin_core::RoutedList,
    /// The last time discovery changed this service's backends.
    pub last_update: Option<String>,
    /// The last problem discovery reported.
    pub last_error: Option<String>,
    /// The outcome of the last apply that changed this service (shared by all it changed).
    pub last_apply: Option<std::sync::Arc<Outcome>>,
    pub rejected: u64,
    pub reconnects: u64,
}

/// A backend routed by a service: the same shape `file_output` writes.
pub type BackendStatus = myelin_core::RoutedBackend;

/// RFC 3339 in UTC, to the second.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// "5s ago", "3m ago", ...; the timestamp itself when it cannot be read.
fn ago(ts: &str, now: SystemTime) -> String {
    match humantime::parse_rfc3339(ts) {
        Ok(t) => {
            let d = now.duration_since(t).unwrap_or(Duration::ZERO).as_secs();
            let d = Duration::from_secs(d);
            if d.is_zero() {
                "just now".into()
            } else {
                format!("{} ago", humantime::format_duration(d).to_string().split(' ').take(2).collect::<Vec<_>>().join(" "))
            }
        }
        Err(_) => ts.to_owned(),
    }
}

fn outcome_text(o: &Option<Outcome>, now: SystemTime) -> String {
    match o {
        None => "-".into(),
        Some(o) => match &o.error {
            None => format!("{} ({})", o.outcome, ago(&o.at, now)),
            Some(e) => format!("{} ({}): {e}", o.outcome, ago(&o.at, now)),
        },
    }
}

/// The snapshot as a table for a person at a terminal.
pub fn render_table(s: &Snapshot, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "myelin {}  {}  up since {}", s.version, if s.ready { "ready" } else { "NOT READY (waiting for discovery)" }, s.started_at);
    let _ = writeln!(out, "config   {}  last reload: {}", s.config.path, outcome_text(&s.config.last_reload, now));
    let _ = writeln!(out, "haproxy  {}", s.haproxy.config_file_path);
    let _ = writeln!(out, "  last apply:  {}", outcome_text(&s.haproxy.last_apply, now));
    let _ = writeln!(out, "  last reload: {}", outcome_text(&s.haproxy.last_reload, now));
    if s.haproxy.runtime_api.is_some() {
        let _ = writeln!(out, "  runtime API: {}", outcome_text(&s.haproxy.runtime_api, now));
    }
    if let Some(f) = &s.file_output {
        let _ = writeln!(out, "file_output {}  last write: {}", f.directory, outcome_text(&f.last_write, now));
    }
    let _ = writeln!(out);
    let header = ["SERVICE", "METHOD", "WATCHER", "BACKENDS", "LAST UPDATE", "LAST APPLY", "REJECTED", "RECONNECTS"];
    let mut rows: Vec<[String; 8]> = Vec::new();
    for (name, svc) in &s.services {
        rows.push([
            name.clone(),
            svc.method.to_string(),
            svc.watcher.as_str().to_owned(),
            svc.backends.len().to_string(),
            svc.last_update.as_deref().map_or("-".into(), |t| ago(t, now)),
            svc.last_apply.as_ref().map_or("-".into(), |o| o.outcome.clone()),
            svc.rejected.to_string(),
            svc.reconnects.to_string(),
        ]);
    }
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        l
    };
    let _ = writeln!(out, "{}", line(&header.map(String::from)));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no services configured)");
    }
    // Details a person needs to act on: problems and the backends of each service.
    for (name, svc) in &s.services {
        if let Some(e) = &svc.last_error {
            let _ = writeln!(out, "\n{name}: last discovery problem: {e}");
        }
        if let Some(Outcome { error: Some(e), .. }) = svc.last_apply.as_deref() {
            let _ = writeln!(out, "\n{name}: last apply failed: {e}");
        }
    }
    if !s.announce.is_empty() {
        let _ = writeln!(out, "\nannouncing as {}:", s.announce_as.as_deref().unwrap_or("-"));
        for (name, a) in &s.announce {
            let _ = writeln!(out, "  {name}  {}  to {}  ({} published; expiry {}s)", a.state, a.target, a.published.len(), a.expiry_seconds);
            if let Some(e) = &a.error {
                let _ = writeln!(out, "    error: {e}");
            }
            for id in &a.published {
                let _ = writeln!(out, "    {id}");
            }
        }
    }
    for (name, svc) in &s.services {
        if svc.backends.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{name}:");
        for b in &svc.backends.to_vec() {
            let w = b.weight.map(|w| format!("  weight {w}")).unwrap_or_default();
            let _ = writeln!(out, "  {}  {}:{}{w}", b.name, b.host, b.port);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut services = ServiceMap::new();
        services.insert(
            "web".to_owned(),
            std::sync::Arc::new(ServiceStatus {
                method: "file".into(),
                watcher: WatcherState::Synced,
                synced: true,
                backends: vec![BackendStatus { name: "a".into(), host: "127.0.0.1".into(), port: 8080, weight: Some(5), labels: Default::default() }].into(),
                last_update: Some(timestamp(t0)),
                last_error: None,
                last_apply: Some(std::sync::Arc::new(Outcome { at: timestamp(t0), outcome: "installed".into(), error: None })),
                rejected: 2,
                reconnects: 0,
            }),
        );
        services.insert(
            "api".to_owned(),
            std::sync::Arc::new(ServiceStatus {
                method: "docker".into(),
                watcher: WatcherState::Disconnected,
                synced: false,
                backends: Default::default(),
                last_update: None,
                last_error: Some("cannot read x: gone".into()),
                last_apply: None,
                rejected: 0,
                reconnects: 3,
            }),
        );
        Snapshot {
            version: "0.1.0".into(),
            at: timestamp(t0),
            started_at: timestamp(t0),
            ready: false,
            config: ConfigStatus {
                path: "/etc/myelin/myelin.yaml".into(),
                last_reload: Some(Outcome { at: timestamp(t0), outcome: "invalid".into(), error: Some("line 3: bad".into()) }),
            },
            haproxy: HaproxyStatus { config_file_path: "/etc/haproxy/haproxy.cfg".into(), last_apply: None, last_reload: None, runtime_api: None },
            file_output: None,
            services,
            announce_as: Some("host-a".into()),
            announce: BTreeMap::from([(
                "web".to_owned(),
                AnnounceStatus {
                    target: "etcd http://127.0.0.1:2379 /services/web".into(),
                    state: "failing".into(),
                    error: Some("etcd http://127.0.0.1:2379 is unreachable: connection refused".into()),
                    published: vec!["host-a_web-1_8000".into()],
                    expiry_seconds: 10.0,
                },
            )]),
        }
    }

    #[test]
    fn json_round_trips() {
        let s = snapshot();
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"watcher\":\"disconnected\""), "{text}");
        assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), s);
    }

    #[test]
    fn table_shows_what_a_person_needs() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_065);
        let t = render_table(&snapshot(), now);
        assert!(t.contains("NOT READY"), "{t}");
        assert!(t.contains("last reload: invalid (1m 5s ago): line 3: bad"), "{t}");
        let rows: Vec<&str> = t.lines().skip_while(|l| !l.starts_with("SERVICE")).take(3).collect();
        assert_eq!(rows[0].split_whitespace().collect::<Vec<_>>(), ["SERVICE", "METHOD", "WATCHER", "BACKENDS", "LAST", "UPDATE", "LAST", "APPLY", "REJECTED", "RECONNECTS"]);
        assert_eq!(rows[1].split_whitespace().collect::<Vec<_>>(), ["api", "docker", "disconnected", "0", "-", "-", "0", "3"]);
        assert_eq!(rows[2].split_whitespace().collect::<Vec<_>>(), ["web", "file", "synced", "1", "1m", "5s", "ago", "installed", "2", "0"]);
        // Columns line up.
        assert_eq!(rows[0].find("WATCHER"), rows[1].find("disconnected"));
        assert!(t.contains("api: last discovery problem: cannot read x: gone"), "{t}");
        assert!(t.contains("  a  127.0.0.1:8080  weight 5"), "{t}");
        assert!(t.contains("announcing as host-a:\n  web  failing  to etcd http://127.0.0.1:2379 /services/web  (1 published; expiry 10s)\n    error: etcd http://127.0.0.1:2379 is unreachable: connection refused\n    host-a_web-1_8000\n"), "{t}");
    }
}
