//! HAProxy's runtime API (the stats socket, admin level): the commands myelin sends and the
//! replies it accepts. Any other reply is an error, and the caller falls back to a validated
//! reload.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use myelin_core::{BackendName, Server, ServerName};

use crate::ops::{weight_of, Op};
use crate::servers::{parse_servers_state, parse_stat_sessions, ServerState};
use crate::socket::ask;
use crate::Error;

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
