//! Two "hosts" for the many-hosts tests and benchmark: each is a private Docker engine, its own
//! myelin and its own HAProxy, and both share the suite's three-member etcd cluster
//! ([`crate::etcd::Cluster`]). Each host's myelin discovers service `web` from etcd and
//! announces its own engine's containers there (address 127.0.0.1: containers publish on
//! 127.0.0.1, and every host is this machine's loopback).
//!
//! Host A's engine is the suite's default engine (`integration/docker-engine.sh` with
//! `$MYELIN_DOCKER_DIR`, `$MYELIN_DOCKER_TLS_PORT`, `$MYELIN_DOCKER_BRIDGE`,
//! `$MYELIN_DOCKER_BRIDGE_CIDR` as the environment gives them; default /tmp/myelin-docker).
//! Host B's is a second engine beside it: `$MYELIN_DOCKER_B_DIR` (default /tmp/myelin-docker-b),
//! `$MYELIN_DOCKER_B_TLS_PORT` (23762), `$MYELIN_DOCKER_B_BRIDGE` (myelin-b0) and
//! `$MYELIN_DOCKER_B_BRIDGE_CIDR` (198.18.2.1/24). `make test` starts and stops both; a test
//! binary run alone starts them (the script's `start` is idempotent) and leaves them running.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::etcd::{Cluster, Etcd};
use crate::{free_port, get, wait_for, Env, Proc};

/// One host's private Docker engine.
#[derive(Debug)]
pub struct HostEngine {
    pub dir: PathBuf,
    /// Environment for integration/docker-engine.sh (empty: the process's own, for host A).
    vars: Vec<(&'static str, String)>,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

impl HostEngine {
    /// Host A's engine (the suite's default engine), started once per process.
    pub fn a() -> Result<&'static HostEngine> {
        static A: OnceLock<std::result::Result<HostEngine, String>> = OnceLock::new();
        let e = A.get_or_init(|| {
            let e = HostEngine { dir: var("MYELIN_DOCKER_DIR", "/tmp/myelin-docker").into(), vars: vec![] };
            e.script("start").map(|()| e).map_err(|e| format!("{e:#}"))
        });
        e.as_ref().map_err(|e| anyhow::anyhow!("host A's engine: {e}"))
    }

    /// Host B's engine (a second one beside A's), started once per process.
    pub fn b() -> Result<&'static HostEngine> {
        static B: OnceLock<std::result::Result<HostEngine, String>> = OnceLock::new();
        let e = B.get_or_init(|| {
            let dir = var("MYELIN_DOCKER_B_DIR", "/tmp/myelin-docker-b");
            let vars = vec![
                ("MYELIN_DOCKER_DIR", dir.clone()),
                ("MYELIN_DOCKER_TLS_PORT", var("MYELIN_DOCKER_B_TLS_PORT", "23762")),
                ("MYELIN_DOCKER_BRIDGE", var("MYELIN_DOCKER_B_BRIDGE", "myelin-b0")),
                ("MYELIN_DOCKER_BRIDGE_CIDR", var("MYELIN_DOCKER_B_BRIDGE_CIDR", "198.18.2.1/24")),
            ];
            let e = HostEngine { dir: dir.into(), vars };
            e.script("start").map(|()| e).map_err(|e| format!("{e:#}"))
        });
        e.as_ref().map_err(|e| anyhow::anyhow!("host B's engine: {e}"))
    }

    fn script(&self, verb: &str) -> Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-engine.sh");
        let out = Command::new("bash").arg(script).arg(verb).envs(self.vars.iter().map(|(k, v)| (k, v))).output().context("running docker-engine.sh")?;
        if !out.status.success() {
            bail!("docker-engine.sh {verb} ({}) failed: {}{}", self.dir.display(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `docker <args>` on this engine; its trimmed standard output.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let client = if Path::new("/usr/bin/docker").exists() { "/usr/bin/docker" } else { "docker" };
        let out = Command::new(client).arg("-H").arg(format!("unix://{}", self.socket().display())).args(args).output().with_context(|| format!("docker {args:?}"))?;
        if !out.status.success() {
            bail!("docker {args:?} on {} failed: {}", self.dir.display(), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `docker run -d -l myelin.test=<label> -p <publish> <extra> local/nodeapp`, removed (with
    /// `-f`) when dropped. `publish` is `127.0.0.1::8000` (a random loopback port, asked from the
    /// engine afterwards) or `127.0.0.1:<port>:8000` (returns as soon as `docker run` does).
    pub fn run(&'static self, label: &str, publish: &str, extra: &[&str]) -> Result<Container> {
        let label = format!("myelin.test={label}");
        let mut args = vec!["run", "-d", "-p", publish, "-l", &label];
        args.extend_from_slice(extra);
        args.push("local/nodeapp");
        let id: String = self.docker(&args)?.chars().take(12).collect();
        let started = Instant::now();
        let given = publish.split(':').nth(1).and_then(|p| p.parse().ok());
        let mut c = Container { engine: self, id, port: given.unwrap_or(0), started };
        if given.is_none() {
            c.port = c.published()?;
        }
        Ok(c)
    }
}

/// A container of the test image on one host's engine; its body answers its short id.
#[derive(Debug)]
pub struct Container {
    pub engine: &'static HostEngine,
    pub id: String,
    /// The loopback port published for 8000: the port announced for it.
    pub port: u16,
    /// When `docker run` returned.
    pub started: Instant,
}

impl Container {
    fn published(&self) -> Result<u16> {
        let out = self.engine.docker(&["port", &self.id, "8000/tcp"])?;
        let first = out.lines().next().context("no published port")?;
        Ok(first.rsplit(':').next().context("no port")?.parse()?)
    }

    /// The container's name (what its instance id holds).
    pub fn name(&self) -> Result<String> {
        Ok(self.engine.docker(&["inspect", "-f", "{{.Name}}", &self.id])?.trim_start_matches('/').to_owned())
    }

    /// `docker stop -t <secs>` (blocks until the container is down).
    pub fn stop(&self, secs: u32) -> Result<()> {
        self.engine.docker(&["stop", "-t", &secs.to_string(), &self.id]).map(drop)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            let _ = self.engine.docker(&["rm", "-f", &self.id]);
        }
    }
}

/// One host: its engine, HAProxy and myelin (discovering `web` from etcd and announcing this
/// engine's containers labelled for the test there), with an admin listener.
pub struct Host {
    /// This host's `announce_as`.
    pub owner: String,
    pub engine: &'static HostEngine,
    pub env: Env,
    pub admin: u16,
    pub config: PathBuf,
    pub haproxy: Proc,
    pub myelin: Option<Proc>,
    restarts: u32,
}

impl Host {
    /// Write the config, start HAProxy and myelin.
    fn start(owner: &str, engine: &'static HostEngine, cluster: &Cluster, prefix: &str, label: &str, ttl: u32) -> Result<Host> {
        let endpoints = cluster.yaml_endpoints();
        let discovery = format!("method: etcd\nendpoints: {endpoints}\npath: {prefix}\n");
        // Each etcd request of the announcer waits 1 s at most: after a member is lost, the
        // reconnection (a lease grant, a list) must finish within what is left of the lease,
        // and the default `timeout` (5 s) does not fit in the tests' 3 s TTL.
        let to = format!("method: etcd\nendpoints: {endpoints}\npath: {prefix}\nttl: {ttl}\ntimeout: 1\n");
        Self::start_with(owner, engine, &discovery, Some(&to), label)
    }

    /// A host whose service `web` discovers with `discovery` and announces this engine's
    /// containers labelled `myelin.test: <label>` to `to` (`None`: the default, the
    /// discovery's registry); both YAML mappings without indentation.
    pub fn start_with(owner: &str, engine: &'static HostEngine, discovery: &str, to: Option<&str>, label: &str) -> Result<Host> {
        let indent = |yaml: &str, n: usize| yaml.lines().map(|l| format!("{}{l}\n", " ".repeat(n))).collect::<String>();
        let env = Env::new();
        let admin = free_port();
        let discovery = indent(discovery, 6);
        let to = to.map(|t| format!("      to:\n{}", indent(t, 8))).unwrap_or_default();
        let service = format!(
            "      listen: [option httpchk GET /]
    announce:
      containers:
        socket: {socket}
        image_name: local/nodeapp
        container_port: 8000
        labels: {{myelin.test: {label}}}
      address: 127.0.0.1
{to}",
            socket = engine.socket().display()
        );
        let extra = format!("{}  drain_timeout: 1\nadmin:\n  bind: {admin}\nannounce_as: {owner}\n", env.runtime_extra());
        let config = env.write_config_with(&discovery, &service, &extra);
        let haproxy = env.start_haproxy(&config)?;
        let mut host = Host { owner: owner.to_owned(), engine, env, admin, config, haproxy, myelin: None, restarts: 0 };
        host.start_myelin()?;
        Ok(host)
    }

    /// Start myelin (again); the previous run's log is kept as `myelin.log.<n>`.
    pub fn start_myelin(&mut self) -> Result<()> {
        if self.myelin.as_mut().is_some_and(|m| m.is_running()) {
            bail!("{}'s myelin is already running", self.owner);
        }
        if self.myelin.take().is_some() {
            self.restarts += 1;
            let _ = std::fs::rename(self.env.path("myelin.log"), self.env.path(&format!("myelin.log.{}", self.restarts)));
        }
        // `MYELIN_FLEET_LOG` (a tracing filter) replaces the default log level, e.g. to time a
        // benchmark's steps from both hosts' logs.
        let log = std::env::var("MYELIN_FLEET_LOG").ok();
        let vars: Vec<(&str, &str)> = log.as_deref().map(|l| ("MYELIN_LOG", l)).into_iter().collect();
        self.myelin = Some(self.env.start_myelin_env(&self.config, &vars)?);
        Ok(())
    }

    /// SIGKILL myelin (HAProxy keeps running) and wait until it is gone.
    pub fn kill_myelin(&mut self) -> Result<()> {
        let m = self.myelin.as_mut().context("myelin is not running")?;
        m.signal("KILL");
        m.wait_exit(Duration::from_secs(5)).map(drop).or_else(|| m.child.try_wait().ok().flatten().map(drop)).context("myelin survived SIGKILL")?;
        Ok(())
    }

    /// SIGTERM myelin: a clean stop; its exit code.
    pub fn stop_myelin(&mut self) -> Result<Option<i32>> {
        let m = self.myelin.as_mut().context("myelin is not running")?;
        m.signal("TERM");
        let code = m.wait_exit(Duration::from_secs(10));
        if code.is_none() && m.is_running() {
            bail!("myelin did not stop within 10 s: {}", m.log());
        }
        Ok(code)
    }

    /// Everything myelin logged in its current (or last) run.
    pub fn log(&self) -> String {
        self.myelin.as_ref().map(Proc::log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.myelin.as_ref().map(Proc::pid)
    }

    /// `/status` of this host's myelin (`null` when it does not answer).
    pub fn status(&self) -> serde_json::Value {
        get(self.admin, "/status").ok().and_then(|(_, b)| serde_json::from_str(&b).ok()).unwrap_or_default()
    }

    /// The ports of the servers of `web` in this host's HAProxy that take new connections.
    pub fn routed(&self) -> BTreeSet<u16> {
        self.env.active_servers("web").unwrap_or_default().into_iter().map(|(_, port, _)| port).collect()
    }

    /// Every server of `web` in this host's HAProxy (also draining ones): (name, port).
    pub fn servers(&self) -> Vec<(String, u16)> {
        self.env.servers("web").unwrap_or_default().into_iter().map(|(n, p, _)| (n, p)).collect()
    }

    /// This host's frontend port.
    pub fn port(&self) -> u16 {
        self.env.frontend_port
    }
}

/// Two hosts, A and B, announcing to and discovering from one prefix of the suite's etcd
/// cluster, with a lease TTL of `ttl` seconds.
pub struct Fleet {
    pub cluster: &'static Cluster,
    /// The etcd prefix of service `web` (`/myelin-fleet/<test>-<pid>`).
    pub prefix: String,
    /// The value of the `myelin.test` label that both hosts announce.
    pub label: String,
    pub ttl: u32,
    pub a: Host,
    pub b: Host,
}

/// One key under the prefix: its last segment (the instance id), value and lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: String,
    pub lease: i64,
}

impl Fleet {
    /// Start both hosts for `test` (owners `host-a` and `host-b`) on a fresh prefix.
    pub fn start(test: &str, ttl: u32) -> Result<Fleet> {
        let (ea, eb) = (HostEngine::a()?, HostEngine::b()?);
        let cluster = Cluster::get();
        let prefix = format!("/myelin-fleet/{test}-{}", std::process::id());
        cluster.client()?.delete_prefix(&format!("{prefix}/"))?;
        let label = format!("fleet-{test}");
        let a = Host::start("host-a", ea, cluster, &prefix, &label, ttl)?;
        let b = Host::start("host-b", eb, cluster, &prefix, &label, ttl)?;
        Ok(Fleet { cluster, prefix, label, ttl, a, b })
    }

    /// A container for this test on host A's engine, on a random loopback port.
    pub fn run_on_a(&self) -> Result<Container> {
        self.a.engine.run(&self.label, "127.0.0.1::8000", &[])
    }

    /// A container for this test on host B's engine, on a random loopback port.
    pub fn run_on_b(&self) -> Result<Container> {
        self.b.engine.run(&self.label, "127.0.0.1::8000", &[])
    }

    /// The keys under the prefix now: instance id → (value, lease).
    pub fn keys(&self) -> Result<BTreeMap<String, Entry>> {
        let mut etcd = self.cluster.client()?;
        self.keys_with(&mut etcd)
    }

    /// The same through a given client (e.g. one on the surviving members).
    pub fn keys_with(&self, etcd: &mut Etcd) -> Result<BTreeMap<String, Entry>> {
        let dir = format!("{}/", self.prefix);
        Ok(etcd.list(&dir)?.into_iter().map(|(k, value, lease)| (k.strip_prefix(&dir).unwrap_or(&k).to_owned(), Entry { value, lease })).collect())
    }

    /// Both hosts' logs, for a failure message.
    pub fn logs(&self) -> String {
        format!("--- host A's myelin:\n{}\n--- host B's myelin:\n{}", self.a.log(), self.b.log())
    }
}

/// `docker stop -t 3` of `container` (on host `a`) while ~50 requests/s go through host `b`'s
/// frontend (bounded in count and time): none may fail, and `b` must take the container out of
/// rotation before it dies. Returns when, after the stop began, `b` took it out and it died.
pub fn stop_under_load(a: &Host, b: &Host, container: &Container) -> (Duration, Duration) {
    let logs = || format!("--- host A's myelin:\n{}\n--- host B's myelin:\n{}", a.log(), b.log());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = crate::load_loop(b.port(), Duration::from_millis(20), 2_000, Duration::from_secs(30), stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let stopper = {
        let (id, engine) = (container.id.clone(), container.engine);
        std::thread::spawn(move || (engine.docker(&["stop", "-t", "3", &id]), Instant::now()))
    };
    let out = until(Duration::from_secs(5), || !b.routed().contains(&container.port)).then(Instant::now);
    let (stopped, died) = stopper.join().unwrap();
    stopped.unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, failed, why) = load.join().unwrap();
    let out = out.unwrap_or_else(|| panic!("B still routes the stopped container: {:?}\n{}", b.servers(), logs()));
    eprintln!("B took it out of rotation {:?} after `docker stop` started; it died {:?} after; {n} requests, {failed} failed", out - t0, died - t0);
    assert!(out < died, "B drained it only after it died ({:?} vs {:?})", out - t0, died - t0);
    assert_eq!(failed, 0, "failed requests through B: {why:?}\n{}", logs());
    assert!(n >= 100, "only {n} requests were sent");
    (out - t0, died - t0)
}

/// Poll until `f` holds (every 10 ms, at most `timeout`).
pub fn until(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    wait_for(timeout, f).is_some()
}

/// Both hosts' myelin logs, for assertion messages.
pub fn logs(a: &Host, b: &Host) -> String {
    format!("--- A:\n{}\n--- B:\n{}", a.log(), b.log())
}

/// Hosts A and B discovering `web` through `discovery` (A announcing through `to_a` when given,
/// else, as B does, through its discovery's registry), one container labelled `label` on each;
/// returns once both hosts route both containers and A's answers through B's frontend:
/// (A, B, A's container, B's container).
pub fn pair_routing_each_other(discovery: &str, to_a: Option<&str>, label: &str) -> (Host, Host, Container, Container) {
    let bound = Duration::from_secs(5);
    let a = Host::start_with("host-a", HostEngine::a().unwrap(), discovery, to_a, label).unwrap();
    let b = Host::start_with("host-b", HostEngine::b().unwrap(), discovery, None, label).unwrap();
    let on_b = b.engine.run(label, "127.0.0.1::8000", &[]).unwrap();
    let on_a = a.engine.run(label, "127.0.0.1::8000", &[]).unwrap();
    let both: BTreeSet<u16> = [on_a.port, on_b.port].into();
    assert!(until(bound, || a.routed() == both && b.routed() == both), "a {:?} b {:?}\n{}", a.routed(), b.routed(), logs(&a, &b));
    assert!(until(bound, || crate::get(b.port(), "/").is_ok_and(|(s, body)| s == 200 && body.trim() == on_a.id)), "{}", logs(&a, &b));
    (a, b, on_a, on_b)
}
