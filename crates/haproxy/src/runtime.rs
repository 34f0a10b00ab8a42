//! HAProxy's runtime API (the stats socket) and master CLI: the commands myelin sends, the
//! replies it accepts, and parsers for what it reads back. Any other reply is an error, and the
//! caller falls back to a validated reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use myelin_core::{BackendName, DesiredState, Plan, Server, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::Error;

/// Send one command to a HAProxy socket and read the whole reply.
async fn ask(socket: &Path, command: &str, timeout: Duration) -> Result<String, Error> {
    let io = |source| Error::Socket { socket: socket.to_path_buf(), command: command.to_owned(), source };
    let talk = async {
        let mut s = UnixStream::connect(socket).await.map_err(io)?;
        s.write_all(command.as_bytes()).await.map_err(io)?;
        s.write_all(b"\n").await.map_err(io)?;
        // The master CLI answers once the write side is closed.
        s.shutdown().await.map_err(io)?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.map_err(io)?;
        Ok(out)
    };
    tokio::time::timeout(timeout, talk).await.map_err(|_| {
        io(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no reply within {timeout:?}")))
    })?
}

/// One change to make through the runtime API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new server: `add server`, then ready (and health checks on when it has `check`).
    Add { backend: BackendName, server: Server },
    /// Address, port or weight changed.
    Update { backend: BackendName, server: Server },
    /// Gone: no new connections; deleted once idle or after the drain timeout.
    Drain { backend: BackendName, name: ServerName },
}

/// The runtime operations that carry out `plan` (computed towards `desired`), or `None` when the
/// plan needs a reload. Removals come first.
pub fn runtime_ops(plan: &Plan, desired: &DesiredState) -> Option<Vec<Op>> {
    if plan.reload_required() {
        return None;
    }
    let mut ops = Vec::new();
    for (svc, d) in &plan.servers {
        let backend = desired.services.get(svc)?.shape.backend_name.clone();
        ops.extend(d.removed.iter().map(|name| Op::Drain { backend: backend.clone(), name: name.clone() }));
    }
    for (svc, d) in &plan.servers {
        let backend = desired.services.get(svc)?.shape.backend_name.clone();
        ops.extend(d.changed.iter().map(|c| Op::Update { backend: backend.clone(), server: c.new.clone() }));
        ops.extend(d.added.iter().map(|s| Op::Add { backend: backend.clone(), server: s.clone() }));
    }
    Some(ops)
}

fn weight_of(s: &Server) -> u16 {
    s.weight.map_or(1, |w| w.get())
}

/// The stats socket, at admin level.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Runtime {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket, timeout: Duration::from_secs(5) }
    }

    pub async fn ask(&self, command: &str) -> Result<String, Error> {
        ask(&self.socket, command, self.timeout).await
    }

    /// Run a command whose only good replies are empty or contain one of `ok`.
    async fn expect(&self, command: String, ok: &[&str]) -> Result<(), Error> {
        let reply = self.ask(&command).await?;
        let r = reply.trim();
        if (r.is_empty() && ok.contains(&"")) || ok.iter().any(|o| !o.is_empty() && r.contains(o)) {
            Ok(())
        } else {
            Err(Error::Runtime { command, reply: r.to_owned() })
        }
    }

    /// Carry out one operation; the number of commands sent.
    pub async fn apply(&self, op: &Op) -> Result<usize, Error> {
        match op {
            Op::Add { backend, server } => {
                let mut cmd = format!("add server {backend}/{} {} weight {}", server.name, server.address(), weight_of(server));
                if let Some(o) = &server.options {
                    cmd.push(' ');
                    cmd.push_str(o.as_str());
                }
                self.expect(cmd, &["New server registered"]).await?;
                self.set_state(backend, &server.name, "ready").await?;
                if server.options.as_ref().is_some_and(|o| o.as_str().split_whitespace().any(|w| w == "check")) {
                    self.expect(format!("enable health {backend}/{}", server.name), &[""]).await?;
                    return Ok(3);
                }
                Ok(2)
            }
            Op::Update { backend, server } => {
                self.update(backend, server).await?;
                Ok(2)
            }
            Op::Drain { backend, name } => {
                self.set_state(backend, name, "drain").await?;
                Ok(1)
            }
        }
    }

    /// Set address, port and weight of an existing server.
    pub async fn update(&self, backend: &BackendName, server: &Server) -> Result<(), Error> {
        let addr = format!("set server {backend}/{} addr {} port {}", server.name, server.host, server.port);
        self.expect(addr, &["", "changed from", "no need to change"]).await?;
        self.expect(format!("set server {backend}/{} weight {}", server.name, weight_of(server)), &[""]).await
    }

    pub async fn set_state(&self, backend: &BackendName, name: &ServerName, state: &str) -> Result<(), Error> {
        self.expect(format!("set server {backend}/{name} state {state}"), &[""]).await
    }

    /// Put a drained server in maintenance, close what is left of its sessions, delete it.
    pub async fn remove(&self, backend: &BackendName, name: &ServerName) -> Result<usize, Error> {
        self.set_state(backend, name, "maint").await?;
        self.expect(format!("shutdown sessions server {backend}/{name}"), &[""]).await?;
        self.expect(format!("del server {backend}/{name}"), &["Server deleted"]).await?;
        Ok(3)
    }

    /// `show servers state`, parsed.
    pub async fn servers_state(&self) -> Result<Vec<ServerState>, Error> {
        let reply = self.ask("show servers state").await?;
        parse_servers_state(&reply).map_err(|reason| Error::Runtime { command: "show servers state".into(), reply: reason })
    }

    /// The raw `show servers state` text (for the server-state file).
    pub async fn servers_state_text(&self) -> Result<String, Error> {
        let reply = self.ask("show servers state").await?;
        parse_servers_state(&reply).map_err(|reason| Error::Runtime { command: "show servers state".into(), reply: reason })?;
        Ok(reply)
    }

    /// Current sessions per (backend, server), from `show stat`.
    pub async fn sessions(&self) -> Result<BTreeMap<(String, String), u64>, Error> {
        let reply = self.ask("show stat").await?;
        parse_stat_sessions(&reply).map_err(|reason| Error::Runtime { command: "show stat".into(), reply: reason })
    }
}

/// A server as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub admin_state: u32,
    pub weight: u16,
}

/// Parse `show servers state` (format version 1).
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = text.lines();
    match lines.next().map(str::trim) {
        Some("1") => {}
        other => return Err(format!("unexpected reply (no format version 1): {:?}", other.unwrap_or(""))),
    }
    let mut out = Vec::new();
    for line in lines {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 19 {
            return Err(format!("short line: {line}"));
        }
        let num = |i: usize| f[i].parse::<u32>().map_err(|_| format!("bad number in: {line}"));
        out.push(ServerState {
            backend: f[1].to_owned(),
            name: f[3].to_owned(),
            addr: f[4].to_owned(),
            admin_state: num(6)?,
            weight: num(7)? as u16,
            port: num(18)? as u16,
        });
    }
    Ok(out)
}

/// Parse `show stat` CSV into current sessions (`scur`) per server.
pub fn parse_stat_sessions(csv: &str) -> Result<BTreeMap<(String, String), u64>, String> {
    let mut lines = csv.lines();
    let header = lines.next().ok_or("empty reply")?;
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let pos = |name: &str| cols.iter().position(|c| *c == name).ok_or(format!("no `{name}` column"));
    let (px, sv, scur) = (pos("pxname")?, pos("svname")?, pos("scur")?);
    let mut out = BTreeMap::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() <= scur || f[sv] == "FRONTEND" || f[sv] == "BACKEND" {
            continue;
        }
        out.insert((f[px].to_owned(), f[sv].to_owned()), f[scur].parse().unwrap_or(0));
    }
    Ok(out)
}

/// Differences between what HAProxy runs and `applied` (servers being drained excepted): a
/// description of each, empty when they agree. Only membership, address, port and weight are
/// compared; an operator's maintenance or drain is not undone.
pub fn drift(applied: &DesiredState, observed: &[ServerState], draining: &[(BackendName, ServerName)]) -> Vec<String> {
    let mut out = Vec::new();
    for svc in applied.services.values() {
        let be = svc.shape.backend_name.as_str();
        let seen: BTreeMap<&str, &ServerState> = observed
            .iter()
            .filter(|o| o.backend == be && !draining.iter().any(|(b, n)| b.as_str() == be && n.as_str() == o.name))
            .map(|o| (o.name.as_str(), o))
            .collect();
        for (name, s) in &svc.servers {
            match seen.get(name.as_str()) {
                None => out.push(format!("{be}/{name} is missing")),
                Some(o) => {
                    if o.port != s.port.get() || (s.host.as_str().parse::<std::net::IpAddr>().is_ok() && o.addr != s.host.as_str()) {
                        out.push(format!("{be}/{name} is at {}:{}, not {}:{}", o.addr, o.port, s.host, s.port));
                    }
                    if o.weight != weight_of(s) {
                        out.push(format!("{be}/{name} has weight {}, not {}", o.weight, weight_of(s)));
                    }
                }
            }
        }
        for name in seen.keys() {
            if !svc.servers.keys().any(|k| k.as_str() == *name) {
                out.push(format!("{be}/{name} should not be there"));
            }
        }
    }
    out
}

/// Keep only the `show servers state` lines that agree with `desired` (same backend, server,
/// address and port), with the desired weight written in, so that loading the file after a
/// reload restores health state but never an old address or weight.
pub fn filter_state_file(text: &str, desired: &DesiredState) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut f: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        if line.starts_with('#') || f.len() == 1 {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if f.len() < 19 {
            continue;
        }
        let server = ServerName::parse(&f[3]).ok().and_then(|name| {
            desired.services.values().find(|s| s.shape.backend_name.as_str() == f[1]).and_then(|s| s.servers.get(&name))
        });
        if let Some(srv) = server.filter(|srv| srv.host.as_str() == f[4] && srv.port.to_string() == f[18]) {
            let w = weight_of(srv).to_string();
            f[7] = w.clone();
            f[8] = w;
            out.push_str(&f.join(" "));
            out.push('\n');
        }
    }
    out
}

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

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 web 1 a 127.0.0.1 2 0 10 10 2 8 2 0 6 0 0 0 - 19081 - 0 0 - - 0\n3 web 2 b 127.0.0.1 0 1 5 5 1 1 0 0 2 0 0 0 - 19082 - 0 0 - - 0\n\n";

    #[test]
    fn parses_servers_state() {
        let s = parse_servers_state(STATE).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].name.as_str(), s[0].port, s[0].weight, s[0].admin_state), ("a", 19081, 10, 0));
        assert_eq!((s[1].name.as_str(), s[1].admin_state), ("b", 1));
        assert!(parse_servers_state("Unknown command.\n").is_err());
    }

    #[test]
    fn state_file_keeps_only_what_agrees_and_writes_desired_weights() {
        use myelin_core::{BackendOrder, DesiredService, Host, Port, ServiceName, ServiceShape, Weight};
        let server = |name: &str, port: u16, w: u16| Server {
            name: ServerName::parse(name).unwrap(),
            host: Host::parse("127.0.0.1").unwrap(),
            port: Port::new(port).unwrap(),
            weight: Some(Weight::parse(&w.to_string()).unwrap()),
            options: None,
        };
        let servers = [server("a", 19081, 3), server("b", 1, 1)].into_iter().map(|s| (s.name.clone(), s)).collect();
        let shape = ServiceShape { frontend: None, backend_name: BackendName::parse("web").unwrap(), backend_lines: vec![], order: BackendOrder::Asc };
        let desired = DesiredState { services: [(ServiceName::parse("web").unwrap(), DesiredService { shape, servers })].into(), ..DesiredState::default() };
        let out = filter_state_file(STATE, &desired);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[0], "1");
        assert!(lines[2].starts_with("3 web 1 a 127.0.0.1 2 0 3 3 "), "{out}");
    }

    #[test]
    fn parses_show_proc() {
        let t = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n16367           master          2 [failed: 0]   0d00h10m04s     2.6.12-1+deb12u4\n# workers\n10247           worker          0               0d00h00m00s     2.6.12-1+deb12u4\n# programs\n\n";
        assert_eq!(parse_show_proc(t).unwrap(), Processes { reloads: 2, worker_pids: vec![10247] });
        assert!(parse_show_proc("").is_err());
    }

    #[test]
    fn parses_stat_sessions() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax\nweb,FRONTEND,,,3,5\nweb,a,0,0,2,4\nweb,b,0,0,0,1\nweb,BACKEND,0,0,2,5\n";
        let s = parse_stat_sessions(csv).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[&("web".to_string(), "a".to_string())], 2);
    }
}
