//! The private Docker engine of the tests (`integration/docker-engine.sh`) and its containers.
//! Containers publish on 127.0.0.1 only, and the tests talk to 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-engine.sh")
}

/// Docker's client from the engine's package (`docker.io`), else whatever `docker` is.
fn client() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

fn engine_dir() -> PathBuf {
    std::env::var_os("MYELIN_DOCKER_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/myelin-docker"))
}

/// The engine, started (and the test image built) once per test process. Tests that use it
/// hold its lock: one of them stops the daemon, which the others must not see.
pub struct Engine {
    pub socket: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

static STARTED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
static SERIAL: Mutex<()> = Mutex::new(());

fn run_script(verb: &str) -> Result<()> {
    let out = Command::new("bash").arg(script()).arg(verb).output().with_context(|| format!("running docker-engine.sh {verb}"))?;
    if !out.status.success() {
        bail!("docker-engine.sh {verb} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Engine {
    pub fn get() -> Result<Self> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        STARTED.get_or_init(|| run_script("start").map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)?;
        // A previous test may have stopped the daemon and failed before starting it again.
        run_script("start")?;
        Ok(Self { socket: engine_dir().join("docker.sock"), _serial: serial })
    }

    /// `docker <args>`; its trimmed standard output.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        Self::docker_unlocked(args)
    }

    /// `docker <args>` from another thread (of a test that holds the engine).
    pub fn docker_unlocked(args: &[&str]) -> Result<String> {
        let out = Command::new(client())
            .arg("-H")
            .arg(format!("unix://{}", engine_dir().join("docker.sock").display()))
            .args(args)
            .output()
            .with_context(|| format!("docker {args:?}"))?;
        if !out.status.success() {
            bail!("docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `docker run -d <args> local/nodeapp`, removed (with `-f`) when dropped.
    pub fn run(&self, args: &[&str]) -> Result<Container<'_>> {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        all.push("local/nodeapp");
        let id = self.docker(&all)?;
        Ok(Container { engine: self, id: id.chars().take(12).collect() })
    }

    /// A container publishing 8000 on a random loopback port, labelled for one test.
    pub fn run_published(&self, test: &str, extra: &[&str]) -> Result<Container<'_>> {
        let label = format!("myelin.test={test}");
        let mut args = vec!["-p", "127.0.0.1::8000", "-l", &label];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Stop the daemon only; containers keep running (live-restore).
    pub fn stop_daemon(&self) -> Result<()> {
        run_script("daemon-stop")
    }

    pub fn start_daemon(&self) -> Result<()> {
        run_script("start")
    }

    /// The `discovery:` block of a service that routes this test's `local/nodeapp` containers.
    pub fn discovery(&self, test: &str) -> String {
        format!(
            "      method: docker\n      socket: {}\n      image_name: local/nodeapp\n      container_port: 8000\n      labels: {{myelin.test: {test}}}\n",
            self.socket.display()
        )
    }
}

/// A container of the test image; its body answers its short id unless `ANSWER` says otherwise.
pub struct Container<'a> {
    engine: &'a Engine,
    pub id: String,
}

impl Container<'_> {
    /// The loopback port published for 8000.
    pub fn port(&self) -> Result<u16> {
        let out = self.engine.docker(&["port", &self.id, "8000/tcp"])?;
        let first = out.lines().next().context("no published port")?;
        Ok(first.rsplit(':').next().context("no port")?.parse()?)
    }

    pub fn name(&self) -> Result<String> {
        Ok(self.engine.docker(&["inspect", "-f", "{{.Name}}", &self.id])?.trim_start_matches('/').to_owned())
    }

    /// `docker stop -t <secs>` (blocks until the container is down).
    pub fn stop(&self, secs: u32) -> Result<()> {
        self.engine.docker(&["stop", "-t", &secs.to_string(), &self.id]).map(drop)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.engine.docker(&["rm", "-f", &self.id]);
    }
}

impl Engine {
    /// The engine's TLS endpoint on 127.0.0.1 (client certificates required).
    pub fn tls_port(&self) -> u16 {
        std::env::var("MYELIN_DOCKER_TLS_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(23760)
    }

    /// A `DOCKER_CERT_PATH`-style directory for the TLS endpoint: ca.pem, cert.pem, key.pem.
    pub fn tls_client_dir(&self) -> PathBuf {
        engine_dir().join("tls/client")
    }
}

/// A plain-TCP front for the engine's unix socket, on 127.0.0.1 (the engine itself offers TCP
/// with TLS only): what Synapse's `servers` entries speak. Dropping it closes the listener and
/// cuts every connection, as an engine host going away would.
pub struct TcpFront {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<Mutex<Vec<std::net::TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl TcpFront {
    /// Listen on `port` (0: any free port).
    pub fn start(engine: &Engine, port: u16) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let conns = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (s, c, socket) = (stop.clone(), conns.clone(), engine.socket.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let _ = tcp.set_nonblocking(false);
                let Ok(unix) = std::os::unix::net::UnixStream::connect(&socket) else { continue };
                let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else { continue };
                let (mut tcp_w, mut unix_r) = (tcp.try_clone().expect("clone"), unix);
                if let Ok(keep) = tcp.try_clone() {
                    c.lock().unwrap_or_else(|e| e.into_inner()).push(keep);
                }
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut tcp_r, &mut unix_w);
                    let _ = unix_w.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut unix_r, &mut tcp_w);
                    let _ = tcp_w.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Ok(Self { port, stop, conns, accept: Some(accept) })
    }
}

impl Drop for TcpFront {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}
