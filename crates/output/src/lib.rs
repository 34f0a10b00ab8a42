//! Synapse's `file_output`: for consumers that are not HAProxy, one `<service>.json` per service
//! in `output_directory`, holding the backends HAProxy is asked to route to. A file is written
//! only when its content changes, atomically and durably (`myelin_haproxy::write_atomic`, as
//! haproxy.cfg); `*.json` files of services that are no longer configured are removed,
//! as Synapse does.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use myelin_core::{DesiredState, ServiceName, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: myelin_haproxy::Error },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("cannot list {path}: {source}")]
    List { path: PathBuf, source: std::io::Error },
}

/// One backend, as Synapse writes it (the shape the status page shows too).
pub type Entry = myelin_core::RoutedBackend;

/// What one [`FileOutput::write`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub written: Vec<String>,
    pub removed: Vec<String>,
}

/// The entries of every service: the servers of the desired state (so `default_servers` and
/// `backend_port_override` are applied), with the labels discovery gave.
pub fn entries(desired: &DesiredState, store: &Store) -> BTreeMap<ServiceName, Vec<Entry>> {
    desired.services.iter().map(|(name, svc)| (name.clone(), svc.routed(&store.backends(name)))).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutput {
    pub dir: PathBuf,
}

impl FileOutput {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Write the files of these services only (the others did not change); nothing is
    /// removed. Every service is attempted; the first error is returned after all of them were.
    pub fn update(&self, services: &BTreeMap<ServiceName, Vec<Entry>>) -> Result<Written, Error> {
        let mut done = Written::default();
        let mut first_error = None;
        self.write_files(services, &mut done, &mut first_error)?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    fn write_files(&self, services: &BTreeMap<ServiceName, Vec<Entry>>, done: &mut Written, first_error: &mut Option<Error>) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::CreateDir { path: self.dir.clone(), source })?;
        for (name, list) in services {
            let path = self.dir.join(format!("{name}.json"));
            let mut text = serde_json::to_string_pretty(list).expect("entries serialize");
            text.push('\n');
            if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
                continue;
            }
            match myelin_haproxy::write_atomic(&path, text.as_bytes()) {
                Ok(()) => done.written.push(name.to_string()),
                Err(e) => {
                    first_error.get_or_insert(Error::Write { path, source: e });
                }
            }
        }
        Ok(())
    }

    /// Bring the directory in line with `services` (all of them): their files are written and
    /// the files of services not in it removed. Every service is attempted; the first error is
    /// returned after all of them were.
    pub fn write(&self, services: &BTreeMap<ServiceName, Vec<Entry>>) -> Result<Written, Error> {
        let mut done = Written::default();
        let mut first_error = None;
        self.write_files(services, &mut done, &mut first_error)?;
        let listing = std::fs::read_dir(&self.dir).map_err(|source| Error::List { path: self.dir.clone(), source })?;
        let mut stale: Vec<PathBuf> = listing
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
            .filter(|p| {
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                !services.keys().any(|n| n.as_str() == stem)
            })
            .collect();
        stale.sort();
        for p in stale {
            match std::fs::remove_file(&p) {
                Ok(()) => done.removed.push(p.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned()),
                Err(source) => {
                    first_error.get_or_insert(Error::Remove { path: p, source });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn svc(s: &str) -> ServiceName {
        ServiceName::parse(s).unwrap()
    }

    fn entry(name: &str, port: u16) -> Entry {
        Entry { name: name.into(), host: "127.0.0.1".into(), port, weight: None, labels: BTreeMap::new() }
    }

    fn read(dir: &Path, name: &str) -> Vec<Entry> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    }

    #[test]
    fn writes_on_change_only_and_removes_stale_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let out = FileOutput::new(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gone.json"), "[]").unwrap();
        std::fs::write(dir.join("notes.txt"), "kept").unwrap();

        let mut services = BTreeMap::from([(svc("web"), vec![entry("a", 1)]), (svc("api"), vec![])]);
        let w = out.write(&services).unwrap();
        assert_eq!(w, Written { written: vec!["api".into(), "web".into()], removed: vec!["gone".into()] });
        assert_eq!(read(&dir, "web.json"), vec![entry("a", 1)]);
        assert_eq!(read(&dir, "api.json"), vec![]);
        assert!(dir.join("notes.txt").exists());

        // Nothing changed: nothing written (the file keeps its inode and mtime).
        let before = std::fs::metadata(dir.join("web.json")).unwrap().modified().unwrap();
        assert_eq!(out.write(&services).unwrap(), Written::default());
        assert_eq!(std::fs::metadata(dir.join("web.json")).unwrap().modified().unwrap(), before);

        services.insert(svc("web"), vec![entry("a", 1), entry("b", 2)]);
        services.remove(&svc("api"));
        let w = out.write(&services).unwrap();
        assert_eq!(w, Written { written: vec!["web".into()], removed: vec!["api".into()] });
        assert_eq!(read(&dir, "web.json").len(), 2);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn an_unwritable_directory_is_an_error_that_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let e = FileOutput::new(file.join("sub")).write(&BTreeMap::new()).unwrap_err().to_string();
        assert!(e.starts_with("cannot create ") && e.contains("a-file/sub"), "{e}");
    }

    #[test]
    fn entries_follow_the_desired_state() {
        use myelin_core::{Discovered, Update};
        let yaml = "haproxy: {do_reloads: false}\nservices:\n  web:\n    discovery: {method: static}\n    backend_port_override: 9000\n  api:\n    discovery: {method: static}\n    default_servers: [{name: d1, host: 127.0.0.2, port: 81}]\n";
        let loaded = myelin_config::load_str(Path::new("/etc/myelin/t.yaml"), yaml).unwrap();
        let mut store = Store::new(loaded.services.iter().map(|(n, s)| (n.clone(), s.store)));
        let mut d = Discovered::new("127.0.0.1", 1).named("a").weighted(7);
        d.labels.insert("az".into(), "x".into());
        store.apply(&svc("web"), "", Update::Reset(vec![d]));
        let e = entries(&DesiredState::build(&loaded.spec, &store), &store);
        let mut a = entry("a", 9000);
        a.weight = Some(7);
        a.labels.insert("az".into(), "x".into());
        assert_eq!(e[&svc("web")], vec![a]);
        let mut d1 = entry("d1", 81);
        d1.host = "127.0.0.2".into();
        assert_eq!(e[&svc("api")], vec![d1]);
    }
}
