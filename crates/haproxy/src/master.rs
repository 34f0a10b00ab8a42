//! HAProxy's master CLI (`haproxy -W -S <socket>`): verified reloads.

use std::path::PathBuf;
use std::time::Duration;

use crate::socket::ask;
use crate::Error;

/// What the master CLI's `show proc` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processes {
    /// How many times the master has reloaded.
    pub reloads: u32,
    pub worker_pids: Vec<u32>,
}

pub fn parse_show_proc(text: &str) -> Result<Processes, String> {
    let mut reloads = None;
    let mut workers = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.get(1) {
            Some(&"master") => reloads = f.get(2).and_then(|r| r.parse().ok()),
            Some(&"worker") => workers.extend(f[0].parse::<u32>().ok()),
            _ => {}
        }
    }
    Ok(Processes { reloads: reloads.ok_or_else(|| format!("no master line in {text:?}"))?, worker_pids: workers })
}

/// HAProxy's master CLI (`haproxy -W -S <socket>`).
#[derive(Debug, Clone)]
pub struct Master {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Master {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket, timeout: Duration::from_secs(10) }
    }

    pub async fn processes(&self) -> Result<Processes, Error> {
        let reply = ask(&self.socket, "show proc", Duration::from_secs(5)).await?;
        parse_show_proc(&reply).map_err(|reason| Error::Runtime { command: "show proc".into(), reply: reason })
    }

    /// Reload, and check that it happened: `reload` prints nothing even when the new config
    /// fails, so wait for the reload count to go up and a new worker to appear.
    pub async fn reload(&self) -> Result<(), Error> {
        let before = self.processes().await?;
        ask(&self.socket, "reload", Duration::from_secs(5)).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // The master re-executes itself; its socket may be briefly unavailable.
            if let Ok(now) = self.processes().await {
                if now.reloads > before.reloads && now.worker_pids.iter().any(|p| !before.worker_pids.contains(p)) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Runtime {
                    command: "reload".into(),
                    reply: format!("no new worker within {:?}: the new configuration did not start (see HAProxy's log)", self.timeout),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;


    #[test]
    fn parses_show_proc() {
        let t = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n16367           master          2 [failed: 0]   0d00h10m04s     2.6.12-1+deb12u4\n# workers\n10247           worker          0               0d00h00m00s     2.6.12-1+deb12u4\n# programs\n\n";
        assert_eq!(parse_show_proc(t).unwrap(), Processes { reloads: 2, worker_pids: vec![10247] });
        assert!(parse_show_proc("").is_err());
    }

}
