//! HAProxy's runtime API (the stats socket, admin level): the commands myelin sends and the
//! replies it accepts. Any other reply is an error, and the caller falls back to a validated
//! reload.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use myelin_core::{BackendName, Server, ServerName};

use crate::ops::{weight_of, Op};
use crate::servers::{parse_servers_state, parse_stat_sessions, ServerState};
use crate::socket::{ask, ask_blocking, pipeline};
use crate::Error;

/// One runtime API command and the replies that mean success: empty (`""`), or containing one
/// of the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub line: String,
    pub ok: &'static [&'static str],
}

impl Command {
    fn new(line: String, ok: &'static [&'static str]) -> Self {
        Self { line, ok }
    }

    fn accepts(&self, reply: &str) -> bool {
        let r = reply.trim();
        (r.is_empty() && self.ok.contains(&"")) || self.ok.iter().any(|o| !o.is_empty() && r.contains(o))
    }
}

const EMPTY: &[&str] = &[""];
const REGISTERED: &[&str] = &["New server registered"];
const ADDR_SET: &[&str] = &["", "changed from", "no need to change"];
const DELETED: &[&str] = &["Server deleted"];

/// The commands that carry out one operation.
pub fn commands_of(op: &Op) -> Vec<Command> {
    match op {
        Op::Add { backend, server } => {
            let mut cmd = format!("add server {backend}/{} {} weight {}", server.name, server.address(), weight_of(server));
            if let Some(o) = &server.options {
                cmd.push(' ');
                cmd.push_str(o.as_str());
            }
            let mut cmds = vec![Command::new(cmd, REGISTERED), state_command(backend, &server.name, "ready")];
            if server.options.as_ref().is_some_and(|o| o.as_str().split_whitespace().any(|w| w == "check")) {
                cmds.push(Command::new(format!("enable health {backend}/{}", server.name), EMPTY));
            }
            cmds
        }
        Op::Update { backend, server } => update_commands(backend, server),
        Op::Drain { backend, name } => vec![state_command(backend, name, "drain")],
    }
}

/// Set address, port and weight of an existing server.
pub fn update_commands(backend: &BackendName, server: &Server) -> Vec<Command> {
    vec![
        Command::new(format!("set server {backend}/{} addr {} port {}", server.name, server.host, server.port), ADDR_SET),
        Command::new(format!("set server {backend}/{} weight {}", server.name, weight_of(server)), EMPTY),
    ]
}

pub fn state_command(backend: &BackendName, name: &ServerName, state: &str) -> Command {
    Command::new(format!("set server {backend}/{name} state {state}"), EMPTY)
}

/// Put a drained server in maintenance, close what is left of its sessions, delete it.
pub fn remove_commands(backend: &BackendName, name: &ServerName) -> Vec<Command> {
    vec![
        state_command(backend, name, "maint"),
        Command::new(format!("shutdown sessions server {backend}/{name}"), EMPTY),
        Command::new(format!("del server {backend}/{name}"), DELETED),
    ]
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

    /// Run `commands` in order on one connection (pipelined); the number sent. The first reply
    /// that is not a success is the error (HAProxy runs the commands after it all the same:
    /// the caller falls back to a reload, which sets everything right).
    pub async fn run(&self, commands: &[Command]) -> Result<usize, Error> {
        if commands.is_empty() {
            return Ok(0);
        }
        let lines: Vec<String> = commands.iter().map(|c| c.line.clone()).collect();
        let replies = pipeline(&self.socket, &lines, self.timeout).await?;
        for (c, reply) in commands.iter().zip(&replies) {
            if !c.accepts(reply) {
                return Err(Error::Runtime { command: c.line.clone(), reply: reply.trim().to_owned() });
            }
        }
        Ok(commands.len())
    }

    /// Carry out one operation; the number of commands sent.
    pub async fn apply(&self, op: &Op) -> Result<usize, Error> {
        self.run(&commands_of(op)).await
    }

    pub async fn set_state(&self, backend: &BackendName, name: &ServerName, state: &str) -> Result<(), Error> {
        self.run(&[state_command(backend, name, state)]).await.map(|_| ())
    }

    /// Put a drained server in maintenance, close what is left of its sessions, delete it.
    pub async fn remove(&self, backend: &BackendName, name: &ServerName) -> Result<usize, Error> {
        self.run(&remove_commands(backend, name)).await
    }

    /// `show servers state`, parsed.
    pub async fn servers_state(&self) -> Result<Vec<ServerState>, Error> {
        self.servers_state_read(|_, servers| servers).await
    }

    /// The raw `show servers state` text (for the server-state file), checked by parsing it.
    pub async fn servers_state_text(&self) -> Result<String, Error> {
        self.servers_state_read(|text, _| text).await
    }

    /// `show servers state`, parsed, and what `then` makes of it there: a drift check compares
    /// it where it was read, and only the findings come back.
    pub async fn servers_state_then<T: Send + 'static>(&self, then: impl FnOnce(Vec<ServerState>) -> T + Send + 'static) -> Result<T, Error> {
        self.servers_state_read(move |_, servers| then(servers)).await
    }

    /// `show servers state` as text and parsed, handed to `keep`. A line per server: 13 MB at
    /// 100,000 servers, a hundred milliseconds or more to read and parse; on the blocking pool,
    /// not on the thread that runs the daemon loop, and freed there.
    async fn servers_state_read<T: Send + 'static>(&self, keep: impl FnOnce(String, Vec<ServerState>) -> T + Send + 'static) -> Result<T, Error> {
        const COMMAND: &str = "show servers state";
        let runtime = |reply: String| Error::Runtime { command: COMMAND.into(), reply };
        let (socket, timeout) = (self.socket.clone(), self.timeout);
        tokio::task::spawn_blocking(move || {
            let text = ask_blocking(&socket, COMMAND, timeout)?;
            let servers = parse_servers_state(&text).map_err(runtime)?;
            Ok(keep(text, servers))
        })
        .await
        .unwrap_or_else(|e| Err(runtime(format!("reading the reply stopped: {e}"))))
    }

    /// Current sessions per (backend, server) of one backend: `show stat <backend> 4 -1` (its
    /// servers only), so that draining costs what drains, not the fleet.
    pub async fn sessions_of(&self, backend: &BackendName) -> Result<BTreeMap<(String, String), u64>, Error> {
        let command = format!("show stat {backend} 4 -1");
        let reply = self.ask(&command).await?;
        parse_stat_sessions(&reply).map_err(|reason| Error::Runtime { command, reply: reason })
    }

    /// Current sessions per (backend, server), from `show stat`.
    pub async fn sessions(&self) -> Result<BTreeMap<(String, String), u64>, Error> {
        let reply = self.ask("show stat").await?;
        parse_stat_sessions(&reply).map_err(|reason| Error::Runtime { command: "show stat".into(), reply: reason })
    }
}
