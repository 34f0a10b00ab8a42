//! myelin's own state file (`state_file_path`, Synapse's option): the last known backends of
//! every service, written atomically after changes, read at start-up (when younger than
//! `state_file_ttl`) so that a restart while a registry is down does not empty HAProxy.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use myelin_core::{Backend, Discovered, ServiceName, Store};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    services: BTreeMap<String, Vec<Discovered>>,
}

/// The store's backends as the state file's text.
pub fn snapshot(store: &Store) -> String {
    let services = store
        .services()
        .map(|name| {
            let list = store
                .backends(name)
                .into_values()
                .map(|b| Discovered {
                    name: Some(b.name.to_string()),
                    host: b.host.to_string(),
                    port: b.port.to_string(),
                    weight: b.weight.map(|w| w.to_string()),
                    labels: b.labels,
                })
                .collect();
            (name.to_string(), list)
        })
        .collect();
    serde_json::to_string_pretty(&File { version: 1, services }).expect("serializing strings cannot fail") + "\n"
}

/// Write atomically and durably (as haproxy.cfg is written).
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    Ok(myelin_haproxy::write_atomic(path, text.as_bytes())?)
}

/// Backends per service from a state file younger than `ttl`. The file is untrusted: every
/// record is validated again, and invalid ones are skipped.
pub fn read(path: &Path, ttl: Duration) -> anyhow::Result<BTreeMap<ServiceName, Vec<Backend>>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let age = SystemTime::now().duration_since(meta.modified()?).unwrap_or_default();
    if age > ttl {
        anyhow::bail!("{} is {} s old, older than state_file_ttl ({} s)", path.display(), age.as_secs(), ttl.as_secs());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: File = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(file.version == 1, "{}: unknown version {}", path.display(), file.version);
    let mut out = BTreeMap::new();
    for (name, list) in file.services {
        let Ok(name) = ServiceName::parse(&name) else { continue };
        out.insert(name, list.iter().filter_map(|d| d.validate().ok()).collect());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_core::{StoreOptions, Update};

    #[test]
    fn round_trip_and_ttl() {
        let web = ServiceName::parse("web").unwrap();
        let mut store = Store::new([(web.clone(), StoreOptions::default())]);
        store.apply(&web, "", Update::Reset(vec![Discovered::new("127.0.0.1", 8080).named("a").weighted(5)]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, &snapshot(&store)).unwrap();
        let back = read(&path, Duration::from_secs(60)).unwrap();
        assert_eq!(back[&web], store.backends(&web).into_values().collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(20));
        assert!(read(&path, Duration::from_millis(1)).is_err());
        std::fs::write(&path, "{\"version\":1,\"services\":{\"web\":[{\"name\":\"x\",\"host\":\"a b\",\"port\":\"1\",\"weight\":null,\"labels\":{}}]}}").unwrap();
        assert!(read(&path, Duration::from_secs(60)).unwrap()[&web].is_empty());
    }
}
