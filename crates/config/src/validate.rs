//! Turning the parsed file into what the daemon runs: the [`Spec`] for HAProxy, the discovery
//! settings per service, and HAProxy's operating settings. Every error is collected, not just
//! the first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use myelin_core::{
    Backend, BackendName, BackendOrder, BindAddress, ConfigLine, Discovered, FrontendSpec, Port, Sections,
    ServiceName, ServiceSpec, Spec, StoreOptions,
};

use crate::error::{ConfigError, Notice};
use crate::load::resolve;
use crate::placement::{place, Placement};
use crate::schema::{AdminBind, BackendOrderConfig, CommandConfig, Config, Discovery, Lines, Seconds, ServerEntry, ServiceConfig};

/// A command to run: through `sh -c`, or directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl Command {
    /// The program and its arguments.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Self::Argv(v) => v.clone(),
        }
    }
}

/// How myelin drives HAProxy.
#[derive(Debug, Clone, PartialEq)]
pub struct HaproxySettings {
    pub config_file_path: PathBuf,
    pub do_writes: bool,
    pub do_reloads: bool,
    pub reload_command: Option<Command>,
    pub do_checks: bool,
    /// `None`: `haproxy -c -f <candidate>`.
    pub check_command: Option<Command>,
    pub restart_interval: Duration,
    pub restart_jitter: f64,
    pub socket_file_path: Option<PathBuf>,
    pub do_socket: bool,
    pub state_file_path: Option<PathBuf>,
    pub state_file_ttl: Duration,
    pub master_socket_path: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub server_state_file: Option<PathBuf>,
    pub verify_interval: Duration,
}

/// What a service's watcher needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRuntime {
    pub discovery: Discovery,
    pub store: StoreOptions,
}

/// A loaded, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub file: PathBuf,
    pub spec: Spec,
    pub services: BTreeMap<ServiceName, ServiceRuntime>,
    pub haproxy: HaproxySettings,
    /// Synapse's `file_output.output_directory`.
    pub file_output: Option<PathBuf>,
    /// Where the admin HTTP listener binds, when it is on.
    pub admin: Option<SocketAddr>,
    /// Translations made and keys not supported yet: to be shown as warnings.
    pub notices: Vec<Notice>,
}

impl Loaded {
    /// What the sources of `service` are told: its name, and the file their relative paths
    /// are taken from.
    pub fn source_context(&self, service: &ServiceName) -> myelin_source::Context {
        myelin_source::Context { service: service.clone(), config_file: self.file.clone() }
    }
}

/// The `global` section myelin writes when the config gives none.
pub const DEFAULT_GLOBAL: &[&str] = &["maxconn 4096"];

/// The `defaults` myelin writes when the config gives none. `retries` with `option redispatch`
/// and `retry-on` (also an empty response, which is what Docker's userland proxy gives while a
/// container is not listening yet or any more)
/// lets HAProxy retry a connection refused by a backend that is shutting down on another server.
pub const DEFAULT_DEFAULTS: &[&str] =
    &["mode http", "timeout connect 5s", "timeout client 30s", "timeout server 30s", "retries 3", "option redispatch", "retry-on conn-failure empty-response response-timeout"];

const LEGACY: &[(&str, &str)] = &[("contimeout", "timeout connect"), ("clitimeout", "timeout client"), ("srvtimeout", "timeout server")];

struct Ctx<'a> {
    file: &'a Path,
    sources: &'a [(PathBuf, String)],
    errors: Vec<ConfigError>,
    notices: Vec<Notice>,
}

impl Ctx<'_> {
    /// Where `needle` first appears in any of the source texts.
    fn locate(&self, needle: &str) -> (PathBuf, Option<usize>) {
        for (file, text) in self.sources {
            if let Some(i) = text.find(needle) {
                return (file.clone(), Some(text[..i].matches('\n').count() + 1));
            }
        }
        (self.file.to_path_buf(), None)
    }

    fn error(&mut self, path: impl Into<String>, needle: &str, message: impl Into<String>) {
        let (file, line) = self.locate(needle);
        self.errors.push(ConfigError { file, line, column: None, path: path.into(), message: message.into() });
    }

    fn notice(&mut self, path: impl Into<String>, needle: &str, message: impl Into<String>) {
        let (file, line) = self.locate(needle);
        self.notices.push(Notice { file, line, path: path.into(), message: message.into() });
    }

    fn not_supported(&mut self, path: &str, key: &str) {
        self.notice(path, &format!("\"{key}\""), format!("`{key}` is read but not supported yet; it has no effect"));
    }

    /// Validate lines, translating keywords HAProxy 2.x no longer accepts.
    fn lines(&mut self, path: &str, lines: &Lines) -> Vec<ConfigLine> {
        let mut out = Vec::new();
        for (i, raw) in lines.0.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let mut line = match ConfigLine::parse(raw) {
                Ok(l) => l,
                Err(e) => {
                    self.error(p, raw.lines().next().unwrap_or(raw), e.to_string());
                    continue;
                }
            };
            if let Some((old, new)) = LEGACY.iter().find(|(old, _)| line.keyword() == *old) {
                let rest = line.as_str()[old.len()..].trim_start();
                let translated = ConfigLine::parse(&format!("{new} {rest}")).expect("a valid line stays valid");
                self.notice(
                    p,
                    line.as_str(),
                    format!("`{line}` is not accepted by HAProxy 2.x; writing `{translated}` instead"),
                );
                line = translated;
            }
            out.push(line);
        }
        out
    }
}

pub(crate) fn validate(file: &Path, config: Config, sources: &[(PathBuf, String)]) -> Result<Loaded, Vec<ConfigError>> {
    let mut cx = Ctx { file, sources, errors: Vec::new(), notices: Vec::new() };
    let hap = config.haproxy.clone();

    let sections = match &hap {
        Some(h) => {
            let global = match &h.global {
                Some(g) => cx.lines("haproxy.global", g),
                None => defaults(DEFAULT_GLOBAL),
            };
            let dflt = match &h.defaults {
                Some(d) => cx.lines("haproxy.defaults", d),
                None => defaults(DEFAULT_DEFAULTS),
            };
            let mut extra = Vec::new();
            for (header, lines) in &h.extra_sections {
                let path = format!("haproxy.extra_sections.{header}");
                match ConfigLine::parse(header) {
                    Ok(hl) => {
                        let body = cx.lines(&path, lines);
                        extra.push((hl, body));
                    }
                    Err(e) => cx.error(path, header, e.to_string()),
                }
            }
            Sections { global, defaults: dflt, extra }
        }
        None => Sections { global: defaults(DEFAULT_GLOBAL), defaults: defaults(DEFAULT_DEFAULTS), extra: vec![] },
    };

    let global_bind = hap.as_ref().and_then(|h| h.bind_address.clone()).unwrap_or_else(|| "localhost".into());
    let mut services = BTreeMap::new();
    let mut specs = BTreeMap::new();
    let mut backend_names: BTreeMap<BackendName, ServiceName> = BTreeMap::new();
    for (name, svc) in &config.services {
        let path = format!("services.{name}");
        let sname = match ServiceName::parse(name) {
            Ok(n) => n,
            Err(e) => {
                cx.error(path, &format!("\"{name}\""), e.to_string());
                continue;
            }
        };
        if svc.haproxy.disabled {
            cx.notice(format!("{path}.haproxy.disabled"), "\"disabled\"", "service is disabled: not written to haproxy.cfg and not discovered");
            continue;
        }
        let Some(spec) = service_spec(&mut cx, &path, &sname, svc, &global_bind) else { continue };
        if let Some(other) = backend_names.insert(spec.backend_name.clone(), sname.clone()) {
            cx.error(format!("{path}.haproxy.backend_name"), spec.backend_name.as_str(), format!("backend name `{}` is already used by service `{other}`", spec.backend_name));
            continue;
        }
        for problem in svc.discovery.source().check() {
            let key = if problem.key.is_empty() { format!("{path}.discovery") } else { format!("{path}.discovery.{}", problem.key) };
            let needle = problem.key.rsplit('.').next().unwrap_or_default().split('[').next().unwrap_or_default().to_owned();
            cx.error(key, &needle, problem.message);
        }
        let discovery = svc.discovery.clone();
        if svc.leader_election.is_some() {
            cx.not_supported(&format!("{path}.leader_election"), "leader_election");
        }
        services.insert(sname.clone(), ServiceRuntime { discovery, store: StoreOptions { use_previous_backends: svc.use_previous_backends } });
        specs.insert(sname, spec);
    }

    let haproxy = haproxy_settings(&mut cx, file, hap.as_ref());
    let mut sections = sections;
    if cx.errors.is_empty() {
        runtime_lines(&mut sections, &haproxy);
    }
    if config.statsd.is_some() {
        cx.not_supported("statsd", "statsd");
    }
    let file_output = config.file_output.as_ref().map(|f| resolve(file, &f.output_directory));
    if config.file_output.as_ref().is_some_and(|f| f.output_directory.as_os_str().is_empty()) {
        cx.error("file_output.output_directory", "output_directory", "must not be empty");
    }
    let admin = config.admin.as_ref().and_then(|a| match admin_bind(&a.bind) {
        Ok(addr) => Some(addr),
        Err(e) => {
            cx.error("admin.bind", "bind", e);
            None
        }
    });

    if cx.errors.is_empty() {
        Ok(Loaded { file: file.into(), spec: Spec { sections, services: specs }, services, haproxy, file_output, admin, notices: cx.notices })
    } else {
        Err(cx.errors)
    }
}

/// `admin.bind`: a port alone means 127.0.0.1, so nothing is exposed by accident.
fn admin_bind(b: &AdminBind) -> Result<SocketAddr, String> {
    let port = |n: u64| u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| format!("port {n} is not from 1 to 65535"));
    match b {
        AdminBind::Port(n) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port(*n)?)),
        AdminBind::Text(t) => {
            let t = t.trim();
            if let Ok(n) = t.parse::<u64>() {
                return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port(n)?));
            }
            let addr: SocketAddr = t.parse().map_err(|_| format!("{t:?} is not ADDRESS:PORT with an IP address (e.g. 127.0.0.1:9213 or [::1]:9213), nor a port"))?;
            port(u64::from(addr.port()))?;
            Ok(addr)
        }
    }
}

fn defaults(lines: &[&str]) -> Vec<ConfigLine> {
    lines.iter().map(|l| ConfigLine::parse(l).expect("built-in lines are valid")).collect()
}

fn service_spec(cx: &mut Ctx<'_>, path: &str, name: &ServiceName, svc: &ServiceConfig, global_bind: &str) -> Option<ServiceSpec> {
    let h = &svc.haproxy;
    let errors_before = cx.errors.len();
    let hp = format!("{path}.haproxy");

    let port = h.port.and_then(|p| match Port::parse(&p.0.to_string()) {
        Ok(p) => Some(p),
        Err(e) => {
            cx.error(format!("{hp}.port"), "\"port\"", e.to_string());
            None
        }
    });
    let bind_address = match BindAddress::parse(h.bind_address.as_deref().unwrap_or(global_bind)) {
        Ok(b) => b,
        Err(e) => {
            cx.error(format!("{hp}.bind_address"), "bind_address", e.to_string());
            BindAddress::Any
        }
    };
    let bind_options = h.bind_options.as_deref().and_then(|o| match ConfigLine::parse(o) {
        Ok(l) => Some(l),
        Err(e) => {
            cx.error(format!("{hp}.bind_options"), "bind_options", e.to_string());
            None
        }
    });
    let server_options = h.server_options.as_deref().and_then(|o| {
        let mut rest = o;
        while let Some(i) = rest.find("%{") {
            let tail = &rest[i..];
            let end = tail.find('}').map_or(tail.len(), |e| e + 1);
            let ph = &tail[..end];
            if !matches!(ph, "%{host}" | "%{port}" | "%{name}") {
                cx.error(format!("{hp}.server_options"), "server_options", format!("unknown placeholder `{ph}` (known: %{{host}}, %{{port}}, %{{name}})"));
            }
            rest = &tail[end..];
        }
        match ConfigLine::parse(o) {
            Ok(l) => Some(l),
            Err(e) => {
                cx.error(format!("{hp}.server_options"), "server_options", e.to_string());
                None
            }
        }
    });

    let mut frontend_lines = cx.lines(&format!("{hp}.frontend"), &h.frontend);
    let mut backend_lines = cx.lines(&format!("{hp}.backend"), &h.backend);
    for line in cx.lines(&format!("{hp}.listen"), &h.listen) {
        match place(line.as_str()) {
            Placement::Frontend => frontend_lines.push(line),
            Placement::Backend => backend_lines.push(line),
            Placement::Both => {
                frontend_lines.push(line.clone());
                backend_lines.push(line);
            }
        }
    }
    let frontend = match port {
        Some(port) => Some(FrontendSpec { bind_address, port, bind_options, lines: frontend_lines }),
        None => {
            let dropped: Vec<_> = frontend_lines.iter().filter(|l| place(l.as_str()) == Placement::Frontend).map(|l| l.to_string()).collect();
            if !dropped.is_empty() {
                cx.notice(format!("{hp}"), &format!("\"{name}\""), format!("no `port`, so no frontend: these lines are not written: {}", dropped.join("; ")));
            }
            None
        }
    };

    let backend_name = match &h.backend_name {
        Some(b) => BackendName::parse(b).map_err(|e| cx.error(format!("{hp}.backend_name"), b, e.to_string())).ok(),
        None => BackendName::parse(name.as_str()).ok(),
    };

    let mut default_servers: Vec<Backend> = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, s) in svc.default_servers.iter().enumerate() {
        match server_entry(s) {
            Ok(b) => {
                if !seen.insert(b.name.clone()) {
                    cx.error(format!("{path}.default_servers[{i}]"), &s.host, format!("duplicate server name `{}`", b.name));
                }
                default_servers.push(b);
            }
            Err(e) => cx.error(format!("{path}.default_servers[{i}]"), &s.host, e),
        }
    }

    if h.server_port_override.is_some() {
        cx.notice(format!("{hp}.server_port_override"), "server_port_override", "deprecated: use the service's `backend_port_override`");
    }
    let backend_port_override = svc.backend_port_override.or(h.server_port_override).and_then(|p| match Port::parse(&p.0.to_string()) {
        Ok(p) => Some(p),
        Err(e) => {
            cx.error(format!("{path}.backend_port_override"), "port_override", e.to_string());
            None
        }
    });
    let order = match h.backend_order {
        None | Some(BackendOrderConfig::Asc) | Some(BackendOrderConfig::NoShuffle) => BackendOrder::Asc,
        Some(BackendOrderConfig::Desc) => BackendOrder::Desc,
        Some(BackendOrderConfig::Shuffle) => BackendOrder::Shuffle(host_seed()),
    };
    if h.shared_frontend.is_some() {
        cx.not_supported(&format!("{hp}.shared_frontend"), "shared_frontend");
    }
    if h.cookie_value_method.is_some() {
        cx.not_supported(&format!("{hp}.cookie_value_method"), "cookie_value_method");
    }
    if cx.errors.len() > errors_before {
        return None;
    }
    Some(ServiceSpec {
        frontend,
        backend_name: backend_name?,
        backend_lines,
        server_options,
        default_servers,
        keep_default_servers: svc.keep_default_servers,
        backend_port_override,
        order,
    })
}

/// A seed that is stable on one machine and differs across machines.
fn host_seed() -> u64 {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    host.trim().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn server_entry(s: &ServerEntry) -> Result<Backend, String> {
    let d = Discovered {
        name: s.name.clone(),
        host: s.host.clone(),
        port: s.port.0.to_string(),
        weight: s.weight.map(|w| w.0.to_string()),
        labels: s.labels.clone(),
    };
    d.validate().map_err(|e| e.to_string())
}

fn command(c: &CommandConfig) -> Result<Command, String> {
    match c {
        CommandConfig::Shell(s) if s.trim().is_empty() => Err("must not be empty".into()),
        CommandConfig::Shell(s) => Ok(Command::Shell(s.clone())),
        CommandConfig::Argv(v) if v.is_empty() || v[0].is_empty() => Err("must name a program".into()),
        CommandConfig::Argv(v) => Ok(Command::Argv(v.clone())),
    }
}

fn haproxy_settings(cx: &mut Ctx<'_>, file: &Path, h: Option<&crate::schema::HaproxyConfig>) -> HaproxySettings {
    let Some(h) = h else {
        cx.notice("haproxy", "", "no `haproxy` section: haproxy.cfg is neither written nor reloaded");
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
    let mut cmd = |key: &str, c: &Option<CommandConfig>| {
        c.as_ref().and_then(|c| command(c).map_err(|e| cx.error(format!("haproxy.{key}"), key, e)).ok())
    };
    let reload_command = cmd("reload_command", &h.reload_command);
    let check_command = cmd("check_command", &h.check_command);
    if h.do_reloads && reload_command.is_none() && h.reload_command.is_none() {
        cx.error("haproxy.reload_command", "\"haproxy\"", "required when `do_reloads` is true (or set `do_reloads: false`)");
    }
    let interval = h.restart_interval.map_or(2.0, Seconds::get);
    if interval > 3600.0 {
        cx.error("haproxy.restart_interval", "restart_interval", "must be 0 to 3600 seconds");
    }
    let jitter = h.restart_jitter.unwrap_or(0.0);
    if !(jitter.is_finite() && (0.0..=1.0).contains(&jitter)) {
        cx.error("haproxy.restart_jitter", "restart_jitter", "must be a fraction from 0 to 1");
    }
    let ttl = h.state_file_ttl.map_or(86400.0, Seconds::get);
    if ttl <= 0.0 {
        cx.error("haproxy.state_file_ttl", "state_file_ttl", "must be a positive number of seconds");
    }
    let socket = h.socket_file_path.as_ref().and_then(|l| {
        if l.0.len() > 1 {
            cx.notice("haproxy.socket_file_path", "socket_file_path", "several sockets (nbproc) are not needed with HAProxy 2.x: the first is used");
        }
        l.0.first().map(PathBuf::from)
    });
    let do_socket = h.do_socket.unwrap_or(socket.is_some());
    if do_socket && socket.is_none() {
        cx.error("haproxy.socket_file_path", "do_socket", "required when `do_socket` is true");
    }
    let mut seconds = |key: &str, v: Option<Seconds>, default: f64| {
        let v = v.map_or(default, Seconds::get);
        if v > 86400.0 {
            cx.error(format!("haproxy.{key}"), key, "must be 0 to 86400 seconds");
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
            cx.error(format!("haproxy.{key}"), key, "must not contain white space");
        }
    }
    for (key, set) in [
        ("shared_frontend", h.shared_frontend.is_some()),
        ("use_nerve_weights", h.use_nerve_weights.is_some()),
        ("max_server_id", h.max_server_id.is_some()),
    ] {
        if set {
            cx.not_supported(&format!("haproxy.{key}"), key);
        }
    }
    if h.server_order_seed.is_some() {
        cx.notice("haproxy.server_order_seed", "server_order_seed", "myelin's `shuffle` order is seeded by the host name; `server_order_seed` has no effect");
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
fn runtime_lines(sections: &mut Sections, h: &HaproxySettings) {
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
