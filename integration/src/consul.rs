//! A Consul test double: one agent (node `node1`, datacenter `dc1`) speaking the part of
//! Consul's HTTP API that myelin's Consul source uses, on 127.0.0.1. No Consul server can be
//! installed on the test machines, so this follows Consul's HTTP API documentation:
//!
//! - `PUT /v1/agent/service/register` (JSON body: `ID` (default `Name`), `Name`, `Tags`,
//!   `Address`, `Port`, `Meta`, `Weights` (default `{"Passing": 1, "Warning": 1}`),
//!   `TaggedAddresses`, and a `Check` or `Checks` with a `TTL`). As documented, a TTL check
//!   starts `critical` unless its definition gives `Status`, and a service's checks get the
//!   IDs `service:<ID>` (one check) or `service:<ID>:<n>` (several, from 1) unless they give
//!   `CheckID`. `Meta` is validated as Consul does (at most 64 pairs; keys of ASCII letters,
//!   digits, `_` and `-`, at most 128 characters, not starting with `consul-`; values at most
//!   512 characters) and so are `Weights` (`Passing` at least 1): 400 otherwise.
//!   `PUT /v1/agent/service/deregister/<ID>` removes the service and its checks (404 for an
//!   unknown ID).
//! - TTL checks: a check not passed, warned or failed within its `TTL` turns `critical`
//!   (waking blocked queries). A check with `DeregisterCriticalServiceAfter` that stays
//!   critical that long has its service deregistered by a reaper; as in Consul, the timeout is
//!   raised to a minimum and the reaper runs periodically, which Consul fixes at 1 minute and
//!   30 s and the double lets a test shorten ([`Consul::set_reaper`]; default 1 minute and 30 s).
//! - `GET /v1/agent/services`: the agent's services by ID (`ID`, `Service`, `Tags`, `Meta`,
//!   `Port`, `Address`, `Weights`, `EnableTagOverride`), not a blocking query.
//! - `PUT /v1/agent/check/pass|warn|fail/<CheckID>`: a TTL check becomes `passing`, `warning`
//!   or `critical`.
//! - `GET /v1/health/service/<name>`: entries `{"Node": {...}, "Service": {...}, "Checks":
//!   [...]}` with the node's `serfHealth` check (passing) first, as documented. `passing` keeps
//!   the entries whose checks all pass; `tag` (repeatable) keeps those carrying every tag;
//!   `dc` other than `dc1` answers 500 `No path to datacenter`, as Consul does. `filter` is
//!   not evaluated (its expression language is out of scope): it is recorded for the tests.
//! - `GET /v1/catalog/services`: `{"<name>": [tags...]}`, the union of each service's tags.
//! - Blocking queries: reads answer with `X-Consul-Index` (here one index for the whole
//!   store, which Consul's documentation allows: an index may move for unrelated changes) and
//!   `X-Consul-KnownLeader`; with `index` greater than or equal to the current one, a read
//!   waits until the index moves or `wait` (`10s`, `500ms`, `1m`; default 5 minutes, at most
//!   10) expires. No jitter is added (Consul adds up to wait/16). With `stale`, the answer
//!   carries `X-Consul-LastContact` (set by the test). A lowered index ([`Consul::restore`])
//!   wakes every blocked query, as a snapshot restore does in Consul; [`Consul::restart`]
//!   closes every connection and comes back on the same port with a lower index.
//! - ACLs: with a token set, a request whose `X-Consul-Token` differs gets 403 `ACL not found`.
//! - Faults for the tests ([`Fault`]), on catalog and health reads only (the agent endpoints
//!   are local to an agent and keep working): 500 `No cluster leader`, hanging without an answer, resetting the
//!   connection, or a malformed 200 answer.
#![allow(clippy::type_complexity)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How reads are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 500 with `No cluster leader`, as Consul answers while it has no leader.
    Error500,
    /// Read the request, never answer (until the fault is cleared or the double stops).
    Hang,
    /// Close the connection with a TCP reset.
    Reset,
    /// 200 with a truncated JSON document.
    Malformed,
}

#[derive(Debug, Clone)]
struct Instance {
    id: String,
    name: String,
    tags: Vec<String>,
    address: String,
    port: u64,
    meta: BTreeMap<String, String>,
    weights: (u64, u64),
    tagged: Value,
    checks: Vec<String>,
}

#[derive(Debug, Clone)]
struct Check {
    service: String,
    status: String,
    /// A TTL check: its TTL, and when it turns critical unless passed again.
    ttl: Option<(Duration, Instant)>,
    /// `DeregisterCriticalServiceAfter`.
    deregister_after: Option<Duration>,
    /// Since when it is critical.
    critical_since: Option<Instant>,
}

impl Check {
    fn set(&mut self, status: &str, now: Instant) -> bool {
        if let Some((ttl, deadline)) = &mut self.ttl {
            *deadline = now + *ttl;
        }
        if self.status == status {
            return false;
        }
        self.status = status.to_owned();
        self.critical_since = (status == "critical").then_some(now);
        true
    }
}

#[derive(Debug)]
struct State {
    index: u64,
    services: BTreeMap<String, Instance>,
    /// Check ID → its service and state.
    checks: BTreeMap<String, Check>,
    /// The reaper: (the least `DeregisterCriticalServiceAfter`, how often it runs).
    reaper: (Duration, Duration),
    last_reap: Instant,
    fault: Fault,
    token: Option<String>,
    last_contact_ms: u64,
    /// Answer reads at once, whatever their `index` (a misbehaving server or proxy).
    ignore_index: bool,
    /// Every read's path and query, in order (for assertions).
    reads: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    reads: AtomicU64,
}

/// The running double; stopped when dropped.
pub struct Consul {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Consul {
    /// Start on a free port of 127.0.0.1 with the index at `index`: one of [`crate::free_port`]'s,
    /// so that while [`Consul::restart`] has it closed no container or outgoing connection
    /// is given it.
    pub fn start(index: u64) -> Self {
        Self::serve_on(TcpListener::bind(("127.0.0.1", crate::free_port())).unwrap(), index)
    }

    fn serve_on(listener: TcpListener, index: u64) -> Self {
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                index,
                services: BTreeMap::new(),
                checks: BTreeMap::new(),
                reaper: (Duration::from_secs(60), Duration::from_secs(30)),
                last_reap: Instant::now(),
                fault: Fault::None,
                token: None,
                last_contact_ms: 0,
                ignore_index: false,
                reads: Vec::new(),
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            reads: AtomicU64::new(0),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                tick(&s);
            }
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || serve(conn, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self { port, shared }
    }

    /// Stop, and start again on the same port with the same registrations and the index at
    /// `index`: open connections are closed without an answer, as when a Consul agent restarts
    /// (here with a lower index, as after a cluster was rebuilt from a snapshot).
    pub fn restart(self, index: u64) -> Self {
        let port = self.port;
        let (services, checks, token, reaper) = self.with(|st| (st.services.clone(), st.checks.clone(), st.token.clone(), st.reaper));
        drop(self);
        let t0 = Instant::now();
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("cannot bind 127.0.0.1:{port} again: {e}"),
            }
        };
        let c = Self::serve_on(listener, index);
        c.with(|st| {
            st.services = services;
            st.checks = checks;
            st.token = token;
            st.reaper = reaper;
        });
        c
    }

    /// The reaper's least `DeregisterCriticalServiceAfter` and its period (Consul's: 1 minute
    /// and 30 s): tests shorten both.
    pub fn set_reaper(&self, min: Duration, every: Duration) {
        self.with(|st| st.reaper = (min, every));
    }

    /// A check's status (`passing`, `warning`, `critical`), if the agent has it.
    pub fn check_status(&self, check_id: &str) -> Option<String> {
        self.with(|st| st.checks.get(check_id).map(|c| c.status.clone()))
    }

    /// The IDs of the agent's services.
    pub fn service_ids(&self) -> Vec<String> {
        self.with(|st| st.services.keys().cloned().collect())
    }

    /// A registered service as the agent lists it (`GET /v1/agent/services`), if it has it.
    pub fn agent_service(&self, id: &str) -> Option<Value> {
        self.with(|st| st.services.get(id).map(agent_service))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut st = self.shared.state.lock().unwrap();
        let out = f(&mut st);
        self.shared.changed.notify_all();
        out
    }

    pub fn set_fault(&self, fault: Fault) {
        self.with(|st| st.fault = fault);
    }

    /// Require this ACL token (`None`: no ACLs).
    pub fn set_token(&self, token: Option<&str>) {
        self.with(|st| st.token = token.map(str::to_owned));
    }

    /// Answer every read at once, as a server that ignores `index` would.
    pub fn set_ignore_index(&self, on: bool) {
        self.with(|st| st.ignore_index = on);
    }

    pub fn set_last_contact(&self, ms: u64) {
        self.with(|st| st.last_contact_ms = ms);
    }

    /// The index drops to `index` (e.g. a snapshot restore, or a rebuilt cluster): every
    /// blocked query answers at once, with the lower index.
    pub fn restore(&self, index: u64) {
        self.with(|st| st.index = index);
    }

    pub fn index(&self) -> u64 {
        self.with(|st| st.index)
    }

    /// Reads so far (path and query of each).
    pub fn reads(&self) -> Vec<String> {
        self.with(|st| st.reads.clone())
    }

    /// How many reads were answered or faulted so far.
    pub fn read_count(&self) -> u64 {
        self.shared.reads.load(Ordering::Relaxed)
    }

    /// An HTTP request to the double, as a client would send it: (status, body).
    pub fn call(&self, method: &str, path: &str, body: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let tok = token.map(|t| format!("X-Consul-Token: {t}\r\n")).unwrap_or_default();
        s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: consul\r\n{tok}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out.split_whitespace().nth(1).unwrap_or("0").parse()?;
        Ok((status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    }

    /// Register a service instance on the agent (`PUT /v1/agent/service/register`) with one
    /// TTL check that starts `status`. Panics if the double refuses.
    pub fn register(&self, id: &str, name: &str, port: u16, tags: &[&str], status: &str) {
        let def = json!({"ID": id, "Name": name, "Tags": tags, "Address": "127.0.0.1", "Port": port,
            "Check": {"TTL": "30s", "Status": status}});
        self.register_json(&def);
    }

    pub fn register_json(&self, def: &Value) {
        let token = self.with(|st| st.token.clone());
        let (code, body) = self.call("PUT", "/v1/agent/service/register", &def.to_string(), token.as_deref()).unwrap();
        assert_eq!(code, 200, "register: {body}");
    }

    pub fn deregister(&self, id: &str) {
        let token = self.with(|st| st.token.clone());
        let (code, body) = self.call("PUT", &format!("/v1/agent/service/deregister/{id}"), "", token.as_deref()).unwrap();
        assert_eq!(code, 200, "deregister: {body}");
    }

    /// `pass`, `warn` or `fail` the TTL check of service `id`.
    pub fn check(&self, id: &str, verdict: &str) {
        let token = self.with(|st| st.token.clone());
        let (code, body) = self.call("PUT", &format!("/v1/agent/check/{verdict}/service:{id}"), "", token.as_deref()).unwrap();
        assert_eq!(code, 200, "check {verdict}: {body}");
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
    }
}

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    token: Option<String>,
    body: Vec<u8>,
    close: bool,
}

/// One connection: requests one after another (keep-alive), until the client closes it.
fn serve(mut conn: TcpStream, s: &Shared) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    loop {
        let req = match read_request(&mut conn, &mut buf, s) {
            Some(r) => r,
            None => return,
        };
        let is_read = req.method == "GET" && !req.path.starts_with("/v1/agent/");
        let fault = s.state.lock().unwrap().fault;
        if is_read {
            s.reads.fetch_add(1, Ordering::Relaxed);
            match fault {
                Fault::Hang => {
                    while !s.stop.load(Ordering::Relaxed) && s.state.lock().unwrap().fault == Fault::Hang {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return;
                }
                Fault::Reset => {
                    reset(conn);
                    return;
                }
                _ => {}
            }
        }
        let (status, headers, body) = answer(&req, s, if is_read { fault } else { Fault::None });
        if s.stop.load(Ordering::Relaxed) {
            // Stopped (or restarting) while the request waited: the connection just closes.
            return;
        }
        let reason = match status {
            200 => "OK",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Internal Server Error",
        };
        let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n", body.len());
        head.push_str(if body.starts_with('[') || body.starts_with('{') { "Content-Type: application/json\r\n" } else { "Content-Type: text/plain\r\n" });
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body.as_bytes())).is_err() || req.close {
            return;
        }
    }
}

/// A TCP reset: close with unread data in the receive buffer (the request's next bytes are
/// waited for with `peek`, not read), which makes the kernel send RST instead of FIN.
fn reset(conn: TcpStream) {
    let mut b = [0u8; 1];
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = conn.peek(&mut b);
    drop(conn);
}

fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>, s: &Shared) -> Option<Request> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if s.stop.load(Ordering::Relaxed) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let mut len = 0usize;
    let (mut token, mut close) = (None, false);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "x-consul-token" => token = Some(v.trim().to_owned()),
                "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + len {
        match conn.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    Some(Request { method, path: decode(path), query, token, body, close })
}

/// Percent-decoding of a URL component (`+` is a space in a query).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 3 <= b.len()).then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())).flatten();
        match (hex, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `10s`, `500ms`, `1m` (Go durations as Consul takes them).
fn parse_wait(v: &str) -> Option<Duration> {
    let (num, unit) = v.find(|c: char| c.is_ascii_alphabetic()).map(|i| v.split_at(i)).unwrap_or((v, "s"));
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(600.0)))
}

type Answer = (u16, Vec<(String, String)>, String);

fn answer(req: &Request, s: &Shared, fault: Fault) -> Answer {
    let text = |code: u16, m: &str| (code, vec![], m.to_owned());
    {
        let st = s.state.lock().unwrap();
        if st.token.is_some() && req.token != st.token {
            return text(403, "ACL not found");
        }
    }
    let segs: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("PUT", ["v1", "agent", "service", "register"]) => register(s, &req.body),
        ("PUT", ["v1", "agent", "service", "deregister", id]) => {
            let mut st = s.state.lock().unwrap();
            let Some(inst) = st.services.remove(*id) else { return text(404, &format!("Unknown service ID {id:?}")) };
            for c in inst.checks {
                st.checks.remove(&c);
            }
            st.index += 1;
            s.changed.notify_all();
            text(200, "")
        }
        ("PUT", ["v1", "agent", "check", verdict @ ("pass" | "warn" | "fail"), id]) => {
            let mut st = s.state.lock().unwrap();
            let status = match *verdict {
                "pass" => "passing",
                "warn" => "warning",
                _ => "critical",
            };
            let Some(c) = st.checks.get_mut(*id) else { return text(404, &format!("Unknown check ID {id:?}")) };
            if c.ttl.is_none() {
                return text(500, &format!("CheckID {id:?} does not have associated TTL"));
            }
            if c.set(status, Instant::now()) {
                st.index += 1;
                s.changed.notify_all();
            }
            text(200, "")
        }
        ("GET", ["v1", "agent", "services"]) => {
            let st = s.state.lock().unwrap();
            let all: serde_json::Map<String, Value> = st.services.iter().map(|(id, i)| (id.clone(), agent_service(i))).collect();
            (200, vec![], Value::Object(all).to_string())
        }
        ("GET", ["v1", "health", "service", name]) => read(req, s, fault, |st| health(st, name, req)),
        ("GET", ["v1", "catalog", "services"]) => read(req, s, fault, |st| {
            let mut all: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for i in st.services.values() {
                all.entry(&i.name).or_default().extend(i.tags.iter().map(String::as_str));
            }
            json!(all).to_string()
        }),
        (_, ["v1", ..]) => text(405, "method not allowed"),
        _ => text(404, "not found"),
    }
}

fn register(s: &Shared, body: &[u8]) -> Answer {
    let bad = |m: String| (400, vec![], m);
    let Ok(def) = serde_json::from_slice::<Value>(body) else { return bad("Request decode failed".into()) };
    let Some(name) = def["Name"].as_str().filter(|n| !n.is_empty()) else { return bad("Missing service name".into()) };
    let id = def["ID"].as_str().filter(|i| !i.is_empty()).unwrap_or(name).to_owned();
    let mut checks: Vec<Value> = def["Checks"].as_array().cloned().unwrap_or_default();
    if def["Check"].is_object() {
        checks.insert(0, def["Check"].clone());
    }
    let check_ids: Vec<String> = checks
        .iter()
        .enumerate()
        .map(|(n, c)| match c["CheckID"].as_str().filter(|c| !c.is_empty()) {
            Some(given) => given.to_owned(),
            None if checks.len() == 1 => format!("service:{id}"),
            None => format!("service:{id}:{}", n + 1),
        })
        .collect();
    let meta: BTreeMap<String, String> = match serde_json::from_value(def["Meta"].clone()) {
        Ok(m) => m,
        Err(_) if def["Meta"].is_null() => BTreeMap::new(),
        Err(e) => return bad(format!("Request decode failed: {e}")),
    };
    if let Err(e) = validate_meta(&meta) {
        return bad(format!("Invalid Service Meta: {e}"));
    }
    let weights = &def["Weights"];
    let weights = if weights.is_null() { (1, 1) } else { (weights["Passing"].as_i64().unwrap_or(0), weights["Warning"].as_i64().unwrap_or(0)) };
    if weights.0 < 1 {
        return bad("Invalid Weights: Passing must be greater than 0".into());
    }
    if weights.1 < 0 || weights.0 > 65535 || weights.1 > 65535 {
        return bad("Invalid Weights: DNS Weight must be between 0 and 65535".into());
    }
    let mut defs = Vec::new();
    for c in &checks {
        let duration = |k: &str| c[k].as_str().filter(|v| !v.is_empty()).map(|v| parse_wait(v).ok_or_else(|| format!("invalid {k} {v:?}"))).transpose();
        let (ttl, dereg) = match (duration("TTL"), duration("DeregisterCriticalServiceAfter")) {
            (Ok(t), Ok(d)) => (t, d),
            (Err(e), _) | (_, Err(e)) => return bad(e),
        };
        let status = c["Status"].as_str().unwrap_or("critical").to_owned();
        defs.push((ttl, dereg, status));
    }
    let inst = Instance {
        id: id.clone(),
        name: name.to_owned(),
        tags: def["Tags"].as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect()).unwrap_or_default(),
        address: def["Address"].as_str().unwrap_or("").to_owned(),
        port: def["Port"].as_u64().unwrap_or(0),
        meta,
        weights: (weights.0 as u64, weights.1 as u64),
        tagged: def["TaggedAddresses"].clone(),
        checks: check_ids.clone(),
    };
    let now = Instant::now();
    let mut st = s.state.lock().unwrap();
    if let Some(old) = st.services.remove(&id) {
        for c in old.checks {
            st.checks.remove(&c);
        }
    }
    for (cid, (ttl, deregister_after, status)) in check_ids.into_iter().zip(defs) {
        let critical_since = (status == "critical").then_some(now);
        st.checks.insert(cid, Check { service: id.clone(), status, ttl: ttl.map(|t| (t, now + t)), deregister_after, critical_since });
    }
    st.services.insert(id, inst);
    st.index += 1;
    s.changed.notify_all();
    (200, vec![], String::new())
}

/// Consul's rules for service metadata.
fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err("metadata cannot contain more than 64 key/value pairs".into());
    }
    for (k, v) in meta {
        let why = if k.is_empty() {
            Some("key cannot be blank")
        } else if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            Some("key contains invalid characters")
        } else if k.len() > 128 {
            Some("key is too long (limit: 128 characters)")
        } else if k.starts_with("consul-") {
            Some("key prefix \"consul-\" is reserved for internal use")
        } else if v.len() > 512 {
            Some("value is too long (limit: 512 characters)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!("Couldn't load metadata pair ('{k}', '{v}'): {why}"));
        }
    }
    Ok(())
}

/// A service as `GET /v1/agent/services` shows it.
fn agent_service(i: &Instance) -> Value {
    json!({"ID": i.id, "Service": i.name, "Tags": i.tags, "Meta": i.meta, "Port": i.port, "Address": i.address,
           "TaggedAddresses": i.tagged, "Weights": {"Passing": i.weights.0, "Warning": i.weights.1}, "EnableTagOverride": false})
}

/// TTLs and the reaper, every few milliseconds: TTL checks not updated in time turn critical;
/// services whose check stayed critical past its `DeregisterCriticalServiceAfter` (raised to
/// the reaper's minimum) are deregistered when the reaper runs.
fn tick(s: &Shared) {
    let now = Instant::now();
    let mut st = s.state.lock().unwrap();
    let mut changed = false;
    for c in st.checks.values_mut() {
        if let Some((_, deadline)) = c.ttl {
            if now >= deadline && c.status != "critical" {
                c.status = "critical".to_owned();
                c.critical_since = Some(now);
                changed = true;
            }
        }
    }
    let (min, every) = st.reaper;
    if now.duration_since(st.last_reap) >= every {
        st.last_reap = now;
        let reaped: BTreeSet<String> = st
            .checks
            .values()
            .filter(|c| matches!((c.deregister_after, c.critical_since), (Some(after), Some(since)) if now.duration_since(since) >= after.max(min)))
            .map(|c| c.service.clone())
            .collect();
        for id in reaped {
            if let Some(inst) = st.services.remove(&id) {
                for c in inst.checks {
                    st.checks.remove(&c);
                }
                changed = true;
            }
        }
    }
    if changed {
        st.index += 1;
        s.changed.notify_all();
    }
}

fn health(st: &State, name: &str, req: &Request) -> String {
    let passing = req.query.iter().any(|(k, v)| k == "passing" && v != "false" && v != "0");
    let tags: Vec<&str> = req.query.iter().filter(|(k, _)| k == "tag").map(|(_, v)| v.as_str()).collect();
    let serf = json!({"Node": "node1", "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
        "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "", "ServiceTags": []});
    let mut out = Vec::new();
    for i in st.services.values().filter(|i| i.name == name) {
        let checks: Vec<Value> = i
            .checks
            .iter()
            .filter_map(|c| st.checks.get(c).map(|check| (c, &check.status)))
            .map(|(c, status)| {
                json!({"Node": "node1", "CheckID": c, "Name": format!("Service '{}' check", i.name), "Status": status,
                    "Notes": "", "Output": "", "ServiceID": i.id, "ServiceName": i.name, "ServiceTags": i.tags})
            })
            .collect();
        if passing && checks.iter().any(|c| c["Status"] != "passing") {
            continue;
        }
        if !tags.iter().all(|t| i.tags.iter().any(|x| x == t)) {
            continue;
        }
        let mut all = vec![serf.clone()];
        all.extend(checks);
        out.push(json!({
            "Node": {"ID": "8a0f3c5e-0000-4000-8000-000000000001", "Node": "node1", "Address": "127.0.0.1", "Datacenter": "dc1",
                     "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.2"}, "Meta": {"consul-network-segment": ""}},
            "Service": {"ID": i.id, "Service": i.name, "Tags": i.tags, "Address": i.address, "TaggedAddresses": i.tagged,
                        "Meta": i.meta, "Port": i.port, "Weights": {"Passing": i.weights.0, "Warning": i.weights.1},
                        "EnableTagOverride": false},
            "Checks": all,
        }));
    }
    Value::Array(out).to_string()
}

/// A read: blocking until the index moves past `index` or `wait` expires, then `body`.
fn read(req: &Request, s: &Shared, fault: Fault, body: impl Fn(&State) -> String) -> Answer {
    let q = |k: &str| req.query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut st = s.state.lock().unwrap();
    let line = format!("{}?{}", req.path, req.query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"));
    st.reads.push(line);
    if q("dc").is_some_and(|dc| dc != "dc1") {
        return (500, vec![], "No path to datacenter".into());
    }
    if fault == Fault::Error500 {
        return (500, vec![], "No cluster leader".into());
    }
    if let Some(want) = q("index").and_then(|i| i.parse::<u64>().ok()).filter(|i| *i > 0 && !st.ignore_index) {
        let wait = q("wait").and_then(parse_wait).unwrap_or(Duration::from_secs(300));
        let deadline = Instant::now() + wait;
        let start = st.index;
        // Until the index moves past the one asked for, or changes at all (a restore lowers it).
        while st.index <= want && st.index == start && !s.stop.load(Ordering::Relaxed) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = s.changed.wait_timeout(st, left.min(Duration::from_millis(200))).unwrap().0;
        }
    }
    let mut headers = vec![("X-Consul-Index".to_owned(), st.index.to_string()), ("X-Consul-KnownLeader".to_owned(), "true".to_owned())];
    if q("stale").is_some() {
        headers.push(("X-Consul-LastContact".to_owned(), st.last_contact_ms.to_string()));
    } else {
        headers.push(("X-Consul-LastContact".to_owned(), "0".to_owned()));
    }
    if st.fault == Fault::Malformed {
        return (200, headers, "[{\"Node\": {\"Node\": ".into());
    }
    (200, headers, body(&st))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &Consul, path: &str) -> (u16, Value) {
        let (code, body) = c.call("GET", path, "", None).unwrap();
        (code, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    #[test]
    fn register_check_health_and_block() {
        let c = Consul::start(100);
        c.register("web-1", "web", 8080, &["a", "b"], "critical");
        c.register("web-2", "web", 8081, &["a"], "passing");
        let (code, all) = get(&c, "/v1/health/service/web");
        assert_eq!(code, 200);
        assert_eq!(all.as_array().unwrap().len(), 2);
        assert_eq!(all[0]["Checks"][1]["CheckID"], "service:web-1");
        let (_, ok) = get(&c, "/v1/health/service/web?passing=1");
        assert_eq!(ok.as_array().unwrap().iter().map(|e| e["Service"]["ID"].clone()).collect::<Vec<_>>(), [json!("web-2")]);
        c.check("web-1", "pass");
        let (_, both) = get(&c, "/v1/health/service/web?passing&tag=a&tag=b");
        assert_eq!(both.as_array().unwrap().len(), 1);
        assert_eq!(get(&c, "/v1/health/service/web?dc=dc2").0, 500);
        let (_, cat) = get(&c, "/v1/catalog/services");
        assert_eq!(cat, json!({"web": ["a", "b"]}));

        // Blocking: the index does not move, so the wait expires.
        let idx = c.index();
        let t0 = Instant::now();
        get(&c, &format!("/v1/health/service/web?index={idx}&wait=300ms"));
        assert!(t0.elapsed() >= Duration::from_millis(290));
        // A change wakes it.
        let c = Arc::new(c);
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            c2.deregister("web-2");
        });
        let t0 = Instant::now();
        get(&c, &format!("/v1/health/service/web?index={idx}&wait=10s"));
        assert!(t0.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
        assert_eq!(c.index(), idx + 1);

        c.set_token(Some("right"));
        assert_eq!(c.call("GET", "/v1/health/service/web", "", Some("wrong")).unwrap().0, 403);
        assert_eq!(c.call("GET", "/v1/health/service/web", "", Some("right")).unwrap().0, 200);
        assert_eq!(decode("Service.Meta.x%20%3D%3D%20%22y%22+z"), "Service.Meta.x == \"y\" z");
        assert_eq!(parse_wait("1m"), Some(Duration::from_secs(60)));
    }

    #[test]
    fn ttl_checks_expire_and_the_reaper_deregisters() {
        let c = Consul::start(1);
        c.set_reaper(Duration::from_millis(300), Duration::from_millis(50));
        c.register_json(&json!({"ID": "a", "Name": "web", "Port": 1, "Meta": {"myelin_owner": "h"},
            "Check": {"CheckID": "mine:a", "TTL": "400ms", "DeregisterCriticalServiceAfter": "100ms", "Status": "passing"}}));
        assert_eq!(c.check_status("mine:a").as_deref(), Some("passing"));
        let (_, agent) = get(&c, "/v1/agent/services");
        assert_eq!(agent["a"]["Meta"]["myelin_owner"], "h");
        // Passed in time: still passing after more than one TTL.
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(150));
            assert_eq!(c.call("PUT", "/v1/agent/check/pass/mine:a", "", None).unwrap().0, 200);
        }
        assert_eq!(c.check_status("mine:a").as_deref(), Some("passing"));
        // Not passed: critical after the TTL, then reaped after max(100 ms, the 300 ms minimum).
        let t0 = Instant::now();
        while c.check_status("mine:a").as_deref() == Some("passing") {
            assert!(t0.elapsed() < Duration::from_secs(3));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(t0.elapsed() >= Duration::from_millis(300), "{:?}", t0.elapsed());
        assert!(c.service_ids().contains(&"a".to_owned()));
        let (_, health) = get(&c, "/v1/health/service/web?passing=1");
        assert_eq!(health, json!([]));
        while !c.service_ids().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(3));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(t0.elapsed() >= Duration::from_millis(600), "{:?}", t0.elapsed());
        assert_eq!(c.call("PUT", "/v1/agent/check/pass/mine:a", "", None).unwrap().0, 404);
        assert_eq!(c.call("PUT", "/v1/agent/service/deregister/a", "", None).unwrap().0, 404);
    }

    #[test]
    fn meta_and_weights_are_validated_as_consul_does() {
        let c = Consul::start(1);
        let reg = |def: Value| c.call("PUT", "/v1/agent/service/register", &def.to_string(), None).unwrap().0;
        assert_eq!(reg(json!({"Name": "web", "Meta": {"a.b": "x"}})), 400);
        assert_eq!(reg(json!({"Name": "web", "Meta": {"consul-x": "x"}})), 400);
        assert_eq!(reg(json!({"Name": "web", "Meta": {"a": "x".repeat(513)}})), 400);
        assert_eq!(reg(json!({"Name": "web", "Weights": {"Passing": 0, "Warning": 0}})), 400);
        assert_eq!(reg(json!({"Name": "web", "Meta": {"a_b-c": "x"}, "Weights": {"Passing": 1, "Warning": 0}})), 200);
    }
}
