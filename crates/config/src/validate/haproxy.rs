//! The top-level `haproxy` section: the sections written into haproxy.cfg (`global`,
//! `defaults`, `extra_sections`) and how myelin drives HAProxy ([`HaproxySettings`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use myelin_core::{ConfigLine, Sections};

use super::context::Ctx;
use super::{Command, HaproxySettings};
use crate::load::resolve;
use crate::position::KeyPath;
use crate::schema::{CommandConfig, HaproxyConfig, Seconds};

/// The `global` section myelin writes when the config gives none.
pub const DEFAULT_GLOBAL: &[&str] = &["maxconn 4096"];

/// The `defaults` myelin writes when the config gives none. `retries` with `option redispatch`
/// and `retry-on` (also an empty response, which is what Docker's userland proxy gives while a
/// container is not listening yet or any more)
/// lets HAProxy retry a connection refused by a backend that is shutting down on another server.
pub const DEFAULT_DEFAULTS: &[&str] =
    &["mode http", "timeout connect 5s", "timeout client 30s", "timeout server 30s", "retries 3", "option redispatch", "retry-on conn-failure empty-response response-timeout"];

fn hp() -> KeyPath {
    KeyPath::root().key("haproxy")
}

fn defaults(lines: &[&str]) -> Vec<ConfigLine> {
    lines.iter().map(|l| ConfigLine::parse(l).expect("built-in lines are valid")).collect()
}

/// `global`, `defaults` and `extra_sections`.
pub(super) fn sections(cx: &mut Ctx, h: Option<&HaproxyConfig>) -> Sections {
    let Some(h) = h else {
        return Sections { global: defaults(DEFAULT_GLOBAL), defaults: defaults(DEFAULT_DEFAULTS), extra: vec![] };
    };
    let global = match &h.global {
        Some(g) => cx.lines(&hp().key("global"), g),
        None => defaults(DEFAULT_GLOBAL),
    };
    let dflt = match &h.defaults {
        Some(d) => cx.lines(&hp().key("defaults"), d),
        None => defaults(DEFAULT_DEFAULTS),
    };
    let mut extra = Vec::new();
    for (header, lines) in &h.extra_sections {
        let path = hp().key("extra_sections").key(header.as_str());
        match ConfigLine::parse(header) {
            Ok(hl) => {
                let body = cx.lines(&path, lines);
                extra.push((hl, body));
            }
            Err(e) => cx.error(&path, e.to_string()),
        }
    }
    Sections { global, defaults: dflt, extra }
}

fn command(c: &CommandConfig) -> Result<Command, String> {
    match c {
        CommandConfig::Shell(s) if s.trim().is_empty() => Err("must not be empty".into()),
        CommandConfig::Shell(s) => Ok(Command::Shell(s.clone())),
        CommandConfig::Argv(v) if v.is_empty() || v[0].is_empty() => Err("must name a program".into()),
        CommandConfig::Argv(v) => Ok(Command::Argv(v.clone())),
    }
}

/// How myelin drives HAProxy. Every number is checked here, so none can make a `Duration`
/// panic or a wait run away.
pub(super) fn settings(cx: &mut Ctx, file: &Path, h: Option<&HaproxyConfig>) -> HaproxySettings {
    let Some(h) = h else {
        cx.notice(&hp(), "no `haproxy` section: haproxy.cfg is neither written nor reloaded");
        return HaproxySettings {
            config_file_path: PathBuf::from("/etc/haproxy/haproxy.cfg"),
            do_writes: false,
            do_reloads: false,
            reload_command: None,
            do_checks: false,
            check_command: None,
            restart_interval: Duration::from_secs(2),
            restart_jitter: 0.0,
            socket_file_path: None,
            do_socket: false,
            state_file_path: None,
            state_file_ttl: Duration::from_secs(86400),
            master_socket_path: None,
            drain_timeout: Duration::from_secs(30),
            server_state_file: None,
            verify_interval: Duration::from_secs(30),
        };
    };
    let mut cmd = |key: &str, c: &Option<CommandConfig>| c.as_ref().and_then(|c| command(c).map_err(|e| cx.error(&hp().key(key), e)).ok());
    let reload_command = cmd("reload_command", &h.reload_command);
    let check_command = cmd("check_command", &h.check_command);
    // With the master CLI, reloads go through it: no command is needed.
    if h.do_reloads && reload_command.is_none() && h.reload_command.is_none() && h.master_socket_path.is_none() {
        cx.error_near(&hp().key("reload_command"), &hp().key("do_reloads"), "required when `do_reloads` is true without `master_socket_path` (or set `do_reloads: false`)");
    }
    let interval = h.restart_interval.map_or(2.0, Seconds::get);
    if interval > 3600.0 {
        cx.error(&hp().key("restart_interval"), "must be 0 to 3600 seconds");
    }
    let jitter = h.restart_jitter.unwrap_or(0.0);
    if !(jitter.is_finite() && (0.0..=1.0).contains(&jitter)) {
        cx.error(&hp().key("restart_jitter"), "must be a fraction from 0 to 1");
    }
    let ttl = h.state_file_ttl.map_or(86400.0, Seconds::get);
    if ttl <= 0.0 {
        cx.error(&hp().key("state_file_ttl"), "must be a positive number of seconds");
    }
    let socket = h.socket_file_path.as_ref().and_then(|l| {
        if l.0.len() > 1 {
            cx.notice(&hp().key("socket_file_path"), "several sockets (nbproc) are not needed with HAProxy 2.x: the first is used");
        }
        l.0.first().map(PathBuf::from)
    });
    let do_socket = h.do_socket.unwrap_or(socket.is_some());
    if do_socket && socket.is_none() {
        cx.error_near(&hp().key("socket_file_path"), &hp().key("do_socket"), "required when `do_socket` is true");
    }
    let mut seconds = |key: &str, v: Option<Seconds>, default: f64| {
        let v = v.map_or(default, Seconds::get);
        if v > 86400.0 {
            cx.error(&hp().key(key), "must be 0 to 86400 seconds");
            return Duration::from_secs_f64(default);
        }
        Duration::from_secs_f64(v)
    };
    let drain_timeout = seconds("drain_timeout", h.drain_timeout, 30.0);
    let verify_interval = seconds("verify_interval", h.verify_interval, 30.0).max(Duration::from_secs(1));
    let config_file_path = resolve(file, h.config_file_path.as_deref().unwrap_or(Path::new("/etc/haproxy/haproxy.cfg")));
    let server_state_file = do_socket.then(|| match &h.server_state_file {
        Some(p) => resolve(file, p),
        None => {
            let mut s = config_file_path.clone().into_os_string();
            s.push(".state");
            PathBuf::from(s)
        }
    });
    for (key, p) in [("socket_file_path", socket.as_deref()), ("server_state_file", server_state_file.as_deref()), ("master_socket_path", h.master_socket_path.as_deref())] {
        if p.is_some_and(|p| p.to_string_lossy().contains(char::is_whitespace)) {
            cx.error(&hp().key(key), "must not contain white space");
        }
    }
    for (key, set) in [
        ("shared_frontend", h.shared_frontend.is_some()),
        ("use_nerve_weights", h.use_nerve_weights.is_some()),
        ("max_server_id", h.max_server_id.is_some()),
    ] {
        if set {
            cx.not_supported(&hp().key(key), key);
        }
    }
    if h.server_order_seed.is_some() {
        cx.notice(&hp().key("server_order_seed"), "myelin's `shuffle` order is seeded by the host name; `server_order_seed` has no effect");
    }
    HaproxySettings {
        config_file_path,
        do_writes: h.do_writes,
        do_reloads: h.do_reloads,
        reload_command,
        do_checks: h.do_checks,
        check_command,
        restart_interval: Duration::from_secs_f64(interval.clamp(0.0, 3600.0)),
        restart_jitter: if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 },
        socket_file_path: socket.map(|s| resolve(file, &s)),
        do_socket,
        state_file_path: h.state_file_path.as_deref().map(|p| resolve(file, p)),
        state_file_ttl: Duration::from_secs_f64(ttl.clamp(1.0, Seconds::MAX)),
        master_socket_path: h.master_socket_path.as_deref().map(|p| resolve(file, p)),
        drain_timeout,
        server_state_file,
        verify_interval,
    }
}

/// With the runtime API on, the config HAProxy runs must open the socket and load the server
/// state written before each reload: add what the operator did not write.
pub(super) fn runtime_lines(sections: &mut Sections, h: &HaproxySettings) {
    let (Some(socket), true) = (&h.socket_file_path, h.do_socket) else { return };
    let socket = socket.to_string_lossy();
    let has = |lines: &[ConfigLine], kw: &str| lines.iter().any(|l| l.as_str().starts_with(kw));
    if !sections.global.iter().any(|l| l.as_str().starts_with("stats socket") && l.as_str().split_whitespace().nth(2) == Some(&*socket)) {
        sections.global.push(ConfigLine::parse(&format!("stats socket {socket} mode 600 level admin expose-fd listeners")).expect("no white space in the path"));
    }
    if let Some(state) = &h.server_state_file {
        if !has(&sections.global, "server-state-file") {
            sections.global.push(ConfigLine::parse(&format!("server-state-file {}", state.display())).expect("no white space in the path"));
        }
        if !has(&sections.defaults, "load-server-state-from-file") {
            sections.defaults.push(ConfigLine::parse("load-server-state-from-file global").expect("valid"));
        }
    }
}
