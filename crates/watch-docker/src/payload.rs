//! Pure functions from Docker's payloads to discovery records: a container's inspect answer to
//! a [`Verdict`], an event to an [`Action`]. Nothing here validates for HAProxy: values go out
//! as untrusted text and the store decides.

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum, HealthStatusEnum, PortBinding};
use myelin_core::Discovered;

use crate::{Address, Endpoint, Settings};

/// Labels a container may carry to override what myelin derives for it.
pub const LABEL_NAME: &str = "myelin.name";
pub const LABEL_PORT: &str = "myelin.port";
pub const LABEL_WEIGHT: &str = "myelin.weight";

/// What one container means for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not one of the service's containers.
    Ignored,
    /// One of them, to route to.
    Up(Discovered),
    /// One of them, not to be routed now (not running, paused, not healthy).
    Down { key: String, why: &'static str },
    /// One of them that cannot be routed, with the reason (reported as a problem).
    Unroutable { key: String, reason: String },
}

/// The name a container's backend is known by: its `myelin.name` label or its container name,
/// prefixed with the engine's name for engines listed in `servers`.
pub fn backend_key(endpoint: &Endpoint, container_name: &str, labels: &HashMap<String, String>) -> String {
    let name = labels.get(LABEL_NAME).map(String::as_str).unwrap_or_else(|| container_name.strip_prefix('/').unwrap_or(container_name));
    match endpoint.name() {
        Some(prefix) => format!("{prefix}_{name}"),
        None => name.to_owned(),
    }
}

fn has_healthcheck(c: &ContainerInspectResponse) -> bool {
    let test = c.config.as_ref().and_then(|cfg| cfg.healthcheck.as_ref()).and_then(|h| h.test.as_ref());
    test.is_some_and(|t| !t.is_empty() && t[0] != "NONE")
}

/// The binding to dial among a port's bindings: IPv4 first (Docker lists `0.0.0.0` before `::`).
fn pick_binding(bindings: &[PortBinding]) -> Option<&PortBinding> {
    let ipv4 = |b: &&PortBinding| b.host_ip.as_deref().is_none_or(|ip| !ip.contains(':'));
    bindings.iter().find(ipv4).or_else(|| bindings.first())
}

/// The host HAProxy dials for a port published on `host_ip`, or why it cannot.
fn published_host(endpoint: &Endpoint, host_ip: &str) -> Result<String, String> {
    match host_ip.parse::<IpAddr>() {
        Err(_) if host_ip.is_empty() => Ok(endpoint.backend_host().to_owned()),
        // Not an address: the store decides what it is worth.
        Err(_) => Ok(host_ip.to_owned()),
        Ok(ip) if ip.is_unspecified() => Ok(endpoint.backend_host().to_owned()),
        Ok(ip) if ip.is_loopback() && !endpoint.is_local() => {
            Err(format!("published on the engine's loopback address {ip} only, which this host cannot reach"))
        }
        Ok(ip) => Ok(ip.to_string()),
    }
}

/// Turn a container's inspect answer into what it means for a service. Pure: the same payload
/// and settings always give the same verdict.
pub fn verdict(c: &ContainerInspectResponse, settings: &Settings, endpoint: &Endpoint) -> Verdict {
    let empty = HashMap::new();
    let cfg = c.config.as_ref();
    let labels = cfg.and_then(|c| c.labels.as_ref()).unwrap_or(&empty);
    let image = cfg.and_then(|c| c.image.as_deref()).unwrap_or("");
    let name = c.name.as_deref().unwrap_or("");
    if !settings.selector.matches(image, labels, name) {
        return Verdict::Ignored;
    }
    let key = backend_key(endpoint, name, labels);
    let state = c.state.as_ref();
    if !state.and_then(|s| s.running).unwrap_or(false) || state.and_then(|s| s.restarting).unwrap_or(false) {
        return Verdict::Down { key, why: "not running" };
    }
    if state.and_then(|s| s.paused).unwrap_or(false) {
        return Verdict::Down { key, why: "paused" };
    }
    if settings.require_healthy && has_healthcheck(c) {
        match state.and_then(|s| s.health.as_ref()).and_then(|h| h.status) {
            Some(HealthStatusEnum::HEALTHY) => {}
            Some(HealthStatusEnum::UNHEALTHY) => return Verdict::Down { key, why: "unhealthy" },
            _ => return Verdict::Down { key, why: "not healthy yet" },
        }
    }
    // The private port: the container's own label first, then the service's container_port.
    let private = labels.get(LABEL_PORT).cloned().or_else(|| settings.container_port.map(|p| p.to_string()));
    // On the host's network a container listens on the engine host's own addresses.
    if c.host_config.as_ref().and_then(|h| h.network_mode.as_deref()) == Some("host") {
        let Some(port) = private else {
            return Verdict::Unroutable { key, reason: "on the host network, with no port to route to: set container_port or a myelin.port label".into() };
        };
        let d = Discovered { name: Some(key), host: endpoint.backend_host().to_owned(), port, weight: None, labels: Default::default() };
        return Verdict::Up(with_labels(d, labels));
    }
    let (host, port) = match settings.address {
        Address::Container => {
            let Some(port) = private else {
                return Verdict::Unroutable { key, reason: "no port to route to: set container_port or a myelin.port label".into() };
            };
            let mut networks: Vec<_> = c.network_settings.as_ref().and_then(|n| n.networks.as_ref()).into_iter().flatten().collect();
            networks.sort_by(|a, b| a.0.cmp(b.0));
            let ip = networks.iter().filter_map(|(_, e)| e.ip_address.as_deref()).find(|ip| !ip.is_empty());
            let Some(ip) = ip else { return Verdict::Unroutable { key, reason: "the container has no IP address".into() } };
            (ip.to_owned(), port)
        }
        Address::Published => {
            let ports = c.network_settings.as_ref().and_then(|n| n.ports.as_ref());
            let published = |spec: &str| ports.and_then(|p| p.get(spec)).and_then(|b| b.as_deref()).and_then(pick_binding);
            let binding = match &private {
                // Not a port number: passed on as it is, for the store to reject and log.
                Some(p) if p.trim().parse::<u16>().is_err() => {
                    let d = Discovered { name: Some(key), host: endpoint.backend_host().to_owned(), port: p.clone(), weight: None, labels: Default::default() };
                    return Verdict::Up(with_labels(d, labels));
                }
                Some(p) => match published(&format!("{}/tcp", p.trim())) {
                    Some(b) => b,
                    None => return Verdict::Unroutable { key, reason: format!("port {}/tcp is not published", p.trim()) },
                },
                None => {
                    let mut tcp: Vec<_> = ports.into_iter().flatten().filter(|(k, v)| k.ends_with("/tcp") && v.as_ref().is_some_and(|b| !b.is_empty())).collect();
                    if tcp.len() != 1 {
                        return Verdict::Unroutable { key, reason: format!("{} published TCP ports: set container_port or a myelin.port label", tcp.len()) };
                    }
                    let (_, b) = tcp.remove(0);
                    match b.as_deref().and_then(pick_binding) {
                        Some(b) => b,
                        None => return Verdict::Unroutable { key, reason: "no published port".into() },
                    }
                }
            };
            let host = match published_host(endpoint, binding.host_ip.as_deref().unwrap_or("")) {
                Ok(h) => h,
                Err(reason) => return Verdict::Unroutable { key, reason },
            };
            (host, binding.host_port.clone().unwrap_or_default())
        }
    };
    Verdict::Up(with_labels(Discovered { name: Some(key), host, port, weight: None, labels: Default::default() }, labels))
}

fn with_labels(mut d: Discovered, labels: &HashMap<String, String>) -> Discovered {
    d.weight = labels.get(LABEL_WEIGHT).cloned();
    d.labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    d
}

/// What an event asks of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Inspect the container again and route it or not (`start`, `unpause`, `health_status`).
    /// `restart` is true for `start` and `unpause`, which end a stop in progress.
    Refresh { id: String, restart: bool },
    /// Take the container out of rotation now, before it stops serving: `kill` with a
    /// terminating signal, `stop`, `die`, `pause`, `destroy`. `stopping` is true for a kill.
    Drain { id: String, image: String, name: String, labels: HashMap<String, String>, stopping: bool },
    /// A rename: the old name's backend is gone, the container is to be inspected again.
    Rename { id: String, image: String, old_name: String, labels: HashMap<String, String> },
    Ignore,
}

/// Signals whose default action ends a process and that are used to stop one. `HUP`, `USR1`
/// and `USR2` are reloads by convention and leave the container in rotation.
fn is_terminating(signal: &str) -> bool {
    let s = signal.trim().trim_start_matches("SIG");
    matches!(s, "2" | "3" | "6" | "9" | "15" | "INT" | "QUIT" | "ABRT" | "KILL" | "TERM")
}

/// Classify an event of the engine's stream. Pure.
pub fn classify(ev: &EventMessage) -> Action {
    if ev.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return Action::Ignore;
    }
    let Some(actor) = &ev.actor else { return Action::Ignore };
    let Some(id) = actor.id.clone() else { return Action::Ignore };
    let attrs = actor.attributes.clone().unwrap_or_default();
    let action = ev.action.as_deref().unwrap_or("");
    let drain = |attrs: HashMap<String, String>, stopping: bool| {
        let mut labels = attrs;
        let image = labels.remove("image").unwrap_or_default();
        let name = labels.remove("name").unwrap_or_default();
        Action::Drain { id: id.clone(), image, name, labels, stopping }
    };
    match action {
        "start" | "unpause" => Action::Refresh { id, restart: true },
        a if a.starts_with("health_status") => Action::Refresh { id, restart: false },
        "kill" => match attrs.get("signal") {
            Some(sig) if is_terminating(sig) => drain(attrs, true),
            _ => Action::Ignore,
        },
        "stop" | "die" | "pause" | "destroy" => drain(attrs, false),
        "rename" => {
            let mut labels = attrs;
            let image = labels.remove("image").unwrap_or_default();
            let old_name = labels.remove("oldName").unwrap_or_default();
            labels.remove("name");
            Action::Rename { id, image, old_name, labels }
        }
        _ => Action::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::{ImageRef, Selector};
    use std::path::PathBuf;

    fn load(name: &str) -> ContainerInspectResponse {
        let path = format!("{}/testdata/inspect-{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn settings() -> Settings {
        Settings {
            selector: Selector { image: Some(ImageRef::parse("local/nodeapp")), ..Selector::default() },
            container_port: Some(8000),
            address: Address::Published,
            require_healthy: true,
            resync: std::time::Duration::from_secs(30),
        }
    }

    fn local() -> Endpoint {
        Endpoint::Local { socket: PathBuf::from("/var/run/docker.sock") }
    }

    fn up(v: Verdict) -> Discovered {
        match v {
            Verdict::Up(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_published_container_is_the_loopback_binding_and_its_host_port() {
        let d = up(verdict(&load("plain"), &settings(), &local()));
        assert_eq!((d.name.as_deref(), d.host.as_str(), d.port.as_str(), d.weight.as_deref()), (Some("plain"), "127.0.0.1", "32769", None));
        // The same container on an engine listed in `servers` that published it on all
        // interfaces: that engine's host, and a name prefixed with the engine's.
        let mut c = load("plain");
        for b in c.network_settings.as_mut().unwrap().ports.as_mut().unwrap().values_mut().flatten().flatten() {
            b.host_ip = Some("0.0.0.0".into());
        }
        let remote = Endpoint::Tcp { name: "dock2".into(), host: "192.0.2.7".into(), port: 4243, cert_path: None };
        let d = up(verdict(&c, &settings(), &remote));
        assert_eq!((d.name.as_deref(), d.host.as_str(), d.port.as_str()), (Some("dock2_plain"), "192.0.2.7", "32769"));
        // A remote engine's loopback is out of reach.
        assert!(matches!(verdict(&load("plain"), &settings(), &remote), Verdict::Unroutable { reason, .. } if reason.contains("loopback")));
    }

    #[test]
    fn labels_override_name_weight_and_port_and_pass_through() {
        let d = up(verdict(&load("labelled"), &settings(), &local()));
        assert_eq!((d.name.as_deref(), d.weight.as_deref(), d.labels.get("az").map(String::as_str)), (Some("web-a"), Some("7"), Some("a")));
        // Hostile values go out untouched; the store rejects them.
        let mut c = load("labelled");
        let labels = c.config.as_mut().unwrap().labels.as_mut().unwrap();
        labels.insert(LABEL_NAME.into(), "x\n  server evil 1.2.3.4:1".into());
        labels.insert(LABEL_PORT.into(), "99999999".into());
        let d = up(verdict(&c, &settings(), &local()));
        assert_eq!((d.name.as_deref(), d.port.as_str()), (Some("x\n  server evil 1.2.3.4:1"), "99999999"));
        assert!(d.validate().is_err());
        // A port label that is a number but not published.
        labels_mut(&mut c).insert(LABEL_PORT.into(), "9000".into());
        assert_eq!(verdict(&c, &settings(), &local()), Verdict::Unroutable { key: "x\n  server evil 1.2.3.4:1".into(), reason: "port 9000/tcp is not published".into() });
    }

    fn labels_mut(c: &mut ContainerInspectResponse) -> &mut HashMap<String, String> {
        c.config.as_mut().unwrap().labels.as_mut().unwrap()
    }

    #[test]
    fn health_gates_routing_unless_told_otherwise() {
        assert_eq!(verdict(&load("health-starting"), &settings(), &local()), Verdict::Down { key: "health".into(), why: "not healthy yet" });
        let d = up(verdict(&load("health-healthy"), &settings(), &local()));
        assert_eq!(d.name.as_deref(), Some("health"));
        let relaxed = Settings { require_healthy: false, ..settings() };
        assert!(matches!(verdict(&load("health-starting"), &relaxed, &local()), Verdict::Up(_)));
        let mut c = load("health-healthy");
        c.state.as_mut().unwrap().health.as_mut().unwrap().status = Some(HealthStatusEnum::UNHEALTHY);
        assert_eq!(verdict(&c, &settings(), &local()), Verdict::Down { key: "health".into(), why: "unhealthy" });
    }

    #[test]
    fn container_address_uses_the_container_ip_and_private_port() {
        let s = Settings { address: Address::Container, ..settings() };
        let d = up(verdict(&load("onnet"), &s, &local()));
        assert_eq!((d.host.as_str(), d.port.as_str()), ("172.18.0.2", "8000"));
        // Published mode: it publishes nothing.
        assert!(matches!(verdict(&load("onnet"), &settings(), &local()), Verdict::Unroutable { reason, .. } if reason.contains("not published")));
    }

    #[test]
    fn a_container_on_the_host_network_is_the_engine_host_and_its_own_port() {
        let d = up(verdict(&load("hostnet"), &settings(), &local()));
        assert_eq!((d.name.as_deref(), d.host.as_str(), d.port.as_str()), (Some("hostnet"), "127.0.0.1", "18999"));
        let remote = Endpoint::Tcp { name: "d2".into(), host: "192.0.2.7".into(), port: 4243, cert_path: None };
        assert_eq!(up(verdict(&load("hostnet"), &settings(), &remote)).host, "192.0.2.7");
        let mut c = load("hostnet");
        labels_mut(&mut c).remove(LABEL_PORT);
        assert_eq!(up(verdict(&c, &settings(), &local())).port, "8000");
        let none = Settings { container_port: None, ..settings() };
        assert!(matches!(verdict(&c, &none, &local()), Verdict::Unroutable { .. }));
    }

    #[test]
    fn selection_and_state() {
        let other = Settings { selector: Selector { image: Some(ImageRef::parse("local/other")), ..Selector::default() }, ..settings() };
        assert_eq!(verdict(&load("plain"), &other, &local()), Verdict::Ignored);
        let mut c = load("plain");
        c.state.as_mut().unwrap().paused = Some(true);
        assert_eq!(verdict(&c, &settings(), &local()), Verdict::Down { key: "plain".into(), why: "paused" });
        c.state.as_mut().unwrap().running = Some(false);
        assert_eq!(verdict(&c, &settings(), &local()), Verdict::Down { key: "plain".into(), why: "not running" });
        // No container_port: the one published TCP port.
        let any = Settings { container_port: None, ..settings() };
        assert_eq!(up(verdict(&load("plain"), &any, &local())).port, "32769");
    }

    fn events() -> Vec<EventMessage> {
        let text = include_str!("../testdata/events.jsonl");
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn events_from_a_real_engine() {
        let evs = events();
        let find = |action: &str, name: &str| {
            evs.iter()
                .find(|e| e.action.as_deref() == Some(action) && e.actor.as_ref().and_then(|a| a.attributes.as_ref()).and_then(|a| a.get("name")).map(String::as_str) == Some(name))
                .unwrap_or_else(|| panic!("no {action} of {name}"))
        };
        assert!(matches!(classify(find("start", "plain")), Action::Refresh { restart: true, .. }));
        assert!(matches!(classify(find("health_status: healthy", "health")), Action::Refresh { restart: false, .. }));
        // `docker kill -s HUP` is a reload; `docker stop` sends SIGTERM: drain at once.
        assert_eq!(classify(find("kill", "plain")), Action::Ignore);
        match classify(find("kill", "anyaddr")) {
            Action::Drain { name, image, stopping, .. } => assert_eq!((name.as_str(), image.as_str(), stopping), ("anyaddr", "local/nodeapp", true)),
            other => panic!("{other:?}"),
        }
        match classify(find("pause", "labelled")) {
            Action::Drain { labels, stopping: false, .. } => {
                assert_eq!(backend_key(&local(), "labelled", &labels), "web-a");
            }
            other => panic!("{other:?}"),
        }
        for a in ["stop", "die", "destroy"] {
            let ev = evs.iter().find(|e| e.action.as_deref() == Some(a)).unwrap();
            assert!(matches!(classify(ev), Action::Drain { stopping: false, .. }), "{a}");
        }
        for a in ["create", "connect", "disconnect"] {
            let ev = evs.iter().find(|e| e.action.as_deref() == Some(a)).unwrap();
            assert_eq!(classify(ev), Action::Ignore, "{a}");
        }
        assert!(is_terminating("SIGTERM") && is_terminating("9") && !is_terminating("1") && !is_terminating("SIGUSR1"));
    }
}
