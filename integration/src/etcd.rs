//! The etcd tests' cluster (integration/etcd-cluster.sh, three members on 127.0.0.1) and a
//! small blocking client for it.
//!
//! The cluster is started once per suite (`make test` runs `etcd-cluster.sh start` and `stop`);
//! a test binary started alone starts it too (`start` is idempotent). Tests that stop members
//! or turn authentication on hold [`Cluster::exclusive`] and restore the cluster before they
//! let go; the others hold [`Cluster::shared`] and run in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};

/// The cluster's directory (the script's `$MYELIN_ETCD_DIR`).
pub fn dir() -> PathBuf {
    std::env::var_os("MYELIN_ETCD_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/myelin-etcd"))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etcd-cluster.sh")
}

static LOCK: RwLock<()> = RwLock::new(());

pub struct Cluster {
    /// `http://127.0.0.1:port` of each member, in order (member 1 first).
    pub endpoints: Vec<String>,
}

impl Cluster {
    /// The suite's cluster, started if it is not running.
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            start().expect("starting the etcd cluster");
            let text = std::fs::read_to_string(dir().join("endpoints")).expect("the cluster's endpoints file");
            Cluster { endpoints: text.lines().map(str::to_owned).collect() }
        })
    }

    /// For a test that leaves the cluster as it is (members up, no authentication).
    pub fn shared(&self) -> RwLockReadGuard<'static, ()> {
        LOCK.read().unwrap_or_else(|e| e.into_inner())
    }

    /// For a test that stops members or turns authentication on: no other test runs meanwhile.
    pub fn exclusive(&self) -> RwLockWriteGuard<'static, ()> {
        LOCK.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoints as a YAML flow list.
    pub fn yaml_endpoints(&self) -> String {
        format!("[{}]", self.endpoints.join(", "))
    }

    /// The pid of member `n` (1-3).
    pub fn pid(&self, n: usize) -> Result<u32> {
        let p = dir().join(format!("m{n}.pid"));
        Ok(std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().parse()?)
    }

    /// Kill member `n` at once (SIGKILL): its connections are reset.
    pub fn kill(&self, n: usize) -> Result<()> {
        let pid = self.pid(n)?;
        Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
        // Wait until it is gone, so a restart can take its port.
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("member {n} (pid {pid}) did not die")
    }

    /// Start every member that is not running (with its data) and wait until all are healthy.
    pub fn restore(&self) -> Result<()> {
        script_cmd("restart")
    }

    /// Which member (1-3) the process `pid` has a TCP connection to, if one.
    pub fn connected_member(&self, pid: u32) -> Option<usize> {
        let out = Command::new("ss").args(["-Htnp", "state", "established"]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let needle = format!("pid={pid},");
        for line in text.lines().filter(|l| l.contains(&needle)) {
            // "Recv-Q Send-Q Local:Port Peer:Port users:((...))"
            let peer = line.split_whitespace().nth(3)?;
            for (i, e) in self.endpoints.iter().enumerate() {
                if e.ends_with(peer) {
                    return Some(i + 1);
                }
            }
        }
        None
    }

    /// A blocking client on every member.
    pub fn client(&self) -> Result<Etcd> {
        Etcd::connect(&self.endpoints, None)
    }
}

fn tonic_code_unavailable() -> tonic::Code {
    tonic::Code::Unavailable
}

fn start() -> Result<()> {
    script_cmd("start")
}

fn script_cmd(cmd: &str) -> Result<()> {
    let out = Command::new(script()).arg(cmd).output().context("running etcd-cluster.sh")?;
    if !out.status.success() {
        bail!("etcd-cluster.sh {cmd} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// etcd-client driven from blocking test code.
pub struct Etcd {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Etcd {
    pub fn connect(endpoints: &[String], user: Option<(&str, &str)>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut o = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(10));
        if let Some((u, p)) = user {
            o = o.with_user(u, p);
        }
        let client = rt.block_on(Client::connect(endpoints, Some(o)))?;
        Ok(Self { rt, client })
    }

    /// Put; the revision it made. Retried for up to 10 s while the cluster elects a leader
    /// (as a registrar would).
    pub fn put(&mut self, key: &str, value: &str) -> Result<i64> {
        let r = self.retry(|mut c| {
            let (key, value) = (key.to_owned(), value.to_owned());
            async move { c.put(key, value, None).await }
        })?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    fn retry<T, F, Fut>(&mut self, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let t0 = std::time::Instant::now();
        loop {
            match self.rt.block_on(op(self.client.clone())) {
                Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic_code_unavailable() && t0.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => return Ok(other?),
            }
        }
    }

    pub fn put_with_lease(&mut self, key: &str, value: &str, lease: i64) -> Result<()> {
        self.rt.block_on(self.client.put(key, value, Some(PutOptions::new().with_lease(lease))))?;
        Ok(())
    }

    /// A lease of `ttl` seconds that nobody keeps alive; its id.
    pub fn lease(&mut self, ttl: i64) -> Result<i64> {
        Ok(self.rt.block_on(self.client.lease_grant(ttl, None))?.id())
    }

    pub fn delete(&mut self, key: &str) -> Result<()> {
        self.retry(|mut c| {
            let key = key.to_owned();
            async move { c.delete(key, None).await }
        })?;
        Ok(())
    }

    pub fn delete_prefix(&mut self, prefix: &str) -> Result<()> {
        self.rt.block_on(self.client.delete(prefix, Some(etcd_client::DeleteOptions::new().with_prefix())))?;
        Ok(())
    }

    /// Every key under `prefix` with its value and lease (0: none), in key order.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<(String, String, i64)>> {
        let r = self.retry(|mut c| {
            let prefix = prefix.to_owned();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })?;
        Ok(r.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())).collect())
    }

    /// The current revision.
    pub fn revision(&mut self) -> Result<i64> {
        let r = self.rt.block_on(self.client.get("/", Some(GetOptions::new().with_count_only())))?;
        Ok(r.header().map_or(0, |h| h.revision()))
    }

    /// Compact the history up to `rev` (and wait until it is done).
    pub fn compact(&mut self, rev: i64) -> Result<()> {
        self.rt.block_on(self.client.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical())))?;
        Ok(())
    }

    /// Run etcdctl's user/auth commands (the tests' only use of the CLI).
    pub fn etcdctl(endpoints: &[String], args: &[&str]) -> Result<String> {
        let out = Command::new("etcdctl").env("ETCDCTL_API", "3").arg("--endpoints").arg(endpoints.join(",")).args(args).output()?;
        if !out.status.success() {
            bail!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Put many keys concurrently (pipelined on one connection); how long it took.
    pub fn put_many(&mut self, kvs: Vec<(String, String)>) -> Result<Duration> {
        let client = self.client.clone();
        self.rt.block_on(async move {
            let t0 = std::time::Instant::now();
            let mut tasks = Vec::new();
            for chunk in kvs.chunks(kvs.len().div_ceil(32).max(1)) {
                let mut c = client.clone();
                let chunk = chunk.to_vec();
                tasks.push(tokio::spawn(async move {
                    for (k, v) in chunk {
                        c.put(k, v, None).await?;
                    }
                    Ok::<_, etcd_client::Error>(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            Ok(t0.elapsed())
        })
    }
}
