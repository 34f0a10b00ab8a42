//! ZooKeeper for the tests: the suite's shared server (`integration/zookeeper.sh`, started once
//! per test process, stopped by `make test`), private servers for the tests that stop or wipe
//! theirs, and a registering client that creates ephemeral nodes as Nerve or a Finagle
//! announcer does. 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use zookeeper_client::{Acls, Client, CreateMode};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("zookeeper.sh")
}

fn run_script(verb: &str, dir: &Path, port: Option<u16>) -> Result<()> {
    run_script_env(verb, dir, port, &[])
}

fn run_script_env(verb: &str, dir: &Path, port: Option<u16>, vars: &[(&str, String)]) -> Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).arg(verb).env("MYELIN_ZK_DIR", dir);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    if let Some(p) = port {
        // A private server: it dies with this process, even one that aborts.
        cmd.env("MYELIN_ZK_PORT", p.to_string()).env("MYELIN_ZK_OWNER", std::process::id().to_string());
    }
    let out = cmd.output().with_context(|| format!("running zookeeper.sh {verb}"))?;
    if !out.status.success() {
        bail!("zookeeper.sh {verb} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn shared_dir() -> PathBuf {
    std::env::var_os("MYELIN_ZK_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/myelin-zookeeper"))
}

static SHARED: OnceLock<std::result::Result<String, String>> = OnceLock::new();

/// The suite's ZooKeeper, started if it is not running: its `127.0.0.1:PORT`. Tests share it
/// and keep to their own paths (see [`unique_path`]); none of them stops it.
pub fn shared() -> Result<String> {
    SHARED
        .get_or_init(|| {
            let dir = shared_dir();
            run_script("start", &dir, None).map_err(|e| format!("{e:#}"))?;
            let port = std::fs::read_to_string(dir.join("port")).map_err(|e| e.to_string())?;
            Ok(format!("127.0.0.1:{}", port.trim()))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A path of its own for each test (and each run): `/myelin-test/<name>-<pid>-<nanos>`.
pub fn unique_path(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    format!("/myelin-test/{name}-{}-{nanos}", std::process::id())
}

/// A ZooKeeper server of one test's own, in a temporary directory, on a free port: for tests
/// that stop, restart or wipe it. Stopped and deleted when dropped.
pub struct PrivateZk {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivateZk {
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = crate::free_port();
        run_script("start", &dir.path().join("zk"), Some(port))?;
        Ok(Self { dir, port })
    }

    fn zk_dir(&self) -> PathBuf {
        self.dir.path().join("zk")
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill the server (SIGKILL); its data stays.
    pub fn kill(&self) -> Result<()> {
        run_script("kill", &self.zk_dir(), Some(self.port))
    }

    /// Start it again on the same port, with the data it had (sessions and nodes).
    pub fn restart(&self) -> Result<()> {
        run_script("start", &self.zk_dir(), Some(self.port))
    }

    /// Kill it and start a new, empty server on the same port: every session and node is gone.
    pub fn wipe(&self) -> Result<()> {
        self.kill()?;
        std::fs::remove_dir_all(self.zk_dir().join("data"))?;
        self.restart()
    }

    /// The answer to a four-letter word (`mntr`, `cons`, `srvr`).
    pub fn four_letter(&self, word: &str) -> Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(word.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// How many client connections the server has (`mntr`'s `zk_num_alive_connections`,
    /// which counts the asking one too: that one is left out).
    pub fn connections(&self) -> Result<usize> {
        let m = self.four_letter("mntr")?;
        let n = m.lines().find_map(|l| l.strip_prefix("zk_num_alive_connections")).context("no zk_num_alive_connections")?;
        Ok(n.trim().parse::<usize>()?.saturating_sub(1))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.zk_dir().join("zookeeper.log")).unwrap_or_default()
    }
}

impl Drop for PrivateZk {
    fn drop(&mut self) {
        let _ = run_script("stop", &self.zk_dir(), Some(self.port));
    }
}

/// A three-server ensemble of one test's own, on free ports of 127.0.0.1. Stopped and deleted
/// when dropped.
pub struct PrivateEnsemble {
    dir: tempfile::TempDir,
    /// Each member's client port.
    pub ports: Vec<u16>,
    servers: String,
}

impl PrivateEnsemble {
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<u16> = (0..3).map(|_| crate::free_port()).collect();
        let servers = (1..=3).map(|i| format!("server.{i}=127.0.0.1:{}:{}", crate::free_port(), crate::free_port())).collect::<Vec<_>>().join(" ");
        let e = Self { dir, ports, servers };
        // A member serves once a quorum has formed: start them together.
        std::thread::scope(|s| {
            let started: Vec<_> = (0..3).map(|i| s.spawn({
                let e = &e;
                move || e.start_member(i)
            })).collect();
            started.into_iter().try_for_each(|h| h.join().expect("starting a member panicked"))
        })?;
        Ok(e)
    }

    fn member_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("zk{}", i + 1))
    }

    fn start_member(&self, i: usize) -> Result<()> {
        run_script_env("start", &self.member_dir(i), Some(self.ports[i]), &[("MYELIN_ZK_MYID", (i + 1).to_string()), ("MYELIN_ZK_SERVERS", self.servers.clone())])
    }

    /// The connect string entries: `127.0.0.1:PORT` of each member.
    pub fn hosts(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
    }

    /// Kill member `i` (0-based; SIGKILL, its data stays).
    pub fn kill(&self, i: usize) -> Result<()> {
        run_script("kill", &self.member_dir(i), Some(self.ports[i]))
    }

    /// Start member `i` again; it rejoins the quorum.
    pub fn restart(&self, i: usize) -> Result<()> {
        self.start_member(i)
    }

    /// The members' logs.
    pub fn logs(&self) -> String {
        (0..3).map(|i| format!("--- member {}:\n{}", i + 1, std::fs::read_to_string(self.member_dir(i).join("zookeeper.log")).unwrap_or_default())).collect()
    }
}

impl Drop for PrivateEnsemble {
    fn drop(&mut self) {
        for i in 0..3 {
            let _ = run_script("stop", &self.member_dir(i), Some(self.ports[i]));
        }
    }
}

/// A registering client (one session), as Nerve is: it creates the registration path, and an
/// ephemeral sequential node per instance. Synchronous, on a runtime of its own.
pub struct Registrar {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
}

impl Registrar {
    /// A session that is closed when the registrar is dropped (its nodes go at once).
    pub fn connect(address: &str, session_timeout: Duration) -> Result<Self> {
        Self::open(address, session_timeout, false)
    }

    /// A session that survives the registrar being dropped, as when the registering process
    /// is killed: its nodes go when ZooKeeper expires the session, `session_timeout` later.
    pub fn connect_detached(address: &str, session_timeout: Duration) -> Result<Self> {
        Self::open(address, session_timeout, true)
    }

    fn open(address: &str, session_timeout: Duration, detached: bool) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let mut connector = Client::connector().with_session_timeout(session_timeout);
        if detached {
            connector = connector.with_detached();
        }
        let client = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), connector.connect(address)).await })
            .context("connecting to ZooKeeper timed out")?
            .with_context(|| format!("connecting to ZooKeeper at {address}"))?;
        Ok(Self { rt, client: Some(client) })
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("registrar is open")
    }

    /// `mkdir -p` (persistent nodes).
    pub fn ensure_path(&self, path: &str) -> Result<()> {
        let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
        self.rt.block_on(self.client().mkdir(path, &opts)).with_context(|| format!("mkdir {path}"))
    }

    /// An ephemeral sequential node `<dir>/<prefix><sequence>` holding `data`; its full path.
    pub fn register(&self, dir: &str, prefix: &str, data: &str) -> Result<String> {
        let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        let base = format!("{dir}/{prefix}");
        let (_, seq) = self.rt.block_on(self.client().create(&base, data.as_bytes(), &opts)).with_context(|| format!("create {base}"))?;
        Ok(format!("{base}{seq}"))
    }

    /// Many registrations at once (pipelined on the session); their paths.
    pub fn register_many(&self, dir: &str, items: &[(String, String)]) -> Result<Vec<String>> {
        let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
        let client = self.client();
        self.rt.block_on(async {
            let futs = items.iter().map(|(prefix, data)| {
                let base = format!("{dir}/{prefix}");
                let opts = &opts;
                async move {
                    let (_, seq) = client.create(&base, data.as_bytes(), opts).await.with_context(|| format!("create {base}"))?;
                    anyhow::Ok(format!("{base}{seq}"))
                }
            });
            let mut out = Vec::with_capacity(items.len());
            let mut s = futures::stream::iter(futs).buffered(256);
            while let Some(r) = s.next().await {
                out.push(r?);
            }
            Ok(out)
        })
    }

    /// A persistent node holding `data`.
    pub fn create_persistent(&self, path: &str, data: &str) -> Result<()> {
        let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
        self.rt.block_on(self.client().create(path, data.as_bytes(), &opts)).with_context(|| format!("create {path}"))?;
        Ok(())
    }

    /// Rewrite a node's data in place (Nerve does, when an instance's weight changes).
    pub fn set_data(&self, path: &str, data: &str) -> Result<()> {
        self.rt.block_on(self.client().set_data(path, data.as_bytes(), None)).with_context(|| format!("set {path}"))?;
        Ok(())
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        self.rt.block_on(self.client().delete(path, None)).with_context(|| format!("delete {path}"))
    }

    /// Delete a path and everything under it (persistent test directories).
    pub fn delete_tree(&self, path: &str) -> Result<()> {
        let client = self.client();
        self.rt.block_on(async {
            let mut stack = vec![path.to_owned()];
            let mut order = Vec::new();
            while let Some(p) = stack.pop() {
                match client.list_children(&p).await {
                    Ok(children) => stack.extend(children.into_iter().map(|c| format!("{p}/{c}"))),
                    Err(zookeeper_client::Error::NoNode) => continue,
                    Err(e) => return Err(e).with_context(|| format!("list {p}")),
                }
                order.push(p);
            }
            for p in order.into_iter().rev() {
                match client.delete(&p, None).await {
                    Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                    Err(e) => return Err(e).with_context(|| format!("delete {p}")),
                }
            }
            Ok(())
        })
    }

    pub fn children(&self, path: &str) -> Result<Vec<String>> {
        self.rt.block_on(self.client().list_children(path)).with_context(|| format!("list {path}"))
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        // Dropping the client closes its session unless it is detached; give the close request
        // a moment on the runtime before the runtime goes.
        if let Some(c) = self.client.take() {
            drop(c);
            self.rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        }
    }
}

/// What Nerve writes for an instance: `{"host", "port", "name", "weight"?, "labels"?}`.
pub fn nerve(name: &str, port: u16) -> String {
    nerve_weighted(name, port, 1)
}

/// The same with a weight.
pub fn nerve_weighted(name: &str, port: u16, weight: u16) -> String {
    format!(r#"{{"host":"127.0.0.1","port":{port},"name":"{name}","weight":{weight},"labels":{{"az":"test"}}}}"#)
}

/// What a Finagle announcer writes for a serverset member, with an `http` additional endpoint.
pub fn serverset(shard: u32, port: u16, http_port: u16) -> String {
    format!(
        r#"{{"serviceEndpoint":{{"host":"127.0.0.1","port":{port}}},"additionalEndpoints":{{"http":{{"host":"127.0.0.1","port":{http_port}}}}},"status":"ALIVE","shard":{shard}}}"#
    )
}

/// The server name myelin (like Synapse) gives a Nerve instance: `<name>_<host>:<port>`.
pub fn server_name(name: &str, port: u16) -> String {
    format!("{name}_127.0.0.1:{port}")
}
