//! The private Docker engine of the tests (`integration/docker-engine.sh`) and its containers.
//! Containers publish on 127.0.0.1 only, and the tests talk to 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

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
