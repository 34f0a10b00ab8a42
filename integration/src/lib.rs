//! Harness for the end-to-end tests: start real HAProxy (master-worker mode), the real `myelin`
//! binary and small HTTP backends, all on 127.0.0.1, and talk to them as a user would.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod bench;
pub mod consul;
pub mod docker;
pub mod zookeeper;
pub mod etcd;
pub mod fleet;

/// The `myelin` binary under test: `$MYELIN_BIN`, or the workspace's debug build.
pub fn myelin_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MYELIN_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(root.join("target"));
    let bin = target.join("debug/myelin");
    assert!(bin.exists(), "{} is missing: run `cargo build -p myelin` first (`make test` does)", bin.display());
    bin
}

/// Where [`free_port`] looks: below Linux's ephemeral range (32768-60999), from which both the
/// kernel (for port 0 and outgoing connections) and Docker (for `-p 127.0.0.1::PORT`) take
/// ports, and above the fixed ports of the suite's own components (ZooKeeper 21810, the Docker
/// engines' TLS ports 2376x, etcd 2379x-2381x).
const TEST_PORTS: std::ops::Range<u16> = 24000..32768;

/// A TCP port on 127.0.0.1 that was free when asked and that nothing else hands out meanwhile:
/// a port taken with port 0 and let go is the kernel's and Docker's to give to the next caller
/// (a container published while a test set up its HAProxy took its frontend port once). Each
/// call in a process returns a different port; processes start at different places in the range.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(u64::MAX);
    let len = u64::from(TEST_PORTS.end - TEST_PORTS.start);
    let _ = NEXT.compare_exchange(u64::MAX, u64::from(std::process::id()) * 7919 % len, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..len {
        let port = TEST_PORTS.start + (NEXT.fetch_add(1, Ordering::SeqCst) % len) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {TEST_PORTS:?}");
}

/// A tiny HTTP server on 127.0.0.1 that answers every request with its name.
pub struct Backend {
    pub name: String,
    /// How long each answer is held back (to keep connections open).
    pub delay: Duration,
    pub port: u16,
    pub hits: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(name: &str) -> Self {
        Self::start_slow(name, Duration::ZERO)
    }

    /// A backend that waits `delay` before each answer.
    pub fn start_slow(name: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicU64::new(0));
        let (s, h, body) = (stop.clone(), hits.clone(), name.to_owned());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let body = body.clone();
                        let h = h.clone();
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buf = [0u8; 4096];
                            let mut req = Vec::new();
                            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                                match conn.read(&mut buf) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => req.extend_from_slice(&buf[..n]),
                                }
                            }
                            h.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(delay);
                            let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}", body.len(), body);
                            let _ = conn.write_all(resp.as_bytes());
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self { name: name.to_owned(), delay, port, hits, stop }
    }

    /// A backends-file entry for this backend.
    pub fn entry(&self) -> String {
        format!("- {{name: {}, host: 127.0.0.1, port: {}}}\n", self.name, self.port)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One HTTP/1.0 GET; the status code and body.
pub fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    // One write: several small ones would wait on delayed ACKs.
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split_whitespace().nth(1).context("no status line")?.parse()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Send `n` requests; the bodies of those that got a 200, and how many failed.
pub fn spray(port: u16, n: usize) -> (std::collections::BTreeSet<String>, usize) {
    let mut seen = std::collections::BTreeSet::new();
    let mut failed = 0;
    for _ in 0..n {
        match get(port, "/") {
            Ok((200, body)) => {
                seen.insert(body);
            }
            _ => failed += 1,
        }
    }
    (seen, failed)
}

/// A bounded load loop in a thread: GETs through `port` every `pause`, at most `max` requests
/// or until `stop` is set or `limit` passes. Join it for (requests, failures, first failures).
pub fn load_loop(port: u16, pause: Duration, max: usize, limit: Duration, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, usize, Vec<String>)> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let (mut n, mut failed, mut why) = (0, 0, Vec::new());
        while n < max && t0.elapsed() < limit && !stop.load(Ordering::Relaxed) {
            n += 1;
            match get(port, "/") {
                Ok((200, _)) => {}
                other => {
                    failed += 1;
                    if why.len() < 5 {
                        why.push(format!("{other:?}"));
                    }
                }
            }
            std::thread::sleep(pause);
        }
        (n, failed, why)
    })
}

/// Poll `f` every 10 ms until it is true or `timeout` passes; how long it took.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A child process killed (SIGKILL) when dropped, unless stopped before.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
    }

    /// Everything the process wrote to stderr/stdout so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_logged(cmd: &mut Command, log: PathBuf) -> Result<Proc> {
    let f = std::fs::File::create(&log)?;
    let child = cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f).spawn().with_context(|| format!("starting {cmd:?}"))?;
    Ok(Proc { child, log })
}

/// A test's working directory with HAProxy and myelin set up in it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub frontend_port: u16,
}

impl Env {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap(), frontend_port: free_port() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn haproxy_cfg(&self) -> PathBuf {
        self.path("haproxy.cfg")
    }

    /// A myelin config with one file-discovered service `web` on the frontend port, reloading
    /// HAProxy's master (pid file) with SIGUSR2. `extra` is appended under `haproxy:`.
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let discovery = format!("      method: file\n      path: {}\n", self.path("backends.yaml").display());
        self.write_config_with(&discovery, "", extra)
    }

    /// The same with any discovery block (lines indented under `discovery:`) and extra lines
    /// under the service (`service_extra`, indented by four spaces).
    pub fn write_config_with(&self, discovery: &str, service_extra: &str, extra: &str) -> PathBuf {
        let cfg = self.path("myelin.yaml");
        let text = format!(
            "services:
  web:
    discovery:
{discovery}    haproxy:
      port: {port}
      bind_address: 127.0.0.1
      server_options: check inter 500ms
{service_extra}{haproxy}{extra}",
            port = self.frontend_port,
            haproxy = self.haproxy_section(&self.haproxy_cfg()),
        );
        std::fs::write(&cfg, text).unwrap();
        cfg
    }

    /// The `haproxy:` section of the tests' configs, writing `hcfg` and reloading HAProxy's
    /// master (pid file) with SIGUSR2; more keys of the section may follow it.
    pub fn haproxy_section(&self, hcfg: &Path) -> String {
        format!(
            "haproxy:
  config_file_path: {hcfg}
  reload_command: \"kill -USR2 $(cat {pid})\"
  restart_interval: 0.2
  global:
    - maxconn 200
    - stats socket {sock} mode 600 level admin
  defaults:
    - mode http
    - timeout connect 2s
    - timeout client 10s
    - timeout server 10s
    - retries 3
    - option redispatch
    - retry-on conn-failure empty-response response-timeout
",
            hcfg = hcfg.display(),
            pid = self.path("haproxy.pid").display(),
            sock = self.path("haproxy.sock").display(),
        )
    }

    pub fn write_backends(&self, text: &str) {
        // Write and rename, as a careful tool would; the watcher follows in-place writes too.
        let tmp = self.path(".backends.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path("backends.yaml")).unwrap();
    }

    /// Run `myelin <args>` to completion: (exit code, stdout, stderr).
    pub fn myelin_once(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(myelin_bin()).args(args).env("MYELIN_LOG", "info").output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Render the initial haproxy.cfg and start HAProxy in master-worker mode on it.
    pub fn start_haproxy(&self, config: &Path) -> Result<Proc> {
        let (code, out, err) = self.myelin_once(&["render", "-c", config.to_str().unwrap()]);
        if code != 0 {
            bail!("myelin render failed ({code}): {err}");
        }
        std::fs::write(self.haproxy_cfg(), out)?;
        let p = spawn_logged(
            Command::new("haproxy")
                .arg("-W")
                .arg("-db")
                .arg("-f")
                .arg(self.haproxy_cfg())
                .arg("-p")
                .arg(self.path("haproxy.pid"))
                .arg("-S")
                .arg(self.path("master.sock")),
            self.path("haproxy.log"),
        )?;
        let port = self.frontend_port;
        if wait_for(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok() && self.path("haproxy.pid").exists()).is_none() {
            bail!("HAProxy did not start listening on {port}: {}", p.log());
        }
        Ok(p)
    }

    /// Start HAProxy on the config (rendered by myelin), then `myelin run` on it.
    pub fn start(&self, config: &Path) -> Result<(Proc, Proc)> {
        Ok((self.start_haproxy(config)?, self.start_myelin(config)?))
    }

    /// Start `myelin run` and wait until it has installed its signal handlers.
    pub fn start_myelin(&self, config: &Path) -> Result<Proc> {
        self.start_myelin_env(config, &[])
    }

    /// As [`Env::start_myelin`], with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn start_myelin_env(&self, config: &Path, vars: &[(&str, &str)]) -> Result<Proc> {
        let mut cmd = Command::new(myelin_bin());
        // The daemon's own allocator setting, whatever the runner's environment says.
        cmd.args(["run", "-c", config.to_str().unwrap()]).env("MYELIN_LOG", "info,myelin=debug").env_remove("MIMALLOC_PURGE_DELAY");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut p = spawn_logged(&mut cmd, self.path("myelin.log"))?;
        if wait_for(Duration::from_secs(10), || p.log().contains("started.") || !p.is_running()).is_none() || !p.is_running() {
            bail!("myelin did not start: {}", p.log());
        }
        Ok(p)
    }

    /// Ask HAProxy's master CLI something. The master re-executes itself on a reload, and its
    /// socket is briefly gone then: retry for up to 3 s.
    pub fn master_cli(&self, cmd: &str) -> Result<String> {
        let t0 = Instant::now();
        loop {
            match self.socket_cli("master.sock", cmd) {
                Err(e) if t0.elapsed() < Duration::from_secs(3) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Ask HAProxy's runtime API (the stats socket `haproxy.sock`) something.
    pub fn runtime_cli(&self, cmd: &str) -> Result<String> {
        self.socket_cli("haproxy.sock", cmd)
    }

    /// Servers of a backend as `show servers state` lists them: (name, port, weight).
    pub fn servers(&self, backend: &str) -> Result<Vec<(String, u16, u16)>> {
        self.servers_where(backend, |_| true)
    }

    /// The servers of a backend that take new connections (admin state 0: neither in
    /// maintenance nor draining): (name, port, weight).
    pub fn active_servers(&self, backend: &str) -> Result<Vec<(String, u16, u16)>> {
        self.servers_where(backend, |admin| admin == 0)
    }

    fn servers_where(&self, backend: &str, admin: impl Fn(u32) -> bool) -> Result<Vec<(String, u16, u16)>> {
        let out = self.runtime_cli(&format!("show servers state {backend}"))?;
        let mut v = Vec::new();
        for line in out.lines().skip(1).filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if admin(f[6].parse()?) {
                v.push((f[3].to_owned(), f[18].parse()?, f[7].parse()?));
            }
        }
        v.sort();
        Ok(v)
    }

    fn socket_cli(&self, name: &str, cmd: &str) -> Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.path(name))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        writeln!(s, "{cmd}")?;
        // The master CLI answers once the write side is closed.
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Ask the current HAProxy worker something on its stats socket.
    pub fn stats_cli(&self, cmd: &str) -> Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(self.path("haproxy.sock"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        writeln!(s, "{cmd}")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The servers of backend `web` in the running HAProxy worker.
    pub fn live_servers(&self) -> Result<Vec<String>> {
        let out = self.stats_cli("show servers state web")?;
        // "<be_id> <be_name> <srv_id> <srv_name> ..." after a version line and a header.
        Ok(out.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned)).collect())
    }

    /// Servers of `web` that take new connections: listed, and neither in maintenance nor
    /// draining (admin state 0).
    pub fn routable_servers(&self) -> Result<Vec<String>> {
        let out = self.stats_cli("show servers state web")?;
        Ok(out
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 6 && f[6] == "0").then(|| f[3].to_owned())
            })
            .collect())
    }

    /// The `haproxy:` lines that turn the runtime API on (stats socket, master CLI).
    pub fn runtime_extra(&self) -> String {
        format!("  socket_file_path: {}\n  master_socket_path: {}\n", self.path("haproxy.sock").display(), self.path("master.sock").display())
    }

    /// How many times HAProxy's master has reloaded (from `show proc`).
    pub fn reloads(&self) -> Result<u32> {
        let out = self.master_cli("show proc")?;
        // The master's line: "<pid> master <reloads> [failed: N] <uptime> <version>".
        for line in out.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) == Some(&"master") {
                return Ok(f.get(2).context("no reload count")?.parse()?);
            }
        }
        bail!("no master line in: {out}")
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}
