//! Readiness: which local containers to announce, from the Docker source of this host's own
//! engine. The source yields a container only while it runs (and is healthy when it has a
//! Docker health check), and removes it at the `kill` that starts a `docker stop`; each record
//! becomes an [`Instance`] ([`instance`]), optionally gated by myelin's own TCP or HTTP check
//! (Nerve's `rise`/`fall`), and the whole set is published on a `watch` channel for the
//! reconcile loop: level-triggered, always complete.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use myelin_source::{Discovered, LabelFilter, Partition, ServiceName, Update};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::{Desired, Instance, InstanceId, Owner};

/// The label that names a container's private port (the Docker source's `myelin.port`).
pub const LABEL_PORT: &str = "myelin.port";

/// How records of the local engine become instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub owner: Owner,
    /// The address other hosts reach published ports at; `None`: the record's own host (the
    /// container's address, on routed container networks).
    pub address: Option<IpAddr>,
    /// The container port the Docker settings route to (part of each instance's id).
    pub container_port: Option<u16>,
}

/// One record of the local engine as an announced instance, and the address myelin's own
/// check dials (the record's, reachable from this host). Untrusted text is validated here.
pub fn instance(m: &Mapping, d: &Discovered) -> Result<(Instance, SocketAddr), String> {
    let b = d.validate().map_err(|e| e.to_string())?;
    let Some(container) = d.name.as_deref() else { return Err("the record has no container name".into()) };
    let local: IpAddr = d.host.trim().parse().map_err(|_| format!("host {:?} is not an IP address", d.host))?;
    let port = b.port.get();
    // The id names the container's private port: its label, the settings', or (with one
    // published port and neither) the port itself.
    let private = match d.labels.get(LABEL_PORT) {
        Some(p) => p.trim().parse::<u16>().map_err(|_| format!("label {LABEL_PORT}={p:?} is not a port"))?,
        None => m.container_port.unwrap_or(port),
    };
    let id = InstanceId::new(&m.owner, container, private).map_err(|e| format!("instance id for container {container:?}: {e}"))?;
    let inst = Instance {
        // The instance id, not the container's name: the same name on two hosts (one compose
        // file deployed on each) must stay two servers for every host that discovers them.
        name: id.to_string(),
        id,
        host: m.address.unwrap_or(local),
        port,
        weight: b.weight.map(|w| w.get()),
        labels: b.labels,
    };
    Ok((inst, SocketAddr::new(local, port)))
}

/// myelin's own check of an instance before it is announced (as Nerve's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make an instance up.
    pub rise: u32,
    /// Consecutive failures that make it down.
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET <path>` answers 2xx or 3xx.
    Http { path: String },
}

impl Check {
    /// One probe of `addr`: Ok, or why not.
    pub async fn probe(&self, addr: SocketAddr) -> Result<(), String> {
        let run = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
            let CheckKind::Http { path } = &self.kind else { return Ok(()) };
            let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: myelin-check\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
            let mut buf = Vec::with_capacity(64);
            let mut chunk = [0u8; 64];
            while !buf.contains(&b'\n') && buf.len() < 1024 {
                let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            status_ok(&buf)
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// The longest a first verdict can take.
    fn first_verdict_within(&self) -> Duration {
        (self.interval + self.timeout) * self.rise.max(self.fall)
    }
}

/// Whether an HTTP answer's status line says 2xx or 3xx.
fn status_ok(head: &[u8]) -> Result<(), String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (proto, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !proto.starts_with("HTTP/") {
        return Err(format!("not an HTTP answer: {:?}", line.trim()));
    }
    match code.parse::<u16>() {
        Ok(c) if (200..400).contains(&c) => Ok(()),
        Ok(c) => Err(format!("HTTP status {c}")),
        Err(_) => Err(format!("not an HTTP answer: {:?}", line.trim())),
    }
}

/// Nerve's rise/fall: the verdict after each probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RiseFall {
    up: Option<bool>,
    run: u32,
    last: bool,
}

impl RiseFall {
    fn new() -> Self {
        Self { up: None, run: 0, last: false }
    }

    /// Count one probe's result; the verdict, once there is one.
    fn probe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        self.run = if ok == self.last { self.run + 1 } else { 1 };
        self.last = ok;
        if ok && self.up != Some(true) && self.run >= rise {
            self.up = Some(true);
        } else if !ok && self.up != Some(false) && self.run >= fall {
            self.up = Some(false);
        }
        self.up
    }
}

/// Probe `addr` every `interval` for ever, sending each change of verdict.
async fn checker(id: InstanceId, addr: SocketAddr, check: Arc<Check>, tx: mpsc::Sender<(InstanceId, SocketAddr, bool)>) {
    let mut rf = RiseFall::new();
    let mut shown = None;
    let mut next = Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        next = Instant::now() + check.interval;
        let result = check.probe(addr).await;
        let verdict = rf.probe(result.is_ok(), check.rise, check.fall);
        if verdict.is_some() && verdict != shown {
            match (&result, verdict) {
                (Err(why), _) => info!(id = %id, %addr, problem = ?why, "Check failed: not announced."),
                (Ok(()), _) => info!(id = %id, %addr, "Check passed: announced."),
            }
            shown = verdict;
            if tx.send((id.clone(), addr, verdict == Some(true))).await.is_err() {
                return;
            }
        }
    }
}

struct Candidate {
    instance: Instance,
    addr: SocketAddr,
    /// `None` until its check gave a verdict (or without a check: always `Some(true)`).
    up: Option<bool>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Candidate {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Follow this host's engine (through the supervisor: reopened with backoff, complete sets
/// first, label filters applied) and publish the instances to announce on `out`: `None`
/// until the first complete set is known (and, with a check, until each container's first
/// verdict or the longest a verdict can take), then always the complete set. Runs until `out`
/// has no receiver left.
pub async fn follow(service: ServiceName, source: Partition, filters: Vec<LabelFilter>, mapping: Mapping, check: Option<Check>, out: watch::Sender<Option<Desired>>) {
    let (tx, mut rx) = mpsc::channel(256);
    let supervisor = tokio::spawn(myelin_watch::supervise(service.clone(), source, 0, filters, tx));
    let _abort = AbortOnDrop(supervisor);
    let check = check.map(Arc::new);
    let (vtx, mut vrx) = mpsc::channel(256);
    let mut records: BTreeMap<String, Discovered> = BTreeMap::new();
    let mut candidates: BTreeMap<InstanceId, Candidate> = BTreeMap::new();
    let mut rejected: BTreeMap<String, String> = BTreeMap::new();
    let mut synced_at: Option<Instant> = None;
    loop {
        let deadline = match (&check, synced_at) {
            (Some(c), Some(at)) if out.borrow().is_none() => Some(at + c.first_verdict_within()),
            _ => None,
        };
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                let mut batch = vec![ev];
                while let Ok(ev) = rx.try_recv() {
                    batch.push(ev);
                }
                for ev in batch {
                    match ev.kind {
                        myelin_watch::EventKind::Update(u) => {
                            apply(&mut records, u);
                            synced_at.get_or_insert_with(Instant::now);
                        }
                        myelin_watch::EventKind::Problem(e) => warn!(%service, "{}; what is announced stays.", e.report()),
                        myelin_watch::EventKind::Disconnected { .. } => {}
                    }
                }
                update_candidates(&service, &mapping, check.as_ref(), &records, &mut candidates, &mut rejected, &vtx);
            }
            Some((id, addr, up)) = vrx.recv() => {
                if let Some(c) = candidates.get_mut(&id).filter(|c| c.addr == addr) {
                    c.up = Some(up);
                }
            }
            () = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => {
                debug!(%service, "Not every check has a verdict yet; announcing those that passed.");
                let desired = ready_set(&candidates);
                out.send_replace(Some(desired));
                continue;
            }
            () = out.closed() => return,
        }
        if synced_at.is_none() {
            continue;
        }
        let known = out.borrow().is_some() || candidates.values().all(|c| c.up.is_some());
        if !known {
            continue;
        }
        let desired = ready_set(&candidates);
        out.send_if_modified(|cur| {
            if cur.as_deref() == Some(&*desired) {
                return false;
            }
            *cur = Some(desired);
            true
        });
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn apply(records: &mut BTreeMap<String, Discovered>, u: Update) {
    match u {
        Update::Reset(all) => *records = all.into_iter().map(|d| (d.key(), d)).collect(),
        Update::Upsert(d) => {
            records.insert(d.key(), d);
        }
        Update::Remove(key) => {
            records.remove(&key);
        }
    }
}

fn ready_set(candidates: &BTreeMap<InstanceId, Candidate>) -> Desired {
    Arc::new(candidates.iter().filter(|(_, c)| c.up == Some(true)).map(|(id, c)| (id.clone(), c.instance.clone())).collect())
}

/// Bring the candidates (and their checkers) up to date with the records.
fn update_candidates(
    service: &ServiceName,
    mapping: &Mapping,
    check: Option<&Arc<Check>>,
    records: &BTreeMap<String, Discovered>,
    candidates: &mut BTreeMap<InstanceId, Candidate>,
    rejected: &mut BTreeMap<String, String>,
    vtx: &mpsc::Sender<(InstanceId, SocketAddr, bool)>,
) {
    let mut now_rejected = BTreeMap::new();
    let mut wanted: BTreeMap<InstanceId, (Instance, SocketAddr)> = BTreeMap::new();
    for (key, d) in records {
        match instance(mapping, d) {
            Ok((i, addr)) => {
                wanted.insert(i.id.clone(), (i, addr));
            }
            Err(why) => {
                if rejected.get(key) != Some(&why) {
                    warn!(%service, container = ?key, reason = ?why, "Not announcing a container.");
                }
                now_rejected.insert(key.clone(), why);
            }
        }
    }
    *rejected = now_rejected;
    candidates.retain(|id, c| wanted.get(id).is_some_and(|(_, addr)| *addr == c.addr));
    for (id, (inst, addr)) in wanted {
        match candidates.get_mut(&id) {
            Some(c) => c.instance = inst,
            None => {
                let (up, task) = match check {
                    None => (Some(true), None),
                    Some(ch) => (None, Some(tokio::spawn(checker(id.clone(), addr, ch.clone(), vtx.clone())))),
                };
                candidates.insert(id, Candidate { instance: inst, addr, up, task });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn mapping(address: Option<&str>) -> Mapping {
        Mapping { owner: Owner::new("host-a").unwrap(), address: address.map(|a| a.parse().unwrap()), container_port: Some(8000) }
    }

    fn record(name: &str, host: &str, port: u16) -> Discovered {
        Discovered::new(host, port).named(name)
    }

    #[test]
    fn records_become_instances() {
        let mut d = record("web-1", "127.0.0.1", 32768);
        d.weight = Some("5".into());
        d.labels.insert("az".into(), "a".into());
        let (i, addr) = instance(&mapping(Some("192.0.2.10")), &d).unwrap();
        assert_eq!(i.id.as_str(), "host-a_web-1_8000");
        assert_eq!((i.host, i.port, i.name.as_str(), i.weight), (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 32768, "host-a_web-1_8000", Some(5)));
        assert_eq!(i.labels["az"], "a");
        assert_eq!(addr, "127.0.0.1:32768".parse().unwrap());
        // The container's address (routed networks); the label's port names the id.
        let mut c = record("web-2", "198.51.100.7", 9000);
        c.labels.insert(LABEL_PORT.into(), "9000".into());
        let (i, _) = instance(&mapping(None), &c).unwrap();
        assert_eq!((i.id.as_str(), i.host.to_string().as_str(), i.port), ("host-a_web-2_9000", "198.51.100.7", 9000));
        // No container port anywhere: the port itself.
        let m = Mapping { container_port: None, ..mapping(Some("192.0.2.10")) };
        assert_eq!(instance(&m, &record("w", "127.0.0.1", 5000)).unwrap().0.id.as_str(), "host-a_w_5000");
        // Refused: invalid values, names an id cannot hold, hosts that are not addresses.
        assert!(instance(&mapping(None), &record("web", "localhost", 1)).unwrap_err().contains("not an IP address"));
        assert!(instance(&mapping(None), &Discovered::new("127.0.0.1", 0).named("web")).is_err());
        assert!(instance(&mapping(None), &record("web:1", "127.0.0.1", 1)).unwrap_err().contains("instance id"));
        let mut bad = record("web", "127.0.0.1", 1);
        bad.labels.insert(LABEL_PORT.into(), "http".into());
        assert!(instance(&mapping(None), &bad).unwrap_err().contains("myelin.port"));
    }

    #[test]
    fn rise_and_fall() {
        let mut rf = RiseFall::new();
        assert_eq!(rf.probe(true, 2, 3), None);
        assert_eq!(rf.probe(true, 2, 3), Some(true));
        assert_eq!(rf.probe(false, 2, 3), Some(true));
        assert_eq!(rf.probe(false, 2, 3), Some(true));
        assert_eq!(rf.probe(true, 2, 3), Some(true));
        assert_eq!(rf.probe(false, 2, 3), Some(true));
        assert_eq!(rf.probe(false, 2, 3), Some(true));
        assert_eq!(rf.probe(false, 2, 3), Some(false));
        assert_eq!(rf.probe(true, 2, 3), Some(false));
        assert_eq!(rf.probe(true, 2, 3), Some(true));
        let mut down = RiseFall::new();
        assert_eq!(down.probe(false, 2, 1), Some(false));
    }

    #[test]
    fn http_status_lines() {
        assert!(status_ok(b"HTTP/1.1 200 OK\r\n").is_ok());
        assert!(status_ok(b"HTTP/1.0 302 Found\r\n").is_ok());
        assert_eq!(status_ok(b"HTTP/1.1 503 Service Unavailable\r\n"), Err("HTTP status 503".into()));
        assert!(status_ok(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(status_ok(b"").is_err());
    }

    async fn server(answer: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn probes() {
        let check = |kind| Check { kind, interval: Duration::from_secs(1), timeout: Duration::from_secs(2), rise: 1, fall: 1 };
        let ok = server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let bad = server("HTTP/1.1 500 Oops\r\n\r\n").await;
        let http = check(CheckKind::Http { path: "/health".into() });
        assert_eq!(http.probe(ok).await, Ok(()));
        assert_eq!(http.probe(bad).await, Err("HTTP status 500".into()));
        assert_eq!(check(CheckKind::Tcp).probe(bad).await, Ok(()));
        // Nothing listens on a port just freed.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(check(CheckKind::Tcp).probe(closed).await.unwrap_err().starts_with("connect:"));
    }

    /// A source whose sets the test sends.
    fn source() -> (mpsc::UnboundedSender<Update>, Partition) {
        let (tx, rx) = mpsc::unbounded_channel::<Update>();
        let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
        let open: myelin_source::Opener = Box::new(move || {
            let rx = rx.lock().unwrap().take();
            match rx {
                Some(mut rx) => Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok)))),
                None => Box::pin(futures::stream::pending()),
            }
        });
        (tx, Partition::single(open))
    }

    #[tokio::test(start_paused = true)]
    async fn follows_the_engine_complete_sets_only() {
        let (tx, part) = source();
        let (out, mut rx) = watch::channel(None);
        let svc = ServiceName::parse("web").unwrap();
        let task = tokio::spawn(follow(svc, part, vec![], mapping(Some("192.0.2.10")), None, out));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(rx.borrow().is_none(), "nothing is known before the first complete set");
        tx.send(Update::Reset(vec![record("a", "127.0.0.1", 32001), record("bad", "localhost", 1)])).unwrap();
        rx.changed().await.unwrap();
        let ids = |rx: &mut watch::Receiver<Option<Desired>>| rx.borrow_and_update().as_ref().unwrap().keys().map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&mut rx), ["host-a_a_8000"]);
        tx.send(Update::Upsert(record("b", "127.0.0.1", 32002))).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(ids(&mut rx), ["host-a_a_8000", "host-a_b_8000"]);
        tx.send(Update::Remove("a".into())).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(ids(&mut rx), ["host-a_b_8000"]);
        task.abort();
    }

    #[tokio::test]
    async fn a_check_gates_announcing() {
        let up = server("HTTP/1.1 200 OK\r\n\r\n").await;
        let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let (tx, part) = source();
        let (out, mut rx) = watch::channel(None);
        let check = Check { kind: CheckKind::Http { path: "/".into() }, interval: Duration::from_millis(50), timeout: Duration::from_secs(1), rise: 2, fall: 1 };
        let svc = ServiceName::parse("web").unwrap();
        let task = tokio::spawn(follow(svc, part, vec![], mapping(Some("192.0.2.10")), Some(check), out));
        tx.send(Update::Reset(vec![record("up", "127.0.0.1", up.port()), record("down", "127.0.0.1", down.port())])).unwrap();
        // The first set waits for both verdicts: "up" after two passes, "down" after one failure.
        tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.unwrap().unwrap();
        let got: Vec<String> = rx.borrow_and_update().as_ref().unwrap().keys().map(|i| i.to_string()).collect();
        assert_eq!(got, ["host-a_up_8000"]);
        task.abort();
    }
}
